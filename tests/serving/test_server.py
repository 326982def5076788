# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""The KServe v2 HTTP server: routes, error handling, auth, unix socket, TLS, metrics and `modelfleet serve`."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.devkit.modelgen import identity_model, small_cnn, two_input_model
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from tests._serving_fixtures import PROBE_V1, PROBE_V2, V1, V2, call, raw, registry, server, spec  # noqa: F401

INFER = "/v2/models/mm/infer"


def infer_doc(**extra: object) -> dict:
    return {"inputs": PROBE_V1["inputs"], **extra}


def test_health_metadata_index_and_infer(server: InferenceServer) -> None:
    assert call(server, "GET", "/v2/health/live")[0] == 200
    assert json.loads(call(server, "GET", "/v2/health/ready")[2]) == {"ready": True}
    meta = json.loads(call(server, "GET", "/v2")[2])
    assert "binary_tensor_data" in meta["extensions"]
    md = json.loads(call(server, "GET", "/v2/models/mm")[2])
    assert md["versions"] == ["1"] and md["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 16]}
    ]
    assert call(server, "GET", "/v2/models/mm/versions/1/ready")[0] == 200
    assert call(server, "GET", "/v2/models/mm/versions/9/ready")[0] == 404
    assert call(server, "GET", "/v2/models/nope/ready")[0] == 404
    status, _, body = call(server, "POST", INFER, infer_doc(id="req-1"))
    doc = json.loads(body)
    assert status == 200 and doc["id"] == "req-1" and doc["model_version"] == "1"
    assert doc["outputs"][0]["data"] == pytest.approx(PROBE_V1["outputs"][0]["data"], abs=1e-5)
    index = json.loads(call(server, "POST", "/v2/repository/index")[2])
    assert index == [{"name": "mm", "version": "1", "state": "READY", "reason": ""}]


def test_binary_request_and_response(server: InferenceServer) -> None:
    import numpy as np

    x = np.array(PROBE_V1["inputs"][0]["data"], np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [2, 16],
                    "parameters": {"binary_data_size": 128},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = call(
        server, "POST", INFER, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    hlen = int(headers["inference-header-content-length"])
    out = json.loads(body[:hlen])["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 32
    np.testing.assert_allclose(
        np.frombuffer(body[hlen:], np.float32), PROBE_V1["outputs"][0]["data"], atol=1e-5
    )


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{bad json", {}, 400, "malformed JSON"),
        (
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 16], "data": [0] * 16}]},
            {},
            400,
            "datatype FP64 does not match the model's FP32",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0] * 15}]},
            {},
            400,
            "needs 16 elements",
        ),
        (
            {"inputs": [{"name": "img", "datatype": "FP32", "shape": [1], "data": [0]}]},
            {},
            400,
            "unknown input 'img'",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0] * 8}]},
            {},
            400,
            "does not match the model's [-1, 16]",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 16],
                        "parameters": {"binary_data_size": 64},
                    }
                ]
            },
            {"Inference-Header-Content-Length": "9999"},
            400,
            "larger than the body",
        ),
    ],
)
def test_bad_requests_get_precise_errors(
    server: InferenceServer, body: object, headers: dict, status: int, message: str
) -> None:
    got, _, out = call(server, "POST", INFER, body, headers)  # type: ignore[arg-type]
    assert got == status
    assert message in json.loads(out)["error"]
    assert call(server, "GET", "/v2/health/live")[0] == 200  # the server survived


def test_oversized_body_is_refused_before_it_is_read(server: InferenceServer) -> None:
    answer = raw(server, b"POST /v2/models/mm/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n{" % (2 << 20))
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"request body larger than the limit of 1048576 bytes" in answer


def test_truncated_binary_and_broken_http_do_not_crash(server: InferenceServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ).encode()
    status, _, out = call(
        server, "POST", INFER, header + b"\0" * 10, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "truncated binary data" in json.loads(out)["error"]
    assert raw(server, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert call(server, "GET", "/v2/nope")[0] == 404
    assert call(server, "GET", INFER)[0] == 405
    assert call(server, "POST", "/v2/models/ghost/infer", infer_doc())[0] == 404


def test_keep_alive_pipelining_and_expect_continue(server: InferenceServer) -> None:
    body = json.dumps(infer_doc()).encode()
    req = b"POST /v2/models/mm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = raw(server, req * 3 + b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 4 and answer.endswith(b'{"live":true}')
    cont = raw(
        server,
        b"POST /v2/models/mm/infer HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert cont.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_declared_ranges_are_enforced(registry: ModelRegistry) -> None:
    decl = [{"name": "input", "datatype": "FP32", "shape": [-1, 16], "range": {"min": -5, "max": 5}}]
    assert registry.apply(spec("1", V1, PROBE_V1, inputs=decl)).ok
    with InferenceServer(registry) as srv:
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0] * 15 + [7]}]}
        status, _, out = call(srv, "POST", INFER, bad)
        assert status == 400 and "above the declared maximum 5" in json.loads(out)["error"]


def test_swap_and_failed_version_seen_over_http(server: InferenceServer, registry: ModelRegistry) -> None:
    assert registry.apply(spec("2", V2, PROBE_V2)).ok
    doc = json.loads(call(server, "POST", INFER, infer_doc())[2])
    assert doc["model_version"] == "2"
    # The previous version stays addressable while kept loaded.
    assert (
        json.loads(call(server, "POST", "/v2/models/mm/versions/1/infer", infer_doc())[2])["model_version"]
        == "1"
    )
    assert not registry.apply(spec("3", V1, PROBE_V2)).ok
    assert json.loads(call(server, "POST", INFER, infer_doc())[2])["model_version"] == "2"
    metrics = call(server, "GET", "/metrics")[2].decode()
    assert 'modelfleet_inference_requests_total{model="mm",version="2"}' in metrics
    assert 'modelfleet_model_swaps_total{model="mm"}' in metrics
    assert "modelfleet_model_load_failures_total" in metrics


def test_slow_model_runs_in_thread_pool_with_all_datatypes(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", small_cnn(), name="cnn", health={"warmupRuns": 2})).ok
    assert registry.apply(spec("1", two_input_model(), name="two")).ok
    assert registry.apply(spec("1", identity_model("BYTES"), name="strings")).ok
    with InferenceServer(registry) as srv:
        img = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}]
        }
        status, _, out = call(srv, "POST", "/v2/models/cnn/infer", img)
        assert status == 200 and json.loads(out)["outputs"][0]["shape"] == [1, 10]
        two = {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]},
                {"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [[4, 3, 2, 1]]},
            ]
        }
        outs = {
            o["name"]: o for o in json.loads(call(srv, "POST", "/v2/models/two/infer", two)[2])["outputs"]
        }
        assert outs["sum"]["data"] == [5, 5, 5, 5] and outs["mask"] == {
            "name": "mask",
            "datatype": "BOOL",
            "shape": [1, 4],
            "data": [False, False, True, True],
        }
        s = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 2], "data": ["hé", "x"]}]}
        assert json.loads(call(srv, "POST", "/v2/models/strings/infer", s)[2])["outputs"][0]["data"] == [
            "hé",
            "x",
        ]


def test_auth_token_and_unix_socket(registry: ModelRegistry, tmp_path: Path) -> None:
    assert registry.apply(spec("1", V1, PROBE_V1)).ok
    sock = tmp_path / "s.sock"
    with InferenceServer(registry, auth_token="s3cret", unix_socket=sock) as srv:
        assert call(srv, "GET", "/v2/health/ready")[0] == 200  # probes stay open
        status, headers, _ = call(srv, "GET", "/v2/models/mm")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert call(srv, "GET", "/v2/models/mm", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(srv, "GET", "/v2/models/mm", headers={"Authorization": "Bearer s3cret"})[0] == 200
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(
                b"GET /v2/models/mm/ready HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
            )
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
    assert not sock.exists()


def test_tls(registry: ModelRegistry, tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    assert registry.apply(spec("1", V1, PROBE_V1)).ok
    with InferenceServer(registry, tls_cert=cert, tls_key=key) as srv:
        assert srv.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        import http.client

        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=5)
        conn.request("GET", "/v2/models/mm/ready")
        assert conn.getresponse().status == 200
        conn.close()


def test_modelfleet_serve_command(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(V1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "serve", str(model), "--name", "tiny", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"serving tiny (onnxruntime) at http://127.0.0.1:{port}/v2/models/tiny" in line
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v2/models/tiny/infer", body=json.dumps(infer_doc()))
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "serve", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "error:" in bad.stderr and "no such model file" in bad.stderr
    assert "Traceback" not in bad.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    bad = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "serve", str(junk), "--port", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "LoadFailed" in bad.stderr and "Traceback" not in bad.stderr
