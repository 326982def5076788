"""The backend interface every runtime implements, and the factory that picks one.

A backend is loaded once from the model's bytes (``blobs``, e.g. decrypted in memory) or from its files in the
store (``files``), reports its inputs/outputs as KServe v2 :class:`~reconciler.v2codec.TensorMeta`, runs
``infer`` from any thread concurrently, and frees its memory on ``close``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..v2codec import TensorMeta

RUNTIMES = ("onnxruntime", "openvino")


class RuntimeLoadError(Exception):
    """The model could not be loaded by the runtime (bad file, unavailable device, …)."""


class Backend(abc.ABC):
    """One loaded model in one runtime."""

    runtime: str = ""
    #: Platform string for model metadata (``onnxruntime_onnx``, ``openvino_ir``).
    platform: str = ""

    # Set by each implementation once the model is loaded.
    _inputs: list[TensorMeta]
    _outputs: list[TensorMeta]

    @property
    def inputs(self) -> list[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorMeta]:
        return self._outputs

    @abc.abstractmethod
    def infer(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model; returns the requested outputs (all when ``output_names`` is None). Thread-safe."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session; ``infer`` must not be called afterwards."""


def load_backend(
    runtime: str,
    *,
    files: Sequence[Path] | None = None,
    blobs: Sequence[bytes] | None = None,
    threads: int | None = None,
    device: str | None = None,
    providers: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> Backend:
    """Load a model with ``runtime``. Exactly one of ``files``/``blobs`` is given (ONNX: one; IR: xml, bin)."""
    if (files is None) == (blobs is None):
        raise RuntimeLoadError("give the model as files or as blobs, not both or neither")
    if runtime == "onnxruntime":
        from .onnx import OnnxBackend

        return OnnxBackend(files=files, blobs=blobs, threads=threads, providers=providers)
    if runtime == "openvino":
        from .openvino import OpenVINOBackend

        return OpenVINOBackend(files=files, blobs=blobs, threads=threads, device=device, cache_dir=cache_dir)
    raise RuntimeLoadError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
