"""Real published models and real data for the optimize tests: nothing is downloaded, everything comes from wheels.

- The PaddleOCR text-direction classifier and text detector that ``rapidocr-onnxruntime`` ships inside its
  wheel (found by path: importing the package would import OpenCV, which the tests do not need).
- Text lines rendered with Pillow's bundled font: the classifier's real task (upright vs upside down, labelled)
  and the detector's real input.
- scikit-learn's bundled datasets with classifiers converted by skl2onnx, with and without ZipMap.
"""

from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_infer.onnx"  # input x [-1, 3, 48, 192], output softmax [-1, 2]: 0° / 180°
DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"  # input x [-1, 3, -1, -1], output a text probability map [-1, 1, H, W]


def rapidocr_model(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.origin, "rapidocr-onnxruntime is in the test extra"
    path = Path(spec.origin).parent / "models" / name
    assert path.is_file(), path
    return path


def _text_line(rng: np.random.Generator, height: int) -> np.ndarray:
    """An RGB text line (dark text on a light background), as the OCR pipeline crops it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(height * rng.uniform(0.55, 0.75)))
    words = ["".join(rng.choice(list(string.ascii_letters + string.digits), size=int(rng.integers(2, 8))))
             for _ in range(int(rng.integers(2, 5)))]
    text = " ".join(words)
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    bg = tuple(int(v) for v in rng.integers(190, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 70, size=3))
    img = Image.new("RGB", (right - left + 8, height), bg)
    ImageDraw.Draw(img).text((4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=fg)
    return np.asarray(img)


def cls_sample(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` text lines, every other one upside down, preprocessed as rapidocr's TextClassifier does."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, 48, 192), np.float32)
    labels = np.arange(n, dtype=np.int64) % 2  # label_list ['0', '180']
    for i in range(n):
        line = _text_line(rng, 48)
        if labels[i]:
            line = line[::-1, ::-1]
        w = min(192, int(np.ceil(48 * line.shape[1] / line.shape[0])))
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(line)).resize((w, 48)), np.float32)
        x[i, :, :, :w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return {"x": x, "labels": labels}


def det_sample(n: int, seed: int = 0, height: int = 64, width: int = 256) -> dict[str, np.ndarray]:
    """``n`` pages of two text lines each, normalized as rapidocr's detector does (mean = std = 0.5)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, height, width), np.float32)
    for i in range(n):
        page = np.full((height, width, 3), 255, np.uint8)
        for row in range(2):
            line = _text_line(rng, height // 2)[:, :width]
            page[row * height // 2:(row + 1) * height // 2, :line.shape[1]] = line
        x[i] = (page.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return {"x": x}


@dataclass
class Tabular:
    onnx: bytes
    clf: Any
    x: np.ndarray  # float32 features, calibration part first
    y: np.ndarray  # the dataset's labels


def sklearn_classifier(dataset: str, *, zipmap: bool, string_labels: bool = False, seed: int = 0) -> Tabular:
    """A scikit-learn classifier trained on part of a bundled dataset and converted with skl2onnx.

    skl2onnx lays every classifier out as output 0 = the label [N], output 1 = the probabilities ([N, C], or a
    ZipMap sequence of {class: probability} maps unless ``zipmap=False``).
    """
    from skl2onnx import to_onnx
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = getattr(datasets, f"load_{dataset}")()
    x, y = data.data.astype(np.float32), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    if string_labels:
        y = np.asarray(data.target_names)[y]
    train = len(y) // 2
    if dataset == "digits":
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed)
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x[:train], y[:train])
    options = None if zipmap else {id(clf): {"zipmap": False}}
    model = to_onnx(clf, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    return Tabular(model.SerializeToString(), clf, x[train:], y[train:])
