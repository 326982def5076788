"""The agent and ``modelfleet serve`` leave no file in ``$HOME``: the runtimes' telemetry is disabled.

ONNX Runtime and OpenVINO, left alone, write device identifiers on import (``~/.cache/Microsoft/…/deviceid``,
``~/intel/openvino_ga_cid``). Each process here starts with a fresh, empty ``HOME`` and without the variables
that would opt out by accident (``ORT_DISABLE_TELEMETRY`` from a parent, ``CI`` which OpenVINO's telemetry
honours), loads and runs models with both runtimes, and must leave ``HOME`` empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reconciler.devkit import modelgen
from tests._agent_fixtures import REPO_ROOT, AgentProcess, World, infer, wait_for

# Anything that would make the runtimes opt out without our help, so the test can fail.
_ACCIDENTAL_OPT_OUTS = ("ORT_DISABLE_TELEMETRY", "CI", "TF_BUILD", "JENKINS_URL",
                        "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _clean_env(home: Path, tmp: Path) -> dict[str, str | None]:
    env: dict[str, str | None] = dict.fromkeys(_ACCIDENTAL_OPT_OUTS)
    env.update({"HOME": str(home), "TMPDIR": str(tmp)})
    return env


def test_agent_writes_nothing_into_home(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    world = World(tmp_path / "world").start()
    try:
        world.publish("1.0.0")
        world.commit_fleet("1.0.0")
        cfg = world.agent_config(tmp_path / "dev")
        proc = AgentProcess(cfg, tmp_path / "agent.log", env=_clean_env(home, tmp)).start()
        try:
            url = proc.url()
            wait_for(lambda: _answers(url), what="the model to serve")
            (tmp_path / "dev" / "state" / "facts.json").stat()  # the facts child (imports both runtimes) ran
            time.sleep(0.5)  # telemetry files appear asynchronously when enabled
        finally:
            proc.stop()
    finally:
        world.stop()
    assert _files_under(home) == []


def _answers(url: str) -> bool:
    try:
        return infer(url).shape == (1, 4)
    except OSError:
        return False


def test_serve_writes_nothing_into_home(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(modelgen.matmul_model(16, 4, seed=1))
    ir_xml, _ = modelgen.to_openvino_ir(onnx.read_bytes(), tmp_path / "ir", "ir")
    env = {k: v for k, v in os.environ.items() if k not in _ACCIDENTAL_OPT_OUTS}
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "serve", str(onnx), str(ir_xml), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True,
    )
    try:
        assert proc.stdout is not None
        urls = {}
        for _ in range(2):
            line = proc.stdout.readline()
            assert line.startswith("serving "), line + proc.stdout.read()
            urls[line.split()[1]] = line.split(" at ")[1].strip().rsplit("/v2/", 1)[0]
        for endpoint in ("m", "ir"):
            out = infer(urls[endpoint], endpoint)
            assert np.isfinite(out).all()
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(15)
    assert _files_under(home) == []
