"""Optional extras: which heavy dependency each feature needs, and the one line that says how to install it.

The base install (``pip install modelfleet``) is what every device needs: the agent, ONNX Runtime, the KServe v2
server, Git and TUF. Heavy dependencies that only some devices or only the operator's machine need are extras
(docs/install.md):

- ``openvino`` — the OpenVINO runtime (x86 devices with Intel CPUs/GPUs/NPUs, and OpenVINO IR variants);
- ``grpc`` — the Open Inference Protocol over gRPC beside REST (grpcio; ``serving.grpcPort``, ``serve --grpc-port``:
  :mod:`reconciler.serving.fronts` names it when missing);
- ``optimize`` — ``modelfleet optimize`` (onnx, sympy, nncf, openvino);
- ``plots`` — the drift report's plots (matplotlib).

A model whose runtime is missing fails with :func:`missing_runtime`'s one line, naming the extra; the agent
reports it as the endpoint's condition (``RuntimeNotInstalled``), never as a traceback. ``optimize`` and
``plots`` check their own modules the same way (:mod:`reconciler.optimize.convert`, :mod:`reconciler.drift.plots`).
"""

from __future__ import annotations

import importlib.util

#: runtime name (as in a Model variant) → (its display name, the module it imports, the extra that installs it)
RUNTIME_EXTRAS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("ONNX Runtime", "onnxruntime", "modelfleet"),
    "openvino": ("OpenVINO", "openvino", "modelfleet[openvino]"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (looked up without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-imported module
        return False


def runtime_installed(runtime: str) -> bool:
    entry = RUNTIME_EXTRAS.get(runtime)
    return entry is not None and installed(entry[1])


def missing_runtime(runtime: str, requested_by: str | None = None) -> str:
    """``OpenVINO runtime requested by deployment X but not installed: pip install 'modelfleet[openvino]'``."""
    label, _module, extra = RUNTIME_EXTRAS.get(runtime, (runtime, runtime, ""))
    who = f" by {requested_by}" if requested_by else ""
    hint = f": pip install '{extra}'" if extra else ""
    return f"{label} runtime requested{who} but not installed{hint}"

