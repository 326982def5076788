"""`make demo` works end to end (in a temporary work dir) and stays under a minute."""

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
