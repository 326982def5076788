"""An in-memory fleet and device statuses for the rollout tests (no network)."""

from __future__ import annotations

from typing import Any

from reconciler.fleet.manifests import load_files
from reconciler.fleet.repository import FleetRepo

FLEET = b"""apiVersion: modelfleet/v1
kind: Fleet
metadata:
  name: test-fleet
spec:
  defaults:
    heartbeatInterval: 60s
  tuf:
    metadataUrl: http://127.0.0.1:8001/metadata/
    targetsUrl: http://127.0.0.1:8001/targets/
"""

MODEL = b"""apiVersion: modelfleet/v1
kind: Model
metadata:
  name: tiny
spec:
  task: regression
  inputs:
    - {name: input, datatype: FP32, shape: [-1, 16]}
  outputs:
    - {name: output, datatype: FP32, shape: [-1, 4]}
  versions:
    - version: "1.0.0"
      variants:
        - {name: onnx, runtime: onnxruntime, targets: [tiny/1.0.0/model.onnx]}
    - version: "1.1.0"
      variants:
        - {name: onnx, runtime: onnxruntime, targets: [tiny/1.1.0/model.onnx]}
"""

DEPLOYMENT = """apiVersion: modelfleet/v1
kind: Deployment
metadata:
  name: tiny
spec:
  model: tiny
  version: "1.1.0"
  serveAs: tiny
  selector:
    matchLabels: {{site: a}}
  rollout:
    from: "1.0.0"
    steps:
      - name: canary
        selector:
          matchLabels:
            ring: canary
      - percent: 10
      - percent: 50
      - percent: 100
    step: {step}
{extra}"""


def deployment_yaml(step: int = 0, gates: str = "", paused: bool = False) -> str:
    extra = ("    paused: true\n" if paused else "") + (f"    gates:\n{gates}" if gates else "")
    return DEPLOYMENT.format(step=step, extra=extra)


def make_fleet(n: int, *, step: int = 0, gates: str = "", paused: bool = False, canaries: int = 3) -> FleetRepo:
    files = {"fleet.yaml": FLEET, "models/tiny.yaml": MODEL,
             "deployments/tiny.yaml": deployment_yaml(step, gates, paused).encode()}
    for i in range(n):
        ring = "canary" if i < canaries else "stable"
        files[f"devices/dev-{i:03d}.yaml"] = (
            f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{i:03d}\n"
            f"  labels: {{site: a, ring: {ring}}}\n").encode()
    load = load_files(files)
    assert load.ok, load.errors
    return load.fleet


def status(device: str, version: str | None, *, heartbeat: str, state: str = "Serving", desired: str | None = None,
           failed_version: str | None = None, drift: float | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"name": "tiny", "deployment": "tiny", "model": "tiny", "version": version,
                          "state": state, "desiredVersion": desired or version}
    if drift is not None:
        ep["driftScore"] = drift
    st: dict[str, Any] = {"heartbeat": heartbeat, "appliedCommit": "a" * 40, "endpoints": [ep],
                          "conditions": [{"type": "Ready", "status": "True" if state == "Serving" else "False"}]}
    if failed_version:
        st["failures"] = [{"endpoint": "tiny", "version": failed_version, "reason": "probe mismatch", "count": 1}]
    return {"apiVersion": "modelfleet/v1", "kind": "DeviceStatus", "metadata": {"name": device}, "status": st}
