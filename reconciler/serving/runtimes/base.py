"""The backend interface every runtime implements (the factory that picks one is in the package).

A backend is loaded once from the model's bytes (``blobs``, e.g. decrypted in memory) or from its files in the
store (``files``), reports its inputs/outputs as KServe v2 :class:`~reconciler.serving.v2.codec.TensorMeta`, runs
``infer`` from any thread concurrently, and frees its memory on ``close``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from reconciler.serving.v2.codec import TensorMeta


class RuntimeLoadError(Exception):
    """The model could not be loaded by the runtime (bad file, unavailable device, …)."""

    reason = "LoadFailed"


class RuntimeNotInstalled(RuntimeLoadError):
    """The runtime's package is not installed (an optional extra, :mod:`reconciler.core.extras`)."""

    reason = "RuntimeNotInstalled"


class Backend(abc.ABC):
    """One loaded model in one runtime."""

    runtime: str = ""
    #: Platform string for model metadata (``onnxruntime_onnx``, ``openvino_ir``).
    platform: str = ""

    #: The numeric precision the model computes in (:mod:`reconciler.serving.precision` names), set by each
    #: implementation once the model is loaded: what the runtime reads back where it can (OpenVINO), else the
    #: declared precision. It decides the health check's default tolerance and is reported in the status.
    precision: str = "fp32"

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
