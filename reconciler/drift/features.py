"""Which numbers of a tensor are monitored ("features"), and how a batch turns into them. Pure, vectorised.

A tensor's *layout* decides its features:

* ``tabular`` (``[N, F]``, F ≤ 64): one feature per column, ``name[i]``.
* ``channels`` (``[N, C, …]`` images/audio, or ``[N, H, W, C]`` when ``channelAxis`` is −1): per sample and
  channel the mean and standard deviation, ``name:c<i>:mean`` / ``name:c<i>:std``.
* ``signal`` (``[N, T]`` with T > 64, e.g. raw audio): per sample mean and std, ``name:mean`` / ``name:std``.
* ``classes`` (classifier scores ``[N, C]``): the predicted class (argmax), one categorical feature
  ``name:class``.
* ``labels`` (integer outputs): the value as a category, ``name:label``.
* ``scores`` (any other output): one numeric feature per column of ``[N, -1]``, at most 64, ``name[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("tabular", "channels", "signal", "classes", "labels", "scores")
MAX_COLUMNS = 64
MAX_CLASSES = 1000


@dataclass(frozen=True)
class TensorLayout:
    name: str
    role: str  # "input" | "output"
    layout: str
    channel_axis: int = 1
    columns: int = 0  # tabular/scores: monitored columns; classes/labels: categories

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "role": self.role, "layout": self.layout}
        if self.layout == "channels":
            d["channelAxis"] = self.channel_axis
        if self.columns:
            d["columns"] = self.columns
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TensorLayout:
        return cls(str(d["name"]), str(d["role"]), str(d["layout"]), int(d.get("channelAxis", 1)),
                   int(d.get("columns", 0)))


def guess_layout(name: str, role: str, sample: np.ndarray, forced: str | None = None) -> TensorLayout:
    """The layout of a tensor from a sample batch (``forced`` overrides the guess)."""
    a = np.asarray(sample)
    if a.ndim < 1:
        raise ValueError(f"{role} {name!r}: a batch needs a leading batch dimension, got a scalar")
    integer = a.dtype.kind in "iub"
    if forced is not None and forced not in LAYOUTS:
        raise ValueError(f"{role} {name!r}: unknown layout {forced!r} (one of {', '.join(LAYOUTS)})")
    layout = forced
    if layout is None:
        if role == "output":
            if integer:
                layout = "labels"
            elif a.ndim == 2 and 2 <= a.shape[1] <= MAX_CLASSES:
                layout = "classes"
            else:
                layout = "scores"
        elif a.ndim <= 2:
            layout = "tabular" if a.ndim == 1 or a.shape[1] <= MAX_COLUMNS else "signal"
        else:
            layout = "channels"
    if layout == "channels":
        if a.ndim < 3:
            raise ValueError(f"{role} {name!r}: layout 'channels' needs [N, C, …], got shape {list(a.shape)}")
        axis = -1 if a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4) else 1
        return TensorLayout(name, role, layout, axis, int(a.shape[axis]))
    if layout in ("tabular", "scores"):
        cols = 1 if a.ndim == 1 else int(np.prod(a.shape[1:]))
        if layout == "tabular" and cols > MAX_COLUMNS:
            raise ValueError(f"{role} {name!r}: {cols} columns; tabular monitoring takes at most {MAX_COLUMNS} "
                             "(use the 'signal' or 'channels' layout)")
        return TensorLayout(name, role, layout, 1, min(cols, MAX_COLUMNS))
    if layout == "classes":
        return TensorLayout(name, role, layout, 1, int(a.shape[-1]))
    if layout == "labels":
        top = int(np.max(a)) + 1 if a.size else 1
        return TensorLayout(name, role, layout, 1, min(max(top, 2), MAX_CLASSES))
    return TensorLayout(name, role, layout)


def feature_names(t: TensorLayout) -> list[str]:
    if t.layout in ("tabular", "scores"):
        return [f"{t.name}[{i}]" for i in range(t.columns)]
    if t.layout == "channels":
        return [f"{t.name}:c{c}:{s}" for c in range(t.columns) for s in ("mean", "std")]
    if t.layout == "signal":
        return [f"{t.name}:mean", f"{t.name}:std"]
    if t.layout == "classes":
        return [f"{t.name}:class"]
    return [f"{t.name}:label"]


def is_categorical(t: TensorLayout) -> bool:
    return t.layout in ("classes", "labels")


def extract(t: TensorLayout, batch: np.ndarray) -> list[np.ndarray]:
    """The tensor's features for a batch, in ``feature_names`` order: one array of N values each."""
    a = np.asarray(batch)
    n = a.shape[0] if a.ndim else 1
    if t.layout in ("tabular", "scores"):
        flat = a.reshape(n, -1)[:, : t.columns].astype(np.float64, copy=False)
        return [flat[:, i] for i in range(flat.shape[1])]
    if t.layout == "channels":
        ch = np.moveaxis(a, t.channel_axis, 1).reshape(n, a.shape[t.channel_axis], -1).astype(np.float64, copy=False)
        means, stds = ch.mean(axis=2), ch.std(axis=2)
        return [x for c in range(ch.shape[1]) for x in (means[:, c], stds[:, c])]
    if t.layout == "signal":
        flat = a.reshape(n, -1).astype(np.float64, copy=False)
        return [flat.mean(axis=1), flat.std(axis=1)]
    if t.layout == "classes":
        return [np.argmax(a.reshape(n, -1), axis=1)]
    return [a.reshape(n, -1)[:, 0].astype(np.int64)]


def extract_all(layouts: Sequence[TensorLayout], tensors: Mapping[str, np.ndarray]
                ) -> tuple[int, list[np.ndarray | None]] | None:
    """(rows, features of every layout) from one request's tensors. A tensor the request does not carry (an
    output the client did not ask for) gives ``None`` features; None overall when the batch sizes differ."""
    out: list[np.ndarray | None] = []
    n: int | None = None
    for t in layouts:
        a = tensors.get(t.name)
        if a is None:
            out.extend([None] * len(feature_names(t)))
            continue
        a = np.asarray(a)
        rows = a.shape[0] if a.ndim else 1
        if n is not None and rows != n:
            return None
        n = rows
        out.extend(extract(t, a))
    return (n or 0), out
