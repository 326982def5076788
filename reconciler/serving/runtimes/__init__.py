"""Inference runtime backends behind one small interface (:class:`reconciler.serving.runtimes.base.Backend`).

``load_backend("onnxruntime" | "openvino", files=… | blobs=…, …)`` returns a loaded, thread-safe session;
the registry owns its lifetime. The factory lives here, not in ``base``, so ``base`` holds only the interface
and the backends import it without a cycle. Runtimes are imported lazily so importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.core.extras import missing_runtime, runtime_installed
from reconciler.serving.runtimes.base import Backend, RuntimeLoadError, RuntimeNotInstalled

__all__ = ["RUNTIMES", "Backend", "RuntimeLoadError", "RuntimeNotInstalled", "load_backend"]

RUNTIMES = ("onnxruntime", "openvino")


def load_backend(
    runtime: str,
    *,
    files: Sequence[Path] | None = None,
    blobs: Sequence[bytes] | None = None,
    threads: int | None = None,
    device: str | None = None,
    providers: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    precision: str | None = None,
) -> Backend:
    """Load a model with ``runtime``. Exactly one of ``files``/``blobs`` is given (ONNX: one; IR: xml, bin).

    ``precision`` is the variant's declared numeric precision (:mod:`reconciler.serving.precision`). A runtime
    whose optional extra is not installed raises :class:`RuntimeNotInstalled` naming the extra."""
    if (files is None) == (blobs is None):
        raise RuntimeLoadError("give the model as files or as blobs, not both or neither")
    if runtime in RUNTIMES and not runtime_installed(runtime):
        raise RuntimeNotInstalled(missing_runtime(runtime))
    if runtime == "onnxruntime":
        from reconciler.serving.runtimes.onnx import OnnxBackend

        return OnnxBackend(files=files, blobs=blobs, threads=threads, providers=providers, precision=precision)
    if runtime == "openvino":
        from reconciler.serving.runtimes.openvino import OpenVINOBackend

        return OpenVINOBackend(
            files=files, blobs=blobs, threads=threads, device=device, cache_dir=cache_dir, precision=precision
        )
    raise RuntimeLoadError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
