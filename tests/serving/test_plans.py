"""Request plans (reconciler.serving.v2.plans): a request of a kind answered before skips the header decoding and
reuses the answer's JSON, and answers exactly what the full decode/validate/encode path answers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from reconciler.devkit.modelgen import identity_model, small_cnn, two_input_model
from reconciler.serving.app.v2app import V2App
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from reconciler.serving.v2 import plans
from reconciler.serving.v2.handler import Response
from tests._serving_fixtures import NAN, PROBE_V1, PROBE_V2, V1, V2, call, registry, spec  # noqa: F401

INFER = "/v2/models/mm/infer"


def binary(arrays: dict[str, tuple[str, np.ndarray]], **doc: Any) -> tuple[dict[str, str], bytes]:
    raw = [a.tobytes() for _, a in arrays.values()]
    hdr = json.dumps({"inputs": [{"name": n, "datatype": dt, "shape": list(a.shape),
                                  "parameters": {"binary_data_size": len(r)}}
                                 for (n, (dt, a)), r in zip(arrays.items(), raw, strict=True)], **doc}).encode()
    return {"inference-header-content-length": str(len(hdr))}, hdr + b"".join(raw)


def both_ways(app: V2App, model: str, headers: dict[str, str], body: bytes) -> tuple[Response, Response]:
    """The answer the full path gives (no plan kept) and the one a kept plan gives, for the same request."""
    target = f"/v2/models/{model}/infer"
    with app.registry.get(model) as m:
        m.plans.clear()
        full = app.handle("POST", target, headers, body)
        assert isinstance(full, Response)
        planned = [app.handle("POST", target, headers, body) for _ in range(3)]  # learn, template, filled
    for p in planned:
        assert isinstance(p, Response)
        assert (p.status, p.body, p.content_type, p.headers) == (full.status, full.body, full.content_type,
                                                                  full.headers)
    return full, planned[-1]


@pytest.fixture
def app(registry: ModelRegistry) -> V2App:  # noqa: F811
    assert registry.apply(spec(probe=PROBE_V1)).ok
    assert registry.apply(spec("1", two_input_model(), name="two")).ok
    assert registry.apply(spec("1", identity_model("BOOL"), name="flags")).ok
    assert registry.apply(spec("1", identity_model("INT8"), name="bytes8")).ok
    return V2App(registry)


def test_binary_requests_answer_byte_for_byte_as_the_full_path(app: V2App) -> None:
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 16)).astype(np.float32)
        for doc in ({"parameters": {"binary_data_output": True}}, {},
                    {"outputs": [{"name": "output", "parameters": {"binary_data": True}}]}):
            full, _ = both_ways(app, "mm", *binary({"input": ("FP32", x)}, **doc))
            assert full.status == 200
        # the plan is per header: new data under the same header is answered from the plan, correctly
        headers, body = binary({"input": ("FP32", x)}, parameters={"binary_data_output": True})
        y = rng.standard_normal((rows, 16)).astype(np.float32)
        _, body_y = binary({"input": ("FP32", y)}, parameters={"binary_data_output": True})
        assert app.handle("POST", INFER, headers, body).status == 200  # type: ignore[union-attr]
        with app.registry.get("mm") as m:
            assert body[: int(headers["inference-header-content-length"])] in m.plans
            got = app.handle("POST", INFER, headers, body_y)
            expected = m.backend.infer({"input": y})["output"]
        hlen = int(got.headers[0][1])  # type: ignore[union-attr]
        assert np.array_equal(np.frombuffer(got.body[hlen:], np.float32).reshape(rows, 4), expected)  # type: ignore[union-attr]
    a, b = np.ones((1, 4), np.float32), np.arange(4, dtype=np.float32).reshape(1, 4)
    full, _ = both_ways(app, "two", *binary({"a": ("FP32", a), "b": ("FP32", b)},
                                             parameters={"binary_data_output": True}))
    assert full.status == 200
    both_ways(app, "flags", *binary({"input": ("BOOL", np.array([[True, False, True]]))}))


def test_json_requests_answer_byte_for_byte_as_the_full_path(app: V2App) -> None:
    for data in ([0.5] * 16, [[0.25] * 16], [1] * 16, [1e39] + [0.0] * 15):  # 1e39 is +inf in FP32: non-finite
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": data}]})
        full, _ = both_ways(app, "mm", {}, body.encode())
        assert full.status == 200
    out = json.loads(full.body)["outputs"][0]
    assert out["parameters"] == {"nonfinite_values": 4} and out["data"] == [None] * 4
    body = json.dumps({"inputs": [{"name": "input", "datatype": "INT8", "shape": [3], "data": [-128, 0, 127]}]})
    both_ways(app, "bytes8", {}, body.encode())


@pytest.mark.parametrize(("data", "message"), [
    ([True] + [0.0] * 15, "JSON true/false are not"),
    ([0.0] * 15, "needs 16 elements"),
    ([0.0] * 15 + ["x"], "must be numbers"),
    ([[0.0] * 8, [0.0] * 7], "needs 16 elements"),
])
def test_a_bad_request_of_a_planned_kind_gets_the_full_paths_error(app: V2App, data: list[Any], message: str) -> None:
    good = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]})
    assert app.handle("POST", INFER, {}, good.encode()).status == 200  # type: ignore[union-attr]
    with app.registry.get("mm") as m:
        assert m.plans
    bad = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": data}]})
    r = app.handle("POST", INFER, {}, bad.encode())
    assert isinstance(r, Response) and r.status == 400 and message in json.loads(r.body)["error"]


def test_shapes_that_only_look_equal_are_not_planned(app: V2App) -> None:
    """``[1, 16]`` has a plan; ``[true, 16]`` and ``[1.0, 16]`` compare equal to it in Python, but are invalid."""
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
    assert app.handle("POST", INFER, {}, json.dumps(doc).encode()).status == 200  # type: ignore[union-attr]
    for shape in ([True, 16], [1.0, 16]):
        doc["inputs"][0]["shape"] = shape  # type: ignore[index]
        r = app.handle("POST", INFER, {}, json.dumps(doc).encode())
        assert isinstance(r, Response) and r.status == 400 and "'shape' must be a list" in json.loads(r.body)["error"]


def test_value_checks_still_run_per_request(registry: ModelRegistry) -> None:  # noqa: F811
    decl = [{"name": "input", "datatype": "FP32", "shape": [-1, 16], "range": {"min": -5, "max": 5}}]
    assert registry.apply(spec("1", V1, PROBE_V1, inputs=decl)).ok
    assert registry.apply(spec("1", identity_model("BOOL"), name="flags")).ok
    app = V2App(registry)
    ok = np.zeros((1, 16), np.float32)
    headers, body = binary({"input": ("FP32", ok)})
    assert app.handle("POST", INFER, headers, body).status == 200  # type: ignore[union-attr]
    assert app.handle("POST", INFER, headers, body).status == 200  # type: ignore[union-attr]
    bad = ok.copy()
    bad[0, 3] = 7
    r = app.handle("POST", INFER, headers, binary({"input": ("FP32", bad)})[1])
    assert isinstance(r, Response) and r.status == 400 and "above the declared maximum 5" in json.loads(r.body)["error"]
    headers, body = binary({"input": ("BOOL", np.array([[True, False]]))})
    assert app.handle("POST", "/v2/models/flags/infer", headers, body).status == 200  # type: ignore[union-attr]
    r = app.handle("POST", "/v2/models/flags/infer", headers, body[:-1] + b"\x02")
    assert isinstance(r, Response) and r.status == 400 and "BOOL bytes must be 0 or 1" in json.loads(r.body)["error"]


def test_plans_are_bounded_and_requests_with_an_id_are_not_kept(app: V2App) -> None:
    x = np.zeros((1, 16), np.float32)
    with app.registry.get("mm") as m:
        for i in range(plans.PLANS_MAX + 5):
            headers, body = binary({"input": ("FP32", x)}, parameters={"n": i})
            assert app.handle("POST", INFER, headers, body).status == 200  # type: ignore[union-attr]
            assert len(m.plans) <= plans.PLANS_MAX
        m.plans.clear()
        headers, body = binary({"input": ("FP32", x)}, id="request-1")
        r = app.handle("POST", INFER, headers, body)
        assert isinstance(r, Response) and json.loads(r.body)["id"] == "request-1"
        assert not m.plans


def test_a_new_version_starts_without_plans_and_answers_as_itself(registry: ModelRegistry) -> None:  # noqa: F811
    assert registry.apply(spec(probe=PROBE_V1)).ok
    app = V2App(registry)
    headers, body = binary({"input": ("FP32", np.zeros((1, 16), np.float32))})
    first = app.handle("POST", INFER, headers, body)
    app.handle("POST", INFER, headers, body)
    assert registry.apply(spec("2", V2, PROBE_V2)).ok
    second = app.handle("POST", INFER, headers, body)
    a = json.loads(first.body)["outputs"][0]["data"]  # type: ignore[union-attr]
    b = json.loads(second.body)  # type: ignore[union-attr]
    assert b["model_version"] == "2" and b["outputs"][0]["data"] == [v + 1.0 for v in a]


def test_a_model_returning_nan_is_answered_with_counted_nulls_from_a_plan(registry: ModelRegistry) -> None:  # noqa: F811
    assert registry.apply(spec("1", NAN, name="nan", health={"requireFinite": False})).ok
    app = V2App(registry)
    full, planned = both_ways(app, "nan", *binary({"input": ("FP32", np.zeros((1, 16), np.float32))},
                                                   parameters={"binary_data_output": True}))
    hlen = int(planned.headers[0][1])
    assert json.loads(planned.body[:hlen])["outputs"][0]["parameters"] == {"binary_data_size": 16,
                                                                          "nonfinite_values": 4}


def test_a_slow_model_runs_off_the_loop_while_a_fast_one_runs_inline(registry: ModelRegistry) -> None:  # noqa: F811
    """The tiny model is answered on the event loop (no thread hop); a slow one in the pool, so a health check
    is answered while it runs."""


    assert registry.apply(spec(probe=PROBE_V1)).ok
    assert registry.apply(spec("1", small_cnn(), name="cnn", health={"warmupRuns": 2})).ok
    with registry.get("mm") as m, registry.get("cnn") as slow:
        assert m.inline  # warm-up p50 under registry.INLINE_BELOW_MS
        slow.inline = False  # as if its warm-up had been slow: the inference below blocks until released
        run = slow.backend.infer
        started, release = threading.Event(), threading.Event()

        def blocking(feeds: dict[str, np.ndarray], names: Any = None) -> dict[str, np.ndarray]:
            started.set()
            release.wait(10)
            return run(feeds, names)

        slow.backend.infer = blocking  # type: ignore[method-assign]
    with InferenceServer(registry) as srv:
        img = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}]}
        answers: list[int] = []
        t = threading.Thread(target=lambda: answers.append(call(srv, "POST", "/v2/models/cnn/infer", img)[0]))
        t.start()
        try:
            assert started.wait(10)
            t0 = time.monotonic()
            assert call(srv, "GET", "/v2/health/live")[0] == 200
            assert call(srv, "POST", INFER, {"inputs": PROBE_V1["inputs"]})[0] == 200  # inline, while cnn runs
            assert time.monotonic() - t0 < 5
        finally:
            release.set()
            t.join(10)
    assert answers == [200]
