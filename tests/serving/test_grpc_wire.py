"""A large gRPC request's tensors are read where they arrived (issue AB: the gRPC front's CPU per request): the
walk over the message's top-level fields agrees with protobuf's parser on every message and every prefix of one,
the tensors decoded are views of the received bytes (protobuf copied each twice), and the answers written after
the rest still read as the same message — for tritonclient too, with two large inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from reconciler.devkit.modelgen import two_input_model
from reconciler.serving.fronts import Fronts
from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb
from reconciler.serving.grpc.server import SPLIT_MIN, _Budget, parse_request
from reconciler.serving.grpc.tensors import RAW_INPUT_FIELD, decode, encode_response
from reconciler.serving.grpc.wire import WireError, split_bytes_field
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.v2.codec import JsonLimits, RequestedOutput

LIMITS = JsonLimits(1 << 24, 1 << 24)


def request(rows: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A two-input request whose raw contents come between the other fields (any order is valid protobuf)."""
    a = rng.standard_normal((rows, 4)).astype(np.float32)
    b = rng.standard_normal((rows, 4)).astype(np.float32)
    head = pb.ModelInferRequest(model_name="two", id="r-1", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="a", datatype="FP32", shape=[rows, 4])]).SerializeToString()
    mid = pb.ModelInferRequest(raw_input_contents=[a.tobytes()]).SerializeToString()
    tail = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="b", datatype="FP32", shape=[rows, 4])],
                                raw_input_contents=[b.tobytes()])
    tail.parameters["priority"].int64_param = 3
    return head + mid + tail.SerializeToString(), a, b


def test_large_request_tensors_are_views_of_the_received_message() -> None:
    """Before: protobuf copied each input into its arena and again into a new bytes on every read."""
    data, a, b = request(8192, np.random.default_rng(0))  # 256 KiB
    assert len(data) > SPLIT_MIN
    msg, raw = parse_request(data)
    req = decode(msg, LIMITS, raw)
    assert np.array_equal(req.inputs["a"], a) and np.array_equal(req.inputs["b"], b)
    received = np.frombuffer(data, np.uint8)
    assert np.shares_memory(req.inputs["a"], received) and np.shares_memory(req.inputs["b"], received)
    assert (msg.model_name, msg.id, [t.name for t in msg.inputs]) == ("two", "r-1", ["a", "b"])
    assert msg.parameters["priority"].int64_param == 3
    assert not msg.raw_input_contents


@pytest.mark.parametrize("seed", range(20))
def test_the_walk_agrees_with_protobuf_on_every_prefix(seed: int) -> None:
    """Whole or cut anywhere: either both refuse it, or the walk's parts are protobuf's message."""
    rng = np.random.default_rng(seed)
    data, _, _ = request(int(rng.integers(1, 40)), rng)
    whole = pb.ModelInferRequest.FromString(data)
    for cut in [len(data), *sorted({int(c) for c in rng.integers(0, len(data), 60)})]:
        prefix = data[:cut]
        try:
            expected = pb.ModelInferRequest.FromString(prefix)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError
            expected = None
        try:
            rest, views = split_bytes_field(prefix, RAW_INPUT_FIELD)
            got = pb.ModelInferRequest.FromString(rest)
            got.raw_input_contents.extend(bytes(v) for v in views)
        except Exception:  # noqa: BLE001 - WireError, or protobuf refusing the rest
            got = None
        assert (got is None) == (expected is None), cut
        if got is not None:
            assert got == expected, cut
    assert split_bytes_field(data, RAW_INPUT_FIELD)[1] and whole.raw_input_contents


@pytest.mark.parametrize("bad", [
    b"\x3a\xff\xff\xff\xff\x0f",  # field 7 announcing 4 GiB
    b"\x3a\x05ab",  # field 7 announcing more than is left
    b"\x0b\x0c",  # a group (wire type 3)
    b"\x07",  # wire type 7
    b"\x00\x00",  # field number 0
    b"\x08" + b"\xff" * 11,  # a varint of more than 64 bits
    b"\x09\x00\x00",  # a 64-bit field cut short
])
def test_malformed_messages_are_refused(bad: bytes) -> None:
    with pytest.raises(WireError):
        split_bytes_field(bad, RAW_INPUT_FIELD)


def test_raw_outputs_written_after_the_rest_read_as_protobuf_would_write_them() -> None:
    big = np.arange(300_000, dtype=np.float32).reshape(1000, 300)
    mask = big > 7
    out = encode_response("two", "1", "r", {"sum": big, "mask": mask},
                          [RequestedOutput("sum", True), RequestedOutput("mask", True)], raw=True)
    expected = pb.ModelInferResponse(model_name="two", model_version="1", id="r", outputs=[
        pb.ModelInferResponse.InferOutputTensor(name="sum", datatype="FP32", shape=[1000, 300]),
        pb.ModelInferResponse.InferOutputTensor(name="mask", datatype="BOOL", shape=[1000, 300])],
        raw_output_contents=[big.tobytes(), mask.tobytes()])
    assert pb.ModelInferResponse.FromString(out) == expected


@pytest.mark.parametrize("req_id", ["", "r-ü", ""])  # the second "" answers from the kept head of the first
def test_a_raw_answer_of_a_kind_seen_before_reads_as_protobuf_would_write_it(req_id: str) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for arr, nonfinite in ((x, 0), (np.where(x > 4, np.inf, x), 3)):  # the kept head only for finite outputs
        out = encode_response("tiny", "1", req_id or None, {"y": arr}, [RequestedOutput("y", True)], raw=True)
        expected = pb.ModelInferResponse(model_name="tiny", model_version="1", id=req_id, outputs=[
            pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[2, 4])],
            raw_output_contents=[arr.tobytes()])
        if nonfinite:
            expected.outputs[0].parameters["nonfinite_values"].int64_param = nonfinite
        assert pb.ModelInferResponse.FromString(out) == expected


def test_tritonclient_with_two_large_inputs_and_outputs() -> None:
    reg = ModelRegistry()
    try:
        assert reg.apply(EndpointSpec("two", "1", blobs=[two_input_model()], threads=1)).ok
        with Fronts(InferenceServer(reg, max_body_bytes=8 << 20), grpc_port=0) as f:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{f.grpc_port}")
            rng = np.random.default_rng(1)
            for rows in (2, 20_000):  # 32 B and 312 KiB per input: parsed whole, and walked
                a = rng.standard_normal((rows, 4)).astype(np.float32)
                b = rng.standard_normal((rows, 4)).astype(np.float32)
                ins = [grpcclient.InferInput("a", [rows, 4], "FP32"), grpcclient.InferInput("b", [rows, 4], "FP32")]
                ins[0].set_data_from_numpy(a)
                ins[1].set_data_from_numpy(b)
                res = c.infer("two", ins, request_id="x")
                assert np.array_equal(res.as_numpy("sum"), a + b)
                assert np.array_equal(res.as_numpy("mask"), a > b)
                assert res.get_response().id == "x"
            c.close()
    finally:
        reg.close()


def test_the_budget_counts_inferences_and_their_bytes() -> None:
    """maxConnections inferences (whose message has arrived) and maxInflightBytes of them at once."""
    b = _Budget(100, calls=2)
    assert b.take(10) and b.take(10)
    assert not b.take(1)  # a third inference
    b.give(10)
    assert not b.take(91)  # 10 + 91 bytes
    assert b.take(90)
    b.give(90)
    b.give(10)
    assert (b.used, b.running) == (0, 0)
