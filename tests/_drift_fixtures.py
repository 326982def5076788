"""Drift on a device, shared by the drift and monitoring tests: a baseline signed next to a published model, a
fleet commit whose model versions name it, and KServe v2 traffic from a row array."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reconciler.distribution import tufrepo
from tests._agent_fixtures import ENDPOINT, IN_DIM, MODEL, World
from tests._cli import run_cli

DRIFT = {"window": 300, "minSamples": 150, "method": "psi"}


def publish_baseline(world: World, version: str, work: Path) -> Path:
    """Baseline of the published model on a N(0, 1) sample, signed next to the model."""
    rng = np.random.default_rng(3)
    sample = work / "sample.npz"
    np.savez(sample, input=rng.normal(size=(3000, IN_DIM)).astype(np.float32), labels=rng.integers(0, 4, 3000))
    d = world.root / "build" / version
    out = d / "baseline.json"
    r = run_cli("baseline", str(d / "model.onnx"), "--data", str(sample), "--window", str(DRIFT["window"]),
                "--out", str(out))
    assert r.code == 0, r.text
    tufrepo.add_targets(world.tuf_dir, [world.keys], [out], f"{MODEL}/{version}")
    return out


def commit_with_baseline(world: World, version: str, drift: dict[str, Any]) -> str:
    files = world.fleet_files(version, deployment={"drift": drift})
    model = yaml.safe_load(files[f"models/{MODEL}.yaml"])
    for v in model["spec"]["versions"]:
        v["driftBaseline"] = {"target": f"{MODEL}/{v['version']}/baseline.json"}
    files[f"models/{MODEL}.yaml"] = yaml.safe_dump(model, sort_keys=False)
    return world.commit_raw(files, f"deploy {version} with drift baseline")


def send(url: str, rows: np.ndarray, batch: int = 10) -> None:
    for i in range(0, len(rows), batch):
        x = rows[i:i + batch].astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/{ENDPOINT}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def drift_world(tmp_path: Path) -> World:
    """A started world serving 1.0.0 with its drift baseline published and the deployment monitoring drift."""
    w = World(tmp_path / "world").start()
    w.publish("1.0.0")
    publish_baseline(w, "1.0.0", tmp_path)
    commit_with_baseline(w, "1.0.0", DRIFT)
    return w
