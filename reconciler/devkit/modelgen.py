"""Deterministic tiny models for tests, demos and benchmarks, built with the ``onnx`` helper API.

Nothing is downloaded: every model is generated from a seed, so the same call gives the same bytes on every
machine. ``make_probe`` runs a model once in ONNX Runtime and returns the golden probe target (KServe v2 JSON
tensors) that the health check compares a freshly loaded version against. ``to_openvino_ir`` converts an ONNX
model to OpenVINO IR (``.xml`` + ``.bin``) for the OpenVINO variant of the same model.

Typical use::

    v1 = matmul_model(seed=1)                 # 16 -> 4 MatMul + bias, input "input", output "output"
    v2 = matmul_model(seed=1, bias=1.0)       # same weights, outputs shifted by 1: a visible new version
    bad = matmul_model(seed=1, nan=True)      # loads fine, every output is NaN: fails the health check
    probe = make_probe(v1)                    # {"inputs": [...], "outputs": [...]}
    cnn, mlp = small_cnn(), tabular_mlp()     # a classifier and a regressor for `modelfleet optimize`
    data = make_sample(cnn, 256, labels=True) # {"image": [256,3,32,32], "labels": [256]}: its .npz layout
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reconciler.serving.runtimes.telemetry import import_onnxruntime, import_openvino

# Kept low so older runtimes on devices load the generated models too.
OPSET = 17
IR_VERSION = 8

# numpy dtype -> KServe v2 datatype (the subset ONNX tensors map to).
_NP_TO_V2: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.object_): "BYTES",
}
_V2_TO_ONNX: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _finish(graph: onnx.GraphProto, producer: str) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def matmul_model(
    in_dim: int = 16, out_dim: int = 4, *, seed: int = 0, bias: float = 0.0, nan: bool = False,
    noise: float = 0.0, noise_seed: int = 1001,
) -> bytes:
    """``output = input @ W + b`` with ``input`` FP32 ``[-1, in_dim]`` and ``output`` FP32 ``[-1, out_dim]``.

    ``W`` is drawn from ``seed``; ``b`` is ``bias`` everywhere, so two versions differing only in ``bias`` give
    outputs differing by exactly ``bias``. ``nan=True`` makes ``b`` NaN: the model loads and runs but every
    output is NaN (a health check with ``requireFinite`` rejects it). ``noise`` adds ``noise × N(0, 1)`` (drawn
    from ``noise_seed``) to ``W``: "the same model retrained" — with ``in_dim=16, out_dim=4`` and standard normal
    inputs, noise 1e-3 changes the arg-max of ~0.3 % of the rows, 0.08 of ~20 % (shadow evaluation's tests).
    """
    if in_dim < 1 or out_dim < 1:
        raise ValueError("in_dim and out_dim must be positive")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_dim, out_dim)).astype(np.float32) / np.float32(np.sqrt(in_dim))
    if noise:
        w = w + (np.random.default_rng(noise_seed).standard_normal((in_dim, out_dim)) * noise).astype(np.float32)
    b = np.full((out_dim,), np.nan if nan else bias, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["output"]),
        ],
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, in_dim])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, out_dim])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _finish(graph, "modelfleet.modelgen.matmul")


def small_cnn(*, seed: int = 0) -> bytes:
    """A small image classifier (~4.3 MB): ``image`` FP32 ``[-1, 3, 32, 32]`` -> ``logits`` FP32 ``[-1, 10]``.

    Conv(3→16)+ReLU+MaxPool, Conv(16→32)+ReLU+MaxPool, Flatten, Gemm(2048→512)+ReLU, Gemm(512→10).
    """
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(he((16, 3, 3, 3), 27), "c1w"),
        numpy_helper.from_array(np.zeros(16, np.float32), "c1b"),
        numpy_helper.from_array(he((32, 16, 3, 3), 144), "c2w"),
        numpy_helper.from_array(np.zeros(32, np.float32), "c2b"),
        numpy_helper.from_array(he((2048, 512), 2048), "f1w"),
        numpy_helper.from_array(np.zeros(512, np.float32), "f1b"),
        numpy_helper.from_array(he((512, 10), 512), "f2w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "f2b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "f1w", "f1b"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["r3"]),
        helper.make_node("Gemm", ["r3", "f2w", "f2b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 10])],
        initializer=inits,
    )
    return _finish(graph, "modelfleet.modelgen.small_cnn")


def mid_cnn(*, seed: int = 0, width: int = 48) -> bytes:
    """A mid-size image classifier (~3.5 MB at ``width=48``) whose time goes into convolutions, not one Gemm.

    ``image`` FP32 ``[-1, 3, 64, 64]`` -> ``logits`` FP32 ``[-1, 10]``: four Conv+ReLU blocks (``width``,
    ``2·width``, ``4·width``, ``8·width`` channels, a 2×2 MaxPool after each), GlobalAveragePool, Flatten,
    Gemm(8·width→10). For benchmarks that want a convolution-bound model.
    """
    return _conv_classifier("mid_cnn", seed, [3, width, 2 * width, 4 * width, 8 * width], 64, 10, pool=True)


def camera_cnn(*, seed: int = 0, width: int = 16, classes: int = 1000) -> bytes:
    """A camera-sized image classifier (~2.6 MB at ``width=16``): ``image`` FP32 ``[-1, 3, 224, 224]`` ->
    ``logits`` FP32 ``[-1, classes]``.

    A stride-2 Conv stem (``width`` channels, 112×112) and four stride-2 Conv+ReLU stages doubling the channels
    (to ``16·width`` at 7×7), GlobalAveragePool, Gemm to ``classes``: ~60 M multiply-adds per image at
    ``width=16``, a 602 KB input like a real camera pipeline's, and a dynamic batch dimension.
    """
    chans = [3, width, 2 * width, 4 * width, 8 * width, 16 * width]
    return _conv_classifier("camera_cnn", seed, chans, 224, classes, pool=False)


def _conv_classifier(name: str, seed: int, chans: list[int], size: int, classes: int, *, pool: bool) -> bytes:
    """3×3 Conv+ReLU stages over ``chans`` (each halving the resolution: a 2×2 MaxPool after it when ``pool``,
    else stride 2), GlobalAveragePool, Flatten, Gemm to ``classes``; ``image`` ``[-1, 3, size, size]``."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "image"
    for i in range(len(chans) - 1):
        cin, cout = chans[i], chans[i + 1]
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"c{i}w"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32), f"c{i}b")]
        stride = {} if pool else {"strides": [2, 2]}
        nodes += [
            helper.make_node("Conv", [x, f"c{i}w", f"c{i}b"], [f"c{i}"], pads=[1, 1, 1, 1], **stride),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
        if pool:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    fw = (rng.standard_normal((chans[-1], classes)) * np.sqrt(2.0 / chans[-1])).astype(np.float32)
    inits += [numpy_helper.from_array(fw, "fw"), numpy_helper.from_array(np.zeros(classes, np.float32), "fb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, classes])],
        initializer=inits,
    )
    return _finish(graph, f"modelfleet.modelgen.{name}")


def mobilenet_v2(*, seed: int = 0, width: float = 1.0, classes: int = 1000, size: int = 224) -> bytes:
    """A MobileNetV2-class camera classifier: ``image`` FP32 ``[-1, 3, size, size]`` -> ``logits`` FP32
    ``[-1, classes]``, the layer plan of Sandler et al. 2018 with batch norm folded into the convolutions.

    A stride-2 3×3 Conv stem, 17 inverted-residual blocks (1×1 expand + ReLU6, 3×3 depthwise + ReLU6, linear 1×1
    project, a residual Add where shapes allow), a 1×1 Conv to 1280 channels, GlobalAveragePool, Gemm. At
    ``width=1.0`` and 224×224: 3.5 M parameters (14 MB FP32) and 0.30 G multiply-adds per image
    (:func:`model_cost`), what a real camera model of that size computes, unlike :func:`camera_cnn`.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.float32(0.0), "zero"),
                                     numpy_helper.from_array(np.float32(6.0), "six")]
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, group: int, relu6: bool) -> str:
        i = len(nodes)
        fan_in = cin // group * k * k
        gain = 2.0 if relu6 else 1.0  # He for ReLU6 layers, unit variance for the linear projections
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(gain / fan_in)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"),
                      numpy_helper.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32), f"b{i}")])
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4, group=group))
        if not relu6:
            return f"c{i}"
        nodes.append(helper.make_node("Clip", [f"c{i}", "zero", "six"], [f"r{i}"]))
        return f"r{i}"

    def channels(c: float) -> int:  # the reference implementation's rounding to multiples of 8
        rounded = max(8, int(c + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * c else rounded

    cin = channels(32 * width)
    x = conv("image", 3, cin, 3, 2, 1, True)
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        cout = channels(c * width)
        for j in range(n):
            stride, hidden = (s if j == 0 else 1), cin * t
            h = conv(x, cin, hidden, 1, 1, 1, True) if t != 1 else x
            h = conv(h, hidden, hidden, 3, stride, hidden, True)
            h = conv(h, hidden, cout, 1, 1, 1, False)
            if stride == 1 and cin == cout:
                nodes.append(helper.make_node("Add", [x, h], [f"a{len(nodes)}"]))
                h = nodes[-1].output[0]
            x, cin = h, cout
    last = channels(1280 * width) if width > 1.0 else 1280
    x = conv(x, cin, last, 1, 1, 1, True)
    fw = (rng.standard_normal((last, classes)) * np.sqrt(1.0 / last)).astype(np.float32)
    inits += [numpy_helper.from_array(fw, "fw"), numpy_helper.from_array(np.zeros(classes, np.float32), "fb")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"])]
    graph = helper.make_graph(
        nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, classes])],
        initializer=inits,
    )
    return _finish(graph, "modelfleet.modelgen.mobilenet_v2")


def image_mean(*, size: int = 224) -> bytes:
    """``image`` FP32 ``[-1, 3, size, size]`` -> ``mean`` FP32 ``[-1, 3]``, the per-channel mean: a model that
    costs next to nothing, so what a server spends per request on it is what a camera image costs in HTTP."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0)],
        "image_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, size, size])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [-1, 3])],
    )
    return _finish(graph, "modelfleet.modelgen.image_mean")


def model_cost(onnx_bytes: bytes) -> dict[str, int]:
    """``{"params", "macs"}``: the weights a model holds and the multiply-adds of its Conv, Gemm and MatMul nodes
    for ONE sample (variable dimensions taken as 1), from ONNX shape inference. Elementwise ops are not counted
    (they are a few percent of a CNN's work), as in the figures papers quote."""
    model = onnx.load_from_string(onnx_bytes)
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update(weights)
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, out = weights[node.input[1]], shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))  # each output element: Cin/group × kH × kW
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            trans_b = any(at.name == "transB" and at.i for at in node.attribute)
            macs += int(np.prod(a)) * (b[0] if trans_b else b[-1])
    return {"params": sum(int(np.prod(d)) for d in weights.values()), "macs": macs}


def lookup_model(rows: int = 10, width: int = 2) -> bytes:
    """``output = table[index]``: INT64 ``index`` ``[-1]`` picks rows of a fixed FP32 ``[rows, width]`` table
    (row ``i`` holds ``i`` everywhere) -> ``output`` FP32 ``[-1, width]``. An index outside ``0..rows-1`` makes
    the runtime fail for that request: a failure caused by the data, not by the model or the server."""
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], width, axis=1)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["output"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, [-1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, width])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    return _finish(graph, "modelfleet.modelgen.lookup")


def tabular_mlp(in_features: int = 24, hidden: tuple[int, ...] = (128, 64), out_features: int = 3, *,
                seed: int = 0) -> bytes:
    """A tabular regressor: ``features`` FP32 ``[-1, in_features]`` -> ``scores`` FP32 ``[-1, out_features]``.

    MatMul+Add+ReLU per hidden layer, then a linear MatMul+Add output (no activation): a model judged by its
    absolute/relative output error rather than by a top-1 class.
    """
    rng = np.random.default_rng(seed)
    dims = [in_features, *hidden, out_features]
    inits, nodes = [], []
    x = "features"
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) * np.sqrt(2.0 / dims[i])).astype(np.float32)
        b = (rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(dims) - 2
        out = "scores" if last else f"h{i}"
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [out if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        x = out
    graph = helper.make_graph(
        nodes,
        "tabular_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [-1, in_features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [-1, out_features])],
        initializer=inits,
    )
    return _finish(graph, "modelfleet.modelgen.tabular_mlp")


def make_sample(onnx_bytes: bytes, n: int, *, seed: int = 0, labels: bool = False,
                label_noise: float = 0.1) -> dict[str, np.ndarray]:
    """An ``n``-sample calibration/evaluation set in the ``.npz`` layout ``modelfleet optimize`` reads.

    One array per model input, keyed by input name, batch first (standard normal values). ``labels=True``
    adds ``labels`` INT64 ``[n]``: the fp32 model's top-1 class, with ``label_noise`` of them moved to another
    class (from ``seed``) so that the reference accuracy is realistic rather than 100 %.
    """
    import onnxruntime as ort

    model = onnx.load_from_string(onnx_bytes)
    init_names = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name not in init_names:
            out[vi.name] = _probe_input(vi, rng, n)
    if labels:
        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        logits = np.asarray(sess.run(None, dict(out))[0])
        classes = logits.shape[1]
        y = logits.argmax(axis=1).astype(np.int64)
        flip = rng.random(n) < label_noise
        y[flip] = (y[flip] + rng.integers(1, classes, int(flip.sum()))) % classes
        out["labels"] = y
    return out


def identity_model(datatype: str, shape: list[int] | None = None) -> bytes:
    """``output = Identity(input)`` for one KServe v2 ``datatype`` (any of the 13): exercises every codec path."""
    if datatype not in _V2_TO_ONNX:
        raise ValueError(f"unknown datatype {datatype!r}")
    dims = shape if shape is not None else [-1, -1]
    elem = _V2_TO_ONNX[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("input", elem, dims)],
        [helper.make_tensor_value_info("output", elem, dims)],
    )
    return _finish(graph, "modelfleet.modelgen.identity")


def two_input_model() -> bytes:
    """``sum = a + b`` and ``mask = a > b`` from two FP32 ``[-1, 4]`` inputs ``a`` and ``b``.

    Outputs ``sum`` FP32 ``[-1, 4]`` and ``mask`` BOOL ``[-1, 4]`` (``a > b``): several inputs and outputs of
    different datatypes in one model.
    """
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Greater", ["a", "b"], ["mask"]),
        ],
        "two_input",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [-1, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [-1, 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [-1, 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [-1, 4]),
        ],
    )
    return _finish(graph, "modelfleet.modelgen.two_input")


def to_openvino_ir(onnx_bytes: bytes, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Convert an ONNX model to OpenVINO IR ``out_dir/name.xml`` + ``out_dir/name.bin`` (FP32 weights kept)."""
    ov = import_openvino()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelgen-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(onnx_bytes)
        model = ov.convert_model(str(src))
    xml, bin_ = out_dir / f"{name}.xml", out_dir / f"{name}.bin"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml, bin_


def _probe_input(vi: onnx.ValueInfoProto, rng: np.random.Generator, batch: int) -> np.ndarray:
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in t.shape.dim]
    if t.elem_type == TensorProto.STRING:
        # ONNX Runtime takes and returns string tensors as str objects.
        return np.array([f"s{i}" for i in range(int(np.prod(dims)))], dtype=object).reshape(dims)
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
    if dtype == np.bool_:
        return rng.integers(0, 2, dims).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, dims).astype(dtype)
    return rng.standard_normal(dims).astype(dtype)


def _v2_json_tensor(name: str, arr: np.ndarray) -> dict[str, Any]:
    datatype = _NP_TO_V2[arr.dtype]
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        data: list[Any] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def make_probe(onnx_bytes: bytes, *, seed: int = 0, batch: int = 2) -> dict[str, Any]:
    """Golden probe target for an ONNX model: random inputs from ``seed`` and the outputs ONNX Runtime gives.

    Variable dimensions become ``batch``. The result is the JSON probe format of ``Model.spec.versions[].probe``:
    ``{"inputs": [{"name","datatype","shape","data"}], "outputs": [...]}`` with flat ``data``.
    """
    ort = import_onnxruntime()

    model = onnx.load_from_string(onnx_bytes)
    init_names = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {vi.name: _probe_input(vi, rng, batch) for vi in model.graph.input if vi.name not in init_names}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    return {
        "inputs": [_v2_json_tensor(n, a) for n, a in feeds.items()],
        "outputs": [_v2_json_tensor(n, np.asarray(a)) for n, a in zip(names, outs, strict=True)],
    }
