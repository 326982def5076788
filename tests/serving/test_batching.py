# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""Adaptive batching: concurrent requests run as one batch and each answer is exactly what it would be alone."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from reconciler.devkit.modelgen import identity_model, lookup_model, matmul_model, small_cnn
from reconciler.serving.batching import (
    BATCH_SIZE,
    FALLBACKS,
    BatchingPolicy,
    BatchItem,
    batch_key,
    split_outputs,
    take_batch,
)
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.v2.codec import decode_request
from tests._serving_fixtures import call, registry  # noqa: F401

CNN = small_cnn(seed=3)


def binary_request(name: str, arr: np.ndarray, datatype: str = "FP32",
                   parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    raw = arr.tobytes()
    hdr = json.dumps({
        "inputs": [{"name": name, "datatype": datatype, "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True, **(parameters or {})},
    }).encode()
    return hdr + raw, {"Inference-Header-Content-Length": str(len(hdr))}


def post(port: int, model: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def binary_output(headers: dict[str, str], body: bytes) -> np.ndarray:
    hlen = int(headers["inference-header-content-length"])
    meta = json.loads(body[:hlen])["outputs"][0]
    return np.frombuffer(body[hlen:], np.float32).reshape(meta["shape"])


def concurrently(n: int, fn: Any) -> list[Any]:
    """Run ``fn(i)`` for i in range(n) in n threads released at once; results in order."""
    results: list[Any] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def batches_run(model: str) -> tuple[float, float]:
    """(batches, requests in them) the batch-size histogram has seen for ``model``."""
    count = sum_ = 0.0
    for metric in BATCH_SIZE.collect():
        for s in metric.samples:
            if s.labels.get("model") == model and s.name.endswith("_count"):
                count = s.value
            if s.labels.get("model") == model and s.name.endswith("_sum"):
                sum_ = s.value
    return count, sum_


@pytest.fixture
def batched(registry: ModelRegistry) -> Iterator[InferenceServer]:
    srv = InferenceServer(registry)
    srv.start()
    yield srv
    srv.stop()


def test_batched_answers_equal_one_at_a_time_bit_for_bit(registry: ModelRegistry, batched: InferenceServer) -> None:
    """fp32 ONNX Runtime CNN, mixed per-request batch sizes: every answer equals the model run on it alone."""
    policy = {"maxBatchSize": 8, "maxQueueDelayMs": 300}
    assert registry.apply(EndpointSpec("cnn", "1", blobs=[CNN], batching=policy)).ok
    alone = ort.InferenceSession(CNN, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    rows = [1, 3, 1, 2, 1]  # 8 rows: one full batch
    images = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in rows]
    before = batches_run("cnn")
    answers = concurrently(len(rows), lambda i: post(batched.port, "cnn", *binary_request("image", images[i])))
    batches, requests = (a - b for a, b in zip(batches_run("cnn"), before, strict=True))
    assert requests == len(rows) and batches < len(rows), "the requests did not share a batch"
    for img, (status, headers, body) in zip(images, answers, strict=True):
        assert status == 200, body[:300]
        got = binary_output(headers, body)
        want = alone.run(None, {"image": img})[0]
        assert got.shape == want.shape and got.tobytes() == want.tobytes()
    metrics = call(batched, "GET", "/metrics")[2].decode()
    assert 'modelfleet_batch_size_count{model="cnn"}' in metrics
    assert 'modelfleet_batch_queue_delay_seconds_count{model="cnn"}' in metrics


def test_different_shapes_and_parameters_go_in_separate_batches(registry: ModelRegistry,
                                                                 batched: InferenceServer) -> None:
    assert registry.apply(EndpointSpec("id", "1", blobs=[identity_model("FP32")],
                                       batching={"maxBatchSize": 16, "maxQueueDelayMs": 200})).ok
    shapes = [(1, 3), (2, 3), (1, 5), (2, 5), (1, 3)]
    tensors = [np.arange(np.prod(s), dtype=np.float32).reshape(s) + i for i, s in enumerate(shapes)]
    params = [None, None, None, None, {"priority_hint": 1}]  # a parameter the others do not carry
    before = batches_run("id")
    answers = concurrently(len(shapes), lambda i: post(batched.port, "id",
                                                       *binary_request("input", tensors[i], parameters=params[i])))
    for t, (status, headers, body) in zip(tensors, answers, strict=True):
        assert status == 200, body[:300]
        np.testing.assert_array_equal(binary_output(headers, body), t)
    batches, requests = (a - b for a, b in zip(batches_run("id"), before, strict=True))
    assert requests == 5 and batches >= 3  # [1,3]+[2,3] | [1,5]+[2,5] | [1,3] with a parameter


def test_a_failed_batch_answers_each_request_as_if_alone(registry: ModelRegistry, batched: InferenceServer) -> None:
    """One request's bad index makes the batch fail: it gets the runtime's error, its neighbours their rows."""
    assert registry.apply(EndpointSpec("lookup", "1", blobs=[lookup_model()],
                                       batching={"maxBatchSize": 8, "maxQueueDelayMs": 300})).ok
    indices = [np.array([1, 2], np.int64), np.array([12], np.int64), np.array([7], np.int64)]
    fallbacks = FALLBACKS.labels("lookup")._value.get()
    answers = concurrently(3, lambda i: post(batched.port, "lookup", *binary_request("index", indices[i], "INT64")))
    ok1, bad, ok2 = answers
    assert ok1[0] == 200 and binary_output(ok1[1], ok1[2]).tolist() == [[1, 1], [2, 2]]
    assert ok2[0] == 200 and binary_output(ok2[1], ok2[2]).tolist() == [[7, 7]]
    assert bad[0] == 500
    assert json.loads(bad[2])["error"].startswith("inference failed: ")
    assert "idx=12 must be within the inclusive range [-10,9]" in json.loads(bad[2])["error"]
    assert FALLBACKS.labels("lookup")._value.get() == fallbacks + 1  # they did run as one batch first


def test_full_queue_answers_503_at_once(registry: ModelRegistry, batched: InferenceServer) -> None:
    """Two requests wait for company (long delay, batch not full); the third finds the queue full."""
    assert registry.apply(EndpointSpec("mm", "1", blobs=[matmul_model(seed=1)],
                                       batching={"maxBatchSize": 8, "maxQueueDelayMs": 1500, "maxQueueSize": 2})).ok
    x = np.ones((1, 16), np.float32)
    waiting = [threading.Thread(target=lambda: post(batched.port, "mm", *binary_request("input", x)))
               for _ in range(2)]
    for t in waiting:
        t.start()
    with registry.get("mm") as m:
        assert m.batcher is not None
        deadline = threading.Event()
        while m.batcher.queued < 2 and not deadline.wait(0.01):
            pass
    status, headers, body = post(batched.port, "mm", *binary_request("input", x))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"] == "model 'mm': batch queue full (2 requests waiting); retry later"
    for t in waiting:
        t.join(30)
    assert call(batched, "POST", "/v2/models/mm/infer",
                {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]})[0] == 200


def test_batching_a_model_without_a_batch_dimension_is_a_load_error(registry: ModelRegistry) -> None:
    fixed = identity_model("FP32", [2, 3])
    r = registry.apply(EndpointSpec("fixed", "1", blobs=[fixed], batching={"maxBatchSize": 4, "maxQueueDelayMs": 2}))
    assert not r.ok and r.reason == "InvalidSpec"
    assert "batching requested, but input 'input' has shape [2, 3]: batching needs a variable first" in r.message
    assert registry.endpoints()["fixed"].version is None
    # the same model without batching loads; asking for batching later keeps it serving unbatched
    assert registry.apply(EndpointSpec("fixed", "1", blobs=[fixed])).ok
    r = registry.apply(EndpointSpec("fixed", "1", blobs=[fixed], batching={"maxBatchSize": 4, "maxQueueDelayMs": 2}))
    assert not r.ok and r.reason == "InvalidSpec"
    st = registry.endpoints()["fixed"]
    assert st.version == "1" and "batching requested" in (st.last_failure or {})["message"]
    with registry.get("fixed") as m:
        assert m.batcher is None


def test_batching_is_switched_on_and_off_on_the_loaded_version(registry: ModelRegistry) -> None:
    blob = matmul_model(seed=1)
    assert registry.apply(EndpointSpec("mm", "1", blobs=[blob])).ok
    r = registry.apply(EndpointSpec("mm", "1", blobs=[blob], batching={"maxBatchSize": 4, "maxQueueDelayMs": 1}))
    assert r.ok and r.reason == "AlreadyActive"
    with registry.get("mm") as m:
        assert m.batcher is not None and m.batcher.policy == BatchingPolicy(4, 0.001, 64)
    assert registry.apply(EndpointSpec("mm", "1", blobs=[blob])).ok
    with registry.get("mm") as m:
        assert m.batcher is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"maxBatchSize": 0, "maxQueueDelayMs": 1}, "batching.maxBatchSize must be an integer from 1 to 4096, got 0"),
    ({"maxBatchSize": 4}, "batching.maxQueueDelayMs must be a number from 0 to 10000, got None"),
    ({"maxBatchSize": 4, "maxQueueDelayMs": 1, "maxQueueSize": 0}, "batching.maxQueueSize must be an integer"),
    ({"maxBatchSize": 4, "maxQueueDelayMs": 1, "size": 2}, "batching: unknown field(s) size"),
])
def test_bad_batching_options_are_refused_with_the_field_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BatchingPolicy.from_spec(spec)


# --- the pure parts: forming batches (clock passed in), keys, splitting ---------------------------------------

def _item(rows: int, key: Any = "k", enqueued: float = 0.0) -> BatchItem:
    return BatchItem({}, (), key, rows, lambda *a: None, enqueued)


POLICY = BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.010, max_queue_size=64)


def test_the_oldest_request_waits_at_most_the_queue_delay() -> None:
    queue = [_item(1, enqueued=1.000), _item(2, enqueued=1.004)]
    assert take_batch(queue, POLICY, now=1.004) == ([], pytest.approx(0.006))
    assert take_batch(queue, POLICY, now=1.010) == ([0, 1], 0.0)  # the delay is up: run what is there
    assert take_batch(queue, POLICY, now=5.0) == ([0, 1], 0.0)


def test_a_full_batch_runs_at_once_and_leaves_the_rest_queued() -> None:
    queue = [_item(3), _item(4), _item(2), _item(1)]
    assert take_batch(queue, POLICY, now=0.0) == ([0, 1], 0.0)  # 3+4 = 7; +2 would pass 8: full
    assert take_batch([_item(8), _item(1)], POLICY, now=0.0) == ([0], 0.0)
    assert take_batch([_item(20)], POLICY, now=0.0) == ([0], 0.0)  # more rows than maxBatchSize: alone
    assert take_batch([_item(4), _item(4)], POLICY, now=0.0) == ([0, 1], 0.0)


def test_only_compatible_requests_join_the_oldest_ones_batch() -> None:
    queue = [_item(1, "a"), _item(1, "b"), _item(2, "a"), _item(1, "b")]
    assert take_batch(queue, POLICY, now=1.0) == ([0, 2], 0.0)
    assert take_batch(queue[1:2] + queue[3:], POLICY, now=1.0) == ([0, 1], 0.0)


def test_batch_key_separates_shapes_datatypes_outputs_and_parameters() -> None:
    f = {"x": np.zeros((2, 3), np.float32)}
    k = batch_key(f, ("y",), {})
    assert batch_key({"x": np.zeros((5, 3), np.float32)}, ("y",), {}) == k  # rows may differ
    assert batch_key({"x": np.zeros((2, 4), np.float32)}, ("y",), {}) != k
    assert batch_key({"x": np.zeros((2, 3), np.float64)}, ("y",), {}) != k
    assert batch_key(f, ("y", "z"), {}) != k
    assert batch_key(f, ("y",), {"temperature": 0.5}) != k
    assert batch_key(f, ("y",), {"binary_data_output": True}) == k  # only changes the encoding


def test_split_outputs_gives_each_request_its_rows_and_refuses_outputs_without_them() -> None:
    out = {"y": np.arange(12).reshape(6, 2)}
    parts = split_outputs(out, [1, 3, 2])
    assert [p["y"].tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]
    with pytest.raises(ValueError, match=r"output 'y' has shape \[6, 2\], not 7 rows"):
        split_outputs(out, [4, 3])


def test_binary_tensors_are_decoded_without_copying_the_request_body() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, headers = binary_request("x", arr)
    buf = bytearray(body)
    req = decode_request(buf, int(headers["Inference-Header-Content-Length"]))
    got = req.inputs["x"]
    np.testing.assert_array_equal(got, arr)
    assert np.shares_memory(got, np.frombuffer(buf, np.uint8))


def test_batching_reaches_every_worker_and_a_bad_change_keeps_them_serving() -> None:
    from reconciler.serving.workers.pool import WorkerPool

    blob = matmul_model(seed=1)
    pool = WorkerPool(2, port=0, load_timeout=20.0)
    pool.start()
    try:
        assert pool.apply(EndpointSpec("mm", "1", blobs=[blob])).ok
        r = pool.apply(EndpointSpec("mm", "1", blobs=[blob], batching={"maxBatchSize": 4, "maxQueueDelayMs": 1}))
        assert r.ok and r.reason == "AlreadyActive"
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        answers = concurrently(8, lambda i: post(pool.port, "mm", *binary_request("input", x)))
        assert {a[0] for a in answers} == {200}
        assert len({binary_output(h, b).tobytes() for _, h, b in answers}) == 1
        metrics = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        # every request went through a batch queue, counted in the workers and summed by the pool
        assert 'modelfleet_batch_size_sum{model="mm"} 8.0' in text
        bad = pool.apply(EndpointSpec("mm", "1", blobs=[blob], batching={"maxBatchSize": 0, "maxQueueDelayMs": 1}))
        assert not bad.ok and bad.reason == "InvalidSpec" and "maxBatchSize" in bad.message
        assert post(pool.port, "mm", *binary_request("input", x))[0] == 200
    finally:
        pool.stop()


def test_batches_in_a_row_share_one_gather_buffer_and_answers_stay_their_own() -> None:
    """A runtime that hands its input back (an Identity) must not see an earlier answer overwritten when the
    next batch is gathered into the same buffer; and the second batch reuses the first one's buffer."""
    from reconciler.serving.batching import Batcher

    seen: list[np.ndarray] = []

    def echo(feeds: dict[str, np.ndarray], names: Any) -> dict[str, np.ndarray]:
        seen.append(feeds["x"])
        return {"y": feeds["x"]}

    batcher = Batcher("echo", BatchingPolicy(2, 5.0, 8), echo)
    answers: list[Any] = []
    done = threading.Semaphore(0)

    def finished(out: Any, error: Any, _q: float, _r: float) -> None:
        answers.append((out, error))
        done.release()

    try:
        for value in (1.0, 2.0):
            for _ in range(2):  # two rows fill a batch: it runs at once
                x = np.full((1, 3), value, np.float32)
                batcher.submit(BatchItem({"x": x}, ("y",), batch_key({"x": x}, ("y",), {}), 1, finished))
            for _ in range(2):
                assert done.acquire(timeout=10)
    finally:
        batcher.close()
    assert [e for _, e in answers] == [None] * 4
    assert [out["y"].tolist() for out, _ in answers] == [[[1.0] * 3]] * 2 + [[[2.0] * 3]] * 2
    assert np.shares_memory(seen[0], seen[1])  # the gather buffer was reused, not allocated per batch
