# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""Large bodies (a camera image's tensor) are read from the socket straight into one buffer per request.

Whatever way the bytes arrive (one send, odd pieces, pipelined behind each other and behind small requests,
over TLS), each request gets exactly its own body; a body that stalls or is cut off times out or is dropped
and gives its in-flight budget back.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from reconciler.devkit.modelgen import matmul_model
from reconciler.serving.http.http1 import DIRECT_BODY
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import ModelRegistry
from tests._hostile import read_all
from tests._serving_fixtures import call, registry, spec  # noqa: F401

WIDE = matmul_model(in_dim=1024, out_dim=4, seed=2)
ROWS = 100  # 100 x 1024 FP32 = 409,600 bytes: several socket reads, well above DIRECT_BODY


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, 1024)).astype(np.float32)


def infer_request(x: np.ndarray, extra: bytes = b"") -> bytes:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = header + x.tobytes()
    return (b"POST /v2/models/wide/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(header), len(body), extra)) + body


def expected(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(WIDE, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def responses(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Split a stream of HTTP responses into (status, head, body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((int(head[9:12]), head, rest[:n]))
        data = rest[n:]
    return out


def binary_output(head: bytes, body: bytes) -> np.ndarray:
    hlen = int(head.lower().split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    meta = json.loads(body[:hlen])["outputs"][0]
    return np.frombuffer(body[hlen:], np.float32).reshape(meta["shape"])


@pytest.fixture
def wide(registry: ModelRegistry) -> InferenceServer:
    assert registry.apply(spec(blob=WIDE, name="wide")).ok
    return InferenceServer(registry, limits=ServerLimits().with_options({"bodyTimeout": "0.5"}))


@pytest.mark.parametrize("piece", [1 << 20, 65536, 7919])
def test_large_bodies_pipelined_in_any_pieces_each_get_their_own_answer(wide: InferenceServer, piece: int) -> None:
    xs = [image(i) for i in range(3)]
    assert len(infer_request(xs[0])) > 4 * DIRECT_BODY
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    stream = infer_request(xs[0]) + health + infer_request(xs[1]) + infer_request(xs[2], b"Connection: close\r\n")
    with wide, socket.create_connection(("127.0.0.1", wide.port)) as s:
        for i in range(0, len(stream), piece):
            s.sendall(stream[i : i + piece])
            if piece < 65536 and i % (piece * 16) == 0:
                time.sleep(0.001)  # let the server read in the middle of a body
        answer = read_all(s, 10)  # the last request says Connection: close: the server closes after it
    got = responses(answer)
    assert [status for status, _, _ in got] == [200, 200, 200, 200]
    assert got[1][2] == b'{"live":true}'
    for (_, head, body), x in zip([got[0], got[2], got[3]], xs, strict=True):
        np.testing.assert_array_equal(binary_output(head, body), expected(x))
    assert b"connection: close" in got[3][1]


def test_a_stalled_large_body_times_out_and_a_cut_one_is_dropped_both_freeing_their_budget(
    registry: ModelRegistry,
) -> None:
    assert registry.apply(spec(blob=WIDE, name="wide")).ok
    x = image(5)
    req = infer_request(x)
    # room for one large request at a time: a body that was never released would refuse the next one (503)
    limits = ServerLimits().with_options({"bodyTimeout": "0.4", "maxInflightBytes": str(len(req) + 1000)})
    with InferenceServer(registry, limits=limits) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(req[: len(req) // 2])
            answer = read_all(s, 5)
        assert answer.startswith(b"HTTP/1.1 408") and b"body made no progress" in answer
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(req[: len(req) - 10])
            time.sleep(0.1)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(req)
            status, head, body = responses(read_all(s, 1))[0]
        assert status == 200
        np.testing.assert_array_equal(binary_output(head, body), expected(x))


def test_large_bodies_over_tls(registry: ModelRegistry, tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    assert registry.apply(spec(blob=WIDE, name="wide")).ok
    xs = [image(7), image(8)]
    ctx = ssl.create_default_context(cafile=str(cert))
    with InferenceServer(registry, tls_cert=cert, tls_key=key) as srv, \
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port)), server_hostname="127.0.0.1") as s:
        s.sendall(infer_request(xs[0]) + infer_request(xs[1], b"Connection: close\r\n"))
        got = responses(read_all(s, 10))
    assert [status for status, _, _ in got] == [200, 200]
    for (_, head, body), x in zip(got, xs, strict=True):
        np.testing.assert_array_equal(binary_output(head, body), expected(x))


def test_a_large_json_body_reaches_the_decoder_whole(registry: ModelRegistry) -> None:
    assert registry.apply(spec(blob=WIDE, name="wide")).ok
    x = image(9)[:20]
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    assert len(json.dumps(doc)) > 2 * DIRECT_BODY
    with InferenceServer(registry) as srv:
        status, _, out = call(srv, "POST", "/v2/models/wide/infer", doc)
    assert status == 200
    got = np.array(json.loads(out)["outputs"][0]["data"], np.float32).reshape(20, 4)
    np.testing.assert_allclose(got, expected(x), rtol=1e-6)


def test_large_binary_requests_to_a_batched_model_share_a_batch_and_get_exact_answers(
    registry: ModelRegistry,
) -> None:
    import http.client
    import threading

    from reconciler.serving.batching import BATCH_SIZE

    assert registry.apply(spec(blob=WIDE, name="wide", batching={"maxBatchSize": 400, "maxQueueDelayMs": 300})).ok
    xs = [image(10 + i) for i in range(4)]
    gate = threading.Barrier(len(xs))
    answers: list[tuple[int, bytes, bytes]] = [(0, b"", b"")] * len(xs)

    def post(i: int) -> None:
        raw_request = infer_request(xs[i])
        head, _, body = raw_request.partition(b"\r\n\r\n")
        hlen = head.split(b"Inference-Header-Content-Length: ")[1].split(b"\r\n")[0].decode()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        gate.wait()
        conn.request("POST", "/v2/models/wide/infer", body=body, headers={"Inference-Header-Content-Length": hlen})
        r = conn.getresponse()
        answers[i] = (r.status, b"inference-header-content-length: %s\r\n" % r.getheader(
            "inference-header-content-length", "0").encode(), r.read())
        conn.close()

    def batches() -> float:
        return next(s.value for m in BATCH_SIZE.collect() for s in m.samples
                    if s.labels.get("model") == "wide" and s.name.endswith("_count"))

    with InferenceServer(registry) as srv:
        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert batches() < len(xs), "the requests did not share a batch"
        # A header naming BYTES is decoded in the pool, not on the event loop: still a clear 400.
        header = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": 8}}]}).encode()
        status, _, out = call(srv, "POST", "/v2/models/wide/infer", header + b"\x04\0\0\0abcd" + bytes(DIRECT_BODY),
                              {"Inference-Header-Content-Length": str(len(header))})
    for (status_i, head, body), x in zip(answers, xs, strict=True):
        assert status_i == 200, body[:300]
        assert binary_output(head, body).tobytes() == expected(x).tobytes()
    assert status == 400, out
