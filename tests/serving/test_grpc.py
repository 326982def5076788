# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""The gRPC front (``inference.GRPCInferenceService``): the stock ``tritonclient[grpc]`` and plain grpcio calls with
our stubs, against a real grpc.aio server beside the HTTP one, over one registry and application core."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from reconciler.devkit.modelgen import identity_model, matmul_model
from reconciler.serving.fronts import Fronts, GrpcNotInstalled
from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from tests._serving_fixtures import PROBE_V1, PROBE_V2, V2, call, registry, spec  # noqa: F401

X = np.array(PROBE_V1["inputs"][0]["data"], np.float32).reshape(2, 16)


def sample(name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def fronts(registry: ModelRegistry) -> Iterator[Fronts]:
    assert registry.apply(spec(probe=PROBE_V1)).ok
    f = Fronts(InferenceServer(registry, max_body_bytes=1 << 20), grpc_port=0)
    f.start()
    yield f
    f.stop()


@pytest.fixture
def client(fronts: Fronts) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{fronts.grpc_port}")
    yield c
    c.close()


def fp32_input(x: np.ndarray = X) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_tritonclient_metadata_and_health(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mm")
    assert client.is_model_ready("mm", "1")
    meta = client.get_model_metadata("mm", as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}]
    assert client.get_server_metadata(as_json=True)["name"] == "modelfleet"


def test_tritonclient_fp32_raw_in_and_out(client: grpcclient.InferenceServerClient) -> None:
    res = client.infer("mm", [fp32_input()], request_id="t-1")
    np.testing.assert_allclose(res.as_numpy("output").reshape(-1), PROBE_V1["outputs"][0]["data"], atol=1e-5)
    assert res.get_response().id == "t-1" and res.get_response().model_version == "1"
    assert len(res.get_response().raw_output_contents) == 1  # the request was raw: so is the answer
    out = grpcclient.InferRequestedOutput("output")
    assert client.infer("mm", [fp32_input()], outputs=[out]).as_numpy("output").shape == (2, 4)


@pytest.mark.parametrize(("datatype", "values"), [
    ("INT64", np.array([[1, -2, 2**40]], np.int64)),
    ("BOOL", np.array([[True, False, True]])),
    ("BYTES", np.array([[b"hello", "é".encode(), b""]], dtype=object)),
    ("FP16", np.array([[0.5, -2.0, 65504.0]], np.float16)),
    ("UINT8", np.array([[0, 7, 255]], np.uint8)),
])
def test_tritonclient_datatypes_round_trip(registry: ModelRegistry, client: grpcclient.InferenceServerClient,
                                           datatype: str, values: np.ndarray) -> None:
    assert registry.apply(spec("1", identity_model(datatype), name="id")).ok
    inp = grpcclient.InferInput("input", list(values.shape), datatype)
    inp.set_data_from_numpy(values)
    got = client.infer("id", [inp]).as_numpy("output")
    assert got.tolist() == values.tolist() and got.shape == values.shape


def test_errors_are_grpc_status_codes(registry: ModelRegistry, client: grpcclient.InferenceServerClient) -> None:
    def code(fn: Any) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            fn()
        return str(info.value.status()), str(info.value.message())

    assert code(lambda: client.infer("nope", [fp32_input()])) == ("StatusCode.NOT_FOUND", "unknown model 'nope'")
    assert code(lambda: client.get_model_metadata("nope"))[0] == "StatusCode.NOT_FOUND"
    assert code(lambda: client.is_model_ready("mm", "7"))[0] == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("input", [1, 16], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 16)))
    assert code(lambda: client.infer("mm", [bad])) == (
        "StatusCode.INVALID_ARGUMENT", "input 'input': datatype FP64 does not match the model's FP32")
    wrong = grpcclient.InferInput("input", [2, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 8), np.float32))
    assert code(lambda: client.infer("mm", [wrong])) == (
        "StatusCode.INVALID_ARGUMENT", "input 'input': shape [2, 8] does not match the model's [-1, 16]")
    assert registry.apply(spec("1", identity_model("BYTES"), name="strings")).ok
    s = grpcclient.InferInput("input", [1, 2], "BYTES")
    s.set_data_from_numpy(np.array([[b"a\xffb", b""]], dtype=object))
    status, message = code(lambda: client.infer("strings", [s]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "string tensors must be UTF-8" in message


def test_bearer_token_in_metadata(registry: ModelRegistry) -> None:
    assert registry.apply(spec(probe=PROBE_V1)).ok
    with Fronts(InferenceServer(registry, auth_token="s3cret"), grpc_port=0) as f:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{f.grpc_port}")
        assert c.is_server_live() and c.is_server_ready()  # health needs no token, as over REST
        for fn in (lambda: c.infer("mm", [fp32_input()]), lambda: c.get_model_metadata("mm"),
                   lambda: c.infer("mm", [fp32_input()], headers={"authorization": "Bearer wrong"})):
            with pytest.raises(InferenceServerException) as info:
                fn()
            assert str(info.value.status()) == "StatusCode.UNAUTHENTICATED"
        ok = c.infer("mm", [fp32_input()], headers={"authorization": "Bearer s3cret"})
        assert ok.as_numpy("output").shape == (2, 4)
        c.close()


def test_plain_grpcio_typed_and_raw_contents(fronts: Fronts, registry: ModelRegistry) -> None:
    """A second client: grpcio calls with our stubs, typed contents in → typed out, raw in → raw out."""
    with grpc.insecure_channel(f"127.0.0.1:{fronts.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="mm")).ready
        typed = pb.ModelInferRequest(model_name="mm", id="a", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[2, 16], contents=pb.InferTensorContents(fp32_contents=X.ravel()))])
        r = stub.ModelInfer(typed)
        assert not r.raw_output_contents and r.outputs[0].shape == [2, 4] and r.id == "a"
        np.testing.assert_allclose(r.outputs[0].contents.fp32_contents, PROBE_V1["outputs"][0]["data"], atol=1e-5)
        raw = pb.ModelInferRequest(model_name="mm", model_version="1", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[2, 16])], raw_input_contents=[X.tobytes()])
        r2 = stub.ModelInfer(raw)
        assert not r2.outputs[0].HasField("contents")
        np.testing.assert_array_equal(np.frombuffer(r2.raw_output_contents[0], np.float32),
                                      np.array(r.outputs[0].contents.fp32_contents, np.float32))
        # typed INT64 and BYTES through an identity model, and a value out of a narrow type's range
        assert registry.apply(spec("1", identity_model("INT64"), name="i64")).ok
        ints = pb.ModelInferRequest(model_name="i64", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="INT64", shape=[1, 2], contents=pb.InferTensorContents(int64_contents=[5, -6]))])
        assert list(stub.ModelInfer(ints).outputs[0].contents.int64_contents) == [5, -6]
        assert registry.apply(spec("1", identity_model("INT8"), name="i8")).ok
        small = pb.ModelInferRequest(model_name="i8", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="INT8", shape=[1, 2], contents=pb.InferTensorContents(int_contents=[5, 300]))])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(small)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INT8's range" in info.value.details()
        short = pb.ModelInferRequest(model_name="mm", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[2, 16], contents=pb.InferTensorContents(fp32_contents=[1.0]))])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(short)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 32 elements" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_one_registry_swaps_and_metrics_for_both_fronts(fronts: Fronts, registry: ModelRegistry,
                                                        client: grpcclient.InferenceServerClient) -> None:
    before = sample("modelfleet_inference_requests_total", {"model": "mm", "version": "1"}) or 0.0
    client.infer("mm", [fp32_input()])
    call(fronts.http, "POST", "/v2/models/mm/infer", {"inputs": PROBE_V1["inputs"]})
    assert sample("modelfleet_inference_requests_total", {"model": "mm", "version": "1"}) == before + 2
    failed = sample("modelfleet_inference_failures_total", {"model": "mm", "version": "1", "code": "400"}) or 0.0
    bad = grpcclient.InferInput("input", [1, 16], "INT64")
    bad.set_data_from_numpy(np.zeros((1, 16), np.int64))
    with pytest.raises(InferenceServerException):
        client.infer("mm", [bad])
    assert sample("modelfleet_inference_failures_total", {"model": "mm", "version": "1", "code": "400"}) == failed + 1
    assert registry.apply(spec("2", V2, probe=PROBE_V2)).ok  # a switch is seen by both fronts at once
    res = client.infer("mm", [fp32_input()])
    assert res.get_response().model_version == "2"
    np.testing.assert_allclose(res.as_numpy("output").reshape(-1), PROBE_V2["outputs"][0]["data"], atol=1e-5)
    assert client.get_model_metadata("mm", as_json=True)["versions"] == ["2", "1"]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        self.seen.append(("observe", request_id or "", str(feeds["input"].shape)))

    def observe_error(self, seconds: float) -> None:
        self.seen.append(("error",))

    def observe_rejection(self) -> None:
        self.seen.append(("rejection",))

    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        self.seen.append(("rejected_inputs", *sorted(inputs)))

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {}


@pytest.mark.parametrize("batching", [None, {"maxBatchSize": 8, "maxQueueDelayMs": 50}], ids=["alone", "batched"])
def test_drift_and_capture_hooks_and_batches_see_grpc_requests(batching: dict[str, Any] | None) -> None:
    rec = Recorder()
    reg = ModelRegistry(observer_factory=lambda s: rec)
    try:
        assert reg.apply(EndpointSpec("mm", "1", blobs=[matmul_model(seed=1)], batching=batching)).ok
        with Fronts(InferenceServer(reg), grpc_port=0) as f:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{f.grpc_port}")
            answers: list[Any] = [None] * 6

            def one(i: int) -> None:
                answers[i] = c.infer("mm", [fp32_input(X[i % 2 : i % 2 + 1])], request_id=f"r{i}")

            threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            for i, a in enumerate(answers):
                np.testing.assert_allclose(a.as_numpy("output").reshape(-1),
                                           PROBE_V1["outputs"][0]["data"][(i % 2) * 4 : (i % 2) * 4 + 4], atol=1e-5)
            bad = grpcclient.InferInput("input", [1, 8], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 8), np.float32))
            with pytest.raises(InferenceServerException):
                c.infer("mm", [bad])
            c.close()
    finally:
        reg.close()
    observed = sorted(s for s in rec.seen if s[0] == "observe")
    assert observed == [("observe", f"r{i}", "(1, 16)") for i in range(6)]
    assert ("rejection",) in rec.seen and ("rejected_inputs", "input") in rec.seen


def test_a_gRPC_port_without_grpcio_is_a_clear_error(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.serving.fronts as fronts_mod

    monkeypatch.setattr(fronts_mod, "installed", lambda module: module != "grpc")
    with pytest.raises(GrpcNotInstalled) as info:
        Fronts(InferenceServer(registry), grpc_port=0, requested_by="--grpc-port")
    assert str(info.value) == "--grpc-port needs gRPC, which is not installed: pip install 'modelfleet[grpc]'"


def test_tls_for_both_fronts(registry: ModelRegistry, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    assert registry.apply(spec(probe=PROBE_V1)).ok
    with Fronts(InferenceServer(registry, tls_cert=cert, tls_key=key), grpc_port=0, tls_cert=cert, tls_key=key) as f:
        assert f.grpc_url == f"grpcs://127.0.0.1:{f.grpc_port}"
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{f.grpc_port}", ssl=True, root_certificates=str(cert))
        assert c.infer("mm", [fp32_input()]).as_numpy("output").shape == (2, 4)
        c.close()
        with grpc.insecure_channel(f"127.0.0.1:{f.grpc_port}") as ch:  # plaintext is not served
            with pytest.raises(grpc.RpcError):
                pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=5)


def test_a_deadline_that_passes_cancels_the_call_not_the_work(registry: ModelRegistry) -> None:
    """The client gives up while its request waits in a batch: DEADLINE_EXCEEDED for it; the batch still runs,
    the version's lease is released (a switch does not wait for it) and the server's byte budget is whole."""
    policy = {"maxBatchSize": 8, "maxQueueDelayMs": 400}
    assert registry.apply(EndpointSpec("mm", "1", blobs=[matmul_model(seed=1)], batching=policy)).ok
    with Fronts(InferenceServer(registry), grpc_port=0) as f:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{f.grpc_port}")
        with pytest.raises(InferenceServerException) as info:
            c.infer("mm", [fp32_input()], client_timeout=0.05)
        assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
        lease = registry.get("mm")
        old = lease.model
        lease.release()
        t0 = time.monotonic()
        assert registry.apply(EndpointSpec("mm", "2", blobs=[matmul_model(seed=1, bias=1.0)], batching=policy,
                                           keep_previous=False)).ok
        end = time.monotonic() + 10
        while old.inflight and time.monotonic() < end:  # the batch answers within its delay, then drains
            time.sleep(0.02)
        assert old.inflight == 0 and time.monotonic() - t0 < 5
        assert f.grpc._budget.used == 0
        assert c.infer("mm", [fp32_input()]).get_response().model_version == "2"
        c.close()


def test_a_call_cancelled_while_its_work_waits_for_the_pool_still_releases_the_version() -> None:
    """A request waits for the (one-thread, busy) pool; its client gives up: the queued work still runs and
    releases its lease, so the version can drain (unshielded, it was cancelled unrun and the lease never came
    back: a switch waited 60 s for it)."""
    from reconciler.devkit.modelgen import camera_cnn
    from reconciler.serving.grpc.server import GrpcServer

    reg = ModelRegistry()
    try:
        assert reg.apply(EndpointSpec("cnn", "1", blobs=[camera_cnn(seed=1)], threads=1)).ok
        http = InferenceServer(reg)
        with http, GrpcServer(http.app, port=0, workers=1) as g:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{g.port}")
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            one = grpcclient.InferInput("image", list(x.shape), "FP32")
            one.set_data_from_numpy(x)
            busy = threading.Event()
            assert g._pool is not None
            held = g._pool.submit(busy.wait, 30)  # the pool's one thread is taken
            with pytest.raises(InferenceServerException) as info:
                c.infer("cnn", [one], client_timeout=0.5)
            assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
            busy.set()
            held.result(10)
            lease = reg.get("cnn")
            model = lease.model
            lease.release()
            end = time.monotonic() + 10
            while (model.inflight or g._budget.used) and time.monotonic() < end:
                time.sleep(0.02)  # the work ends in the pool, then the call's coroutine returns its bytes
            assert model.inflight == 0
            assert g._budget.used == 0
            c.close()
    finally:
        reg.close()
