"""Soak: many ``kill -9`` trials of a real agent process during updates (the test suite runs 20).

Every restart must serve, before any network access, the verified version its journal names (or the previous
one), and the final restart must converge and report Ready. Prints ONE JSON line.

Run: .venv/bin/python bench/soak_kill9.py [TRIALS] [SEED]      (default 100 trials, about 3.5 s each)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._agent_fixtures import World, kill9_trials  # noqa: E402


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-kill9-") as d:
        w = World(Path(d) / "world").start()
        try:
            for i in range(4):
                w.publish(f"1.{i}.0", bias=float(i))
            w.commit_fleet("1.0.0")
            served = kill9_trials(w, Path(d) / "dev", trials, seed)
        finally:
            w.stop()
    wall = time.monotonic() - t0
    print(json.dumps({"bench": "soak_kill9", "trials": trials, "seed": seed, "failures": 0,
                      "served_at_restart": served, "wall_s": round(wall, 1),
                      "seconds_per_trial": round(wall / max(trials, 1), 2)}))


if __name__ == "__main__":
    main()
