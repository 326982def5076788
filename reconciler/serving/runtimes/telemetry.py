"""Keep the inference runtimes from writing telemetry identifiers or phoning home.

Measured (ONNX Runtime 1.32, OpenVINO 2026.4): merely importing them creates
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db}`` (ONNX Runtime's 1DS telemetry
device id) and ``~/intel/{openvino_ga_cid,stats}`` (``openvino_telemetry``'s Google Analytics client id,
created by ``openvino/tools/ovc/__init__.py``, which also sends an "import" event). An edge device must not be
fingerprinted by its libraries, so :func:`disable_runtime_telemetry` runs before either is imported, in every
process that imports them (the registry's backends, ``serving.hwfacts`` in the agent's facts child, the devkit):

- ONNX Runtime: ``ORT_DISABLE_TELEMETRY=1`` in the environment before the library initialises — its full
  non-Windows opt-out (no uploader, events, device id or offline cache) — plus
  ``onnxruntime.disable_telemetry_events()``, the documented API, once it is imported.
- OpenVINO: its only documented opt-out (``opt_in_out --opt_out``) writes a consent file into ``$HOME``. The
  runtime instead treats ``openvino_telemetry`` as optional and falls back to its bundled no-op
  ``openvino.tools.ovc.telemetry_stub`` when that package cannot be imported, so the package is made
  unimportable in this process (``sys.modules["openvino_telemetry"] = None``). Inference does not use it.

The environment variable is inherited by child processes, which therefore start opted out as well.
"""

from __future__ import annotations

import os
import sys

_ORT_ENV = "ORT_DISABLE_TELEMETRY"


def disable_runtime_telemetry() -> None:
    """Opt this process (and its children) out of ONNX Runtime's and OpenVINO's telemetry; idempotent."""
    os.environ[_ORT_ENV] = "1"
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import now raises ImportError
    ort = sys.modules.get("onnxruntime")
    if ort is not None and hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()


def import_onnxruntime():  # type: ignore[no-untyped-def]
    """``import onnxruntime`` with telemetry disabled first."""
    disable_runtime_telemetry()
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime


def import_openvino():  # type: ignore[no-untyped-def]
    """``import openvino`` with telemetry disabled first."""
    disable_runtime_telemetry()
    import openvino

    return openvino
