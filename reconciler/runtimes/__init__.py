"""Inference runtime backends behind one small interface (:class:`reconciler.runtimes.base.Backend`).

``load_backend("onnxruntime" | "openvino", files=… | blobs=…, …)`` returns a loaded, thread-safe session;
the registry owns its lifetime. Runtimes are imported lazily so importing this package stays cheap.
"""

from __future__ import annotations

from .base import Backend, RuntimeLoadError, load_backend

__all__ = ["Backend", "RuntimeLoadError", "load_backend"]
