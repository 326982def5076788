"""Which output of a classifier carries its answer. Pure.

Classifiers lay their outputs out in different ways. A CNN has one float output of class scores ``[N, C]``.
Every scikit-learn classifier converted by skl2onnx has the *label* first (``[N]``, integer or string) and the
probabilities second (``[N, C]``, or a ZipMap sequence of ``{class: probability}`` maps, which ``optimize``
reads as the ``[N, C]`` tensor it was made from). Taking the argmax of a label tensor would call every answer
class 0; so the roles are detected from the declared types and shapes:

- **label**: an integer or string (``BYTES``) tensor of shape ``[N]`` or ``[N, 1]`` — the model's own answer;
- **scores**: a float tensor with more than one value per sample (``[N, C]``) — the answer is its argmax.

When a model has a label output, it is the answer (the scores are then compared only as numbers); otherwise
the first scores output is. ``--label-output`` / ``--score-output`` name them explicitly; naming either turns
detection off for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reconciler.core.errors import UserError
from reconciler.serving.v2.codec import TensorMeta

LABEL_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BYTES"})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


@dataclass(frozen=True)
class Roles:
    label: str | None = None
    scores: str | None = None

    @property
    def answer(self) -> str | None:
        return self.label or self.scores


def is_label(m: TensorMeta) -> bool:
    s = m.shape
    return m.datatype in LABEL_TYPES and (len(s) == 1 or (len(s) == 2 and s[1] == 1))


def is_scores(m: TensorMeta) -> bool:
    return m.datatype in FLOAT_TYPES and len(m.shape) >= 2 and not all(d == 1 for d in m.shape[1:])


def _shape(m: TensorMeta) -> str:
    return "[" + ", ".join("N" if i == 0 and d < 0 else ("?" if d < 0 else str(d))
                           for i, d in enumerate(m.shape)) + "]"


def describe(m: TensorMeta) -> str:
    return f"{m.name} ({m.datatype} {_shape(m)})"


def detect(outputs: Sequence[TensorMeta], *, label: str | None = None, scores: str | None = None) -> Roles:
    """The label and scores outputs: the named ones, else detected from types and shapes."""
    by_name = {m.name: m for m in outputs}
    have = ", ".join(describe(m) for m in outputs)
    for opt, name, ok, want in (("--label-output", label, is_label, "an integer or string tensor [N] or [N, 1]"),
                                ("--score-output", scores, is_scores, "a float tensor [N, C]")):
        if name is None:
            continue
        if name not in by_name:
            raise UserError(f"{opt} {name}: the model has no such output (it has {have})", exit_code=2)
        if not ok(by_name[name]):
            raise UserError(f"{opt} {name}: {describe(by_name[name])} is not {want}", exit_code=2)
    if label is not None or scores is not None:
        return Roles(label, scores)
    # One float per sample ([N] or [N, 1], e.g. a sigmoid) is neither: its argmax is always 0, and whether 0.5
    # or 0 is the threshold the file does not say.
    found_label = next((m.name for m in outputs if is_label(m)), None)
    found_scores = next((m.name for m in outputs if is_scores(m)), None)
    return Roles(found_label, found_scores)


def roles_of_arrays(outputs: Mapping[str, np.ndarray]) -> Roles:
    """:func:`detect` on arrays (their dtypes and shapes) when no declared types are at hand."""
    metas = []
    for name, arr in outputs.items():
        a = np.asarray(arr)
        dt = "BYTES" if a.dtype.kind in "OUS" else ("FP32" if a.dtype.kind == "f" else
                                                    ("INT64" if a.dtype.kind in "iu" else "BOOL"))
        metas.append(TensorMeta(name, dt, (-1, *a.shape[1:])))
    return detect(metas)


def answers(roles: Roles, outputs: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """The class each of the ``n`` samples was given: the label output, else the argmax of the scores."""
    if roles.label is not None:
        arr = np.asarray(outputs[roles.label]).reshape(n)
        if arr.dtype.kind in "OS":
            return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr], dtype=str)
        return arr
    if roles.scores is None:
        raise ValueError("the model has no label or scores output")
    return np.asarray(outputs[roles.scores]).reshape(n, -1).argmax(axis=1)


def same_class(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality of two class arrays, numbers and strings compared as text when their kinds differ."""
    a, b = np.asarray(a), np.asarray(b)
    if (a.dtype.kind in "US") != (b.dtype.kind in "US"):
        return np.asarray(a.astype(str) == b.astype(str))
    return np.asarray(a == b)
