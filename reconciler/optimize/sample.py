"""The calibration/evaluation sample: a NumPy ``.npz`` file, read with limits and checked against the model.

Layout (shared with ``modelfleet baseline``): one array per model input, keyed by the input's name, samples
along the first axis, all with the same number of samples; optionally ``labels`` (one class per sample) for
classifiers (the class index of the scores, or the value the model's label output gives: an integer or a
string). Any other key is an error, not ignored. Pickled object arrays are refused.

The first ``calibration`` samples calibrate the static quantizers; the rest evaluate every variant against
the fp32 reference, so the accuracy figures never come from the data the quantizer saw.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconciler.core.errors import UserError
from reconciler.serving.v2.codec import V2_TO_NP, TensorMeta

LABELS = "labels"
MAX_MEMBERS = 64
DEFAULT_MAX_BYTES = 2 << 30  # uncompressed; a sample is for calibration and evaluation, not training
DEFAULT_CALIBRATION = 300


@dataclass(frozen=True)
class Sample:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    calibration: int  # the first `calibration` samples calibrate, the rest evaluate

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def calib(self) -> dict[str, np.ndarray]:
        return {k: v[: self.calibration] for k, v in self.inputs.items()}

    def evaluation(self) -> dict[str, np.ndarray]:
        return {k: v[self.calibration:] for k, v in self.inputs.items()}

    def eval_labels(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels[self.calibration:]


def split_sizes(n: int, calibration: int | None) -> int:
    """How many of ``n`` samples calibrate: ``calibration``, or half (at most 300); at least 1 on each side."""
    if n < 2:
        raise UserError(f"the sample has {n} sample(s); at least 2 are needed (calibration and evaluation)")
    c = min(DEFAULT_CALIBRATION, n // 2) if calibration is None else calibration
    if not 1 <= c <= n - 1:
        raise UserError(f"--calibration {c}: must leave at least one of the {n} samples for evaluation")
    return c


def load_sample(path: Path, inputs: Sequence[TensorMeta], *, calibration: int | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> Sample:
    """Read and check ``path`` against the model's ``inputs`` (raises :class:`UserError` naming the problem)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise UserError(f"{path}: {len(members)} arrays; at most {MAX_MEMBERS} are read")
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise UserError(f"{path}: {total / 2**20:.0f} MiB of arrays uncompressed; the limit is "
                                f"{max_bytes / 2**20:.0f} MiB")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a .npz file (numpy.savez)") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except ValueError as exc:
        raise UserError(f"{path}: {exc} (object arrays are not accepted)") from None
    return check_sample(arrays, inputs, str(path), calibration)


def check_sample(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorMeta], where: str,
                 calibration: int | None) -> Sample:
    expected = {m.name: m for m in inputs}
    unknown = sorted(set(arrays) - set(expected) - {LABELS})
    if unknown:
        raise UserError(f"{where}: array(s) {', '.join(unknown)} are not model inputs "
                        f"(expected {', '.join(expected)} and optionally {LABELS})")
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise UserError(f"{where}: no array for model input(s) {', '.join(missing)}")
    feeds: dict[str, np.ndarray] = {}
    counts = set()
    for name, meta in expected.items():
        arr = arrays[name]
        want = np.dtype(V2_TO_NP[meta.datatype]) if meta.datatype in V2_TO_NP else None
        if want is None or arr.dtype != want:
            raise UserError(f"{where}: {name} is {arr.dtype}, the model takes {meta.datatype}")
        if arr.ndim != len(meta.shape) or any(d >= 0 and d != a for d, a in zip(meta.shape[1:], arr.shape[1:], strict=True)):
            raise UserError(f"{where}: {name} has shape {list(arr.shape)}, the model takes {meta.shape} "
                            "(samples along the first axis)")
        counts.add(arr.shape[0])
        feeds[name] = np.ascontiguousarray(arr)
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.dtype.kind not in "iuU" or labels.ndim != 1:
            raise UserError(f"{where}: {LABELS} must be a 1-D integer or string array (one class per sample)")
        counts.add(labels.shape[0])
    if len(counts) != 1:
        raise UserError(f"{where}: arrays disagree on the number of samples ({sorted(counts)})")
    n = counts.pop()
    return Sample(feeds, labels, split_sizes(n, calibration))
