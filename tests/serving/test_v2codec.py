"""KServe v2 tensor codec: JSON and binary decoding, validation and response encoding (pure, no I/O)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from reconciler.serving.v2.codec import (
    V2_TO_NP,
    CodecError,
    TensorMeta,
    decode_request,
    encode_response,
    select_outputs,
    validate_inputs,
)

META = [TensorMeta("x", "FP32", (-1, 4), min=-10.0, max=10.0)]


def body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def test_flat_and_nested_json_give_the_same_array() -> None:
    flat = decode_request(body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}))
    nested = decode_request(
        body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]})
    )
    assert flat.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(flat.inputs["x"], nested.inputs["x"])
    assert flat.inputs["x"].shape == (2, 2)


@pytest.mark.parametrize("datatype", sorted(V2_TO_NP))
def test_every_datatype_round_trips_json_and_binary(datatype: str) -> None:
    if datatype == "BYTES":
        arr = np.array([b"ab", b"", "é".encode()], dtype=object).reshape(1, 3)
        jdata: list = ["ab", "", "é"]
    elif datatype == "BOOL":
        arr = np.array([[True, False, True]])
        jdata = [True, False, True]
    else:
        arr = np.array([[1, 2, 3]], dtype=V2_TO_NP[datatype])
        jdata = [1, 2, 3]
    req = decode_request(body({"name": "x", "datatype": datatype, "shape": [1, 3], "data": jdata}))
    np.testing.assert_array_equal(req.inputs["x"], arr)
    # Binary request built the way tritonclient does it.
    out, hlen = encode_response("m", "1", None, {"x": arr}, select_outputs(req, ["x"])[:0] + [_bin("x")])
    header = json.loads(out[:hlen])
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    assert header["outputs"][0]["datatype"] == datatype
    hdr = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": datatype, "shape": [1, 3], "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    back = decode_request(hdr + out[hlen:], len(hdr))
    np.testing.assert_array_equal(back.inputs["x"], arr)
    # JSON output.
    out, hlen = encode_response("m", "1", "id-7", {"x": arr}, select_outputs(req, ["x"]))
    doc = json.loads(out)
    assert hlen is None and doc["id"] == "id-7" and doc["outputs"][0]["data"] == jdata


def _bin(name: str):  # noqa: ANN202
    from reconciler.serving.v2.codec import RequestedOutput

    return RequestedOutput(name, True)


@pytest.mark.parametrize(
    ("doc", "header_len", "message"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"[]", None, "must be a JSON object"),
        (body(), None, "'inputs' must be a non-empty array"),
        (body({"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}), None, "unknown datatype 'FP33'"),
        (
            body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}),
            None,
            "needs 4 elements",
        ),
        (
            body({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}),
            None,
            "FP32 data must be numbers",
        ),
        (body({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}), None, "must be integers"),
        (
            body({"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}),
            None,
            "out of range for UINT8",
        ),
        (body({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}), None, "true/false"),
        (body({"name": "x", "datatype": "FP32", "shape": [-1], "data": []}), None, "non-negative integers"),
        (
            body({"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}),
            None,
            "needs 2 elements",
        ),
        (body({"name": "x", "datatype": "FP32", "shape": [1]}), None, "needs 'data'"),
        (
            body({"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}})
            + b"\0" * 8,
            None,
            "malformed JSON",
        ),
    ],
)
def test_bad_requests_raise_precise_errors(doc: bytes, header_len: int | None, message: str) -> None:
    with pytest.raises(CodecError, match=re.escape(message)):
        decode_request(doc, header_len)


def test_truncated_and_extra_binary_data_are_rejected() -> None:
    hdr = body({"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}})
    with pytest.raises(CodecError, match="truncated binary data"):
        decode_request(hdr + b"\0" * 8, len(hdr))
    with pytest.raises(CodecError, match="8 bytes of binary data not claimed"):
        decode_request(hdr + b"\0" * 24, len(hdr))
    with pytest.raises(CodecError, match="larger than the body"):
        decode_request(hdr, len(hdr) + 1)
    bad_size = body({"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 12}})
    with pytest.raises(CodecError, match="needs 16 bytes"):
        decode_request(bad_size + b"\0" * 12, len(bad_size))
    bytes_hdr = body({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}})
    with pytest.raises(CodecError, match="truncated BYTES element"):
        decode_request(bytes_hdr + struct.pack("<I", 9) + b"ab", len(bytes_hdr))


def test_validation_against_model_metadata() -> None:
    def req(**t: object):  # noqa: ANN202
        base = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}
        return decode_request(body({**base, **t}))

    assert validate_inputs(req(), META)["x"].shape == (1, 4)
    with pytest.raises(CodecError, match="datatype FP64 does not match the model's FP32"):
        validate_inputs(req(datatype="FP64"), META)
    with pytest.raises(CodecError, match=r"shape \[2, 2\] does not match the model's \[-1, 4\]"):
        validate_inputs(req(shape=[2, 2]), META)
    with pytest.raises(CodecError, match="unknown input 'y'"):
        validate_inputs(req(name="y"), META)
    with pytest.raises(CodecError, match="above the declared maximum 10"):
        validate_inputs(req(data=[0, 1, 2, 11]), META)
    with pytest.raises(CodecError, match="below the declared minimum -10"):
        validate_inputs(req(data=[0, 1, 2, -11]), META)
    with pytest.raises(CodecError, match="missing input 'x'"):
        validate_inputs(req(name="y"), [TensorMeta("y", "FP32", (-1, 4)), *META])
    with pytest.raises(CodecError, match="unknown output 'nope'"):
        select_outputs(
            decode_request(
                body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, outputs=[{"name": "nope"}])
            ),
            ["out"],
        )


def test_binary_output_follows_request_parameters() -> None:
    r = decode_request(
        body(
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
            parameters={"binary_data_output": True},
        )
    )
    assert [o.binary for o in select_outputs(r, ["a", "b"])] == [True, True]
    r = decode_request(
        body(
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
            outputs=[{"name": "b", "parameters": {"binary_data": False}}],
        )
    )
    assert [(o.name, o.binary) for o in select_outputs(r, ["a", "b"])] == [("b", False)]
