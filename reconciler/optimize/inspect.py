"""What numeric precision a model file actually has, read from the file (for ``validate`` and the tests).

- ONNX: quantization operators (``QuantizeLinear``/``DequantizeLinear``, ``MatMulInteger``, ``QLinear*``, …)
  → ``int8``; otherwise float16/bfloat16 weights → ``fp16``/``bf16``; otherwise ``fp32``.
- OpenVINO IR (the ``.xml``): ``FakeQuantize`` layers or 8/4-bit integer constants → ``int8``; otherwise
  ``f16``/``bf16`` constants → ``fp16``/``bf16``; otherwise ``fp32``.

Reading ONNX needs the ``onnx`` package (extra ``modelfleet[optimize]``); the IR is plain XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from reconciler.core.errors import UserError

MAX_XML_BYTES = 64 << 20
MAX_ONNX_BYTES = 2 << 30
_ONNX_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
})
_IR_INT_TYPES = frozenset({"i8", "u8", "i4", "u4"})


def onnx_precision(data: bytes) -> str:
    try:
        import onnx
    except ImportError:
        raise UserError("reading ONNX files needs the onnx package: pip install 'modelfleet[optimize]'") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UserError(f"not an ONNX model: {exc}") from None
    graphs = [model.graph]
    ops: set[str] = set()
    dtypes: set[int] = set()
    while graphs:
        g = graphs.pop()
        for node in g.node:
            ops.add(node.op_type)
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
        dtypes.update(i.data_type for i in g.initializer)
    if ops & _ONNX_QUANT_OPS:
        return "int8"
    if onnx.TensorProto.FLOAT16 in dtypes:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in dtypes:
        return "bf16"
    return "fp32"


def ir_precision(xml_text: str) -> str:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise UserError(f"not an OpenVINO IR .xml file: {exc}") from None
    const_types: set[str] = set()
    for layer in root.iter("layer"):
        kind = layer.get("type", "")
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Const":
            data = layer.find("data")
            if data is not None and data.get("element_type"):
                const_types.add(data.get("element_type", ""))
    if const_types & _IR_INT_TYPES:
        return "int8"
    if "f16" in const_types:
        return "fp16"
    if "bf16" in const_types:
        return "bf16"
    return "fp32"


def file_precision(path: Path) -> str:
    """Precision of a model file (``.onnx`` or IR ``.xml``); raises :class:`UserError` when unreadable."""
    path = Path(path)
    limit = MAX_XML_BYTES if path.suffix.lower() == ".xml" else MAX_ONNX_BYTES
    try:
        if path.stat().st_size > limit:
            raise UserError(f"{path}: larger than {limit >> 20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    if path.suffix.lower() == ".xml":
        return ir_precision(data.decode("utf-8", errors="replace"))
    return onnx_precision(data)
