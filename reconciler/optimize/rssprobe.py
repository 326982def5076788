"""Child process of :func:`reconciler.optimize.measure.memory`: load one model, run it once, print the peak RSS.

Reads ``{"runtime", "files", "threads", "precision", "feeds"}`` as JSON on stdin (``feeds``: an ``.npz`` of one
real input sample; without it, zeros with every variable dimension 1) and prints one JSON line
``{"load_rss_mb", "load_ms"}``: the growth of the high-water mark (``VmHWM``) over the resident size just
before the load, after the runtime itself was imported, so the figure is the model's, not the interpreter's.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    args = json.loads(sys.stdin.read())
    runtime = args["runtime"]
    importlib.import_module({"onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime])
    import numpy as np

    from reconciler.serving.health import synthetic_feeds
    from reconciler.serving.runtimes import load_backend

    if runtime == "openvino":
        from reconciler.serving.runtimes.openvino import core

        core()  # the Core's plugin scan is the runtime's cost, not the model's
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0), so import peaks do not count
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    backend = load_backend(runtime, files=[Path(f) for f in args["files"]], threads=args.get("threads"),
                           precision=args.get("precision"))
    if args.get("feeds"):
        with np.load(args["feeds"], allow_pickle=False) as npz:
            feeds = {k: npz[k] for k in npz.files}
    else:
        feeds = synthetic_feeds(backend.inputs)
    backend.infer(feeds)
    load_ms = (time.perf_counter() - t0) * 1000.0
    peak = _status_kb("VmHWM")
    print(json.dumps({"load_rss_mb": round(max(0.0, peak - before) / 1024.0, 2), "load_ms": round(load_ms, 1)}))


if __name__ == "__main__":
    main()
