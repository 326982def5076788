"""`make demo` works end to end (in a temporary work dir), stays under a minute, says what it is doing before each
wait, and ends with next steps that work on what it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests._agent_fixtures import REPO_ROOT


def test_demo_runs_clean_and_fast(tmp_path: Path) -> None:
    env = dict(os.environ, MODELFLEET_DEMO_WORK=str(tmp_path / "demo-work"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "reconciler.devkit.demo"], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "serves 2.1.0" in out and "0 failed, versions seen: 2.1.0 → 2.2.0" in out
    assert "endpoint vibration: Serving 2.2.0 (previous 2.1.0)" in out and "Ready=True" in out
    assert "stopped cleanly (exit code 0)" in out
    assert elapsed < 60
    # before every wait a line says what is happening (nothing is silent for long), and it ends with next steps
    lines = out.splitlines()
    assert lines[0].split("] ", 1)[1].startswith("modelfleet demo: one device"), lines[0]
    started = next(i for i, line in enumerate(lines) if "agent started" in line)
    assert "starting the agent" in lines[started - 1] and "(up to 30 s)" in lines[started + 1], lines
    tail = out[out.index("\nnext: try\n"):]
    assert "docs/quickstart.md" in tail
    # the suggested commands work on the demo's work dir: the device's signed status counts in `fleet status`
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # fleet status caches what it fetches
    status_cmd = next(line for line in tail.splitlines() if " fleet status " in line).split("#")[0].split()
    assert status_cmd[0].endswith("modelfleet"), status_cmd
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", *status_cmd[1:]], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1 devices: 1 ready" in r.stdout, r.stdout + r.stderr
    plan_cmd = next(line for line in tail.splitlines() if " plan " in line).split("#")[0].split()
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", *plan_cmd[1:]], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "gw-austin-01:" in r.stdout, r.stdout + r.stderr
