"""End to end: 50 simulated devices (the real agent loop) against real Git and TUF servers.

1. canary ring -> 10 % -> 50 % -> 100 % driven by ``modelfleet rollout promote``: gates pass at each step,
   ``plan`` on each promote commit names exactly the devices the step adds; 20 % of the devices are offline
   throughout, are reported unknown, the rollout completes anyway, and they converge when they come back;
2. a bad version (its health check fails for real: NaN outputs) is stopped at the canary step, ``promote`` is
   refused and ``abort`` sends every device back to ``from`` — the rest of the fleet never left it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.fleet.desired import DeviceIdentity, desired_state
from reconciler.fleet.manifests import load_git
from reconciler.fleet.plan import make_plan
from reconciler.rollout.gitrepo import RolloutRepo
from reconciler.simulate.fleet import SimSettings, Simulation
from tests._agent_fixtures import ENDPOINT
from tests._fleet_world import DEPLOYMENT, commit_version, fleet_servers, inventory
from tests._git_fixtures import env, git

N, CANARIES = 50, 3


def modelfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd / ".cache"), MODELFLEET_INSECURE_SKIP_VERIFY="1"),
                          timeout=120)


class Driver:
    """Runs the simulation in a background thread while the test acts as the operator."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.stop = threading.Event()
        self.last: dict[str, Any] = {}
        self.seen_versions: dict[str, set[str]] = {d.id: set() for d in sim.devices}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for report in self.sim.run(600, report_every=0.25, stop=self.stop):
            self.last = report
            for d in self.sim.devices:
                st = d.agent.journal.endpoints.get(ENDPOINT)
                if st is not None and st.active is not None:
                    self.seen_versions[d.id].add(st.active.version)

    def serving(self) -> dict[str, str | None]:
        out = {}
        for d in self.sim.devices:
            st = d.agent.journal.endpoints.get(ENDPOINT)
            out[d.id] = st.active.version if st is not None and st.active is not None else None
        return out

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; serving: {self.serving()}")


def status(repo: str, tmp_path: Path) -> dict[str, Any]:
    """``rollout status --format json`` in process (the CLI's code path, without a Python start per call)."""
    return RolloutRepo(repo, tmp_path / "status-cache").status(DEPLOYMENT)[1].to_dict()


def reported(sim: Simulation, repo: str, tmp_path: Path, step: int, healthy: int) -> bool:
    sim.flush_status(10)
    return status(repo, tmp_path)["steps"][step]["healthy"] >= healthy


def new_version_devices(work: Path, rev: str, version: str) -> set[str]:
    fleet = load_git(work, rev).fleet
    return {n for n, d in fleet.devices.items()
            if desired_state(fleet, DeviceIdentity(n, d.labels)).endpoints[ENDPOINT].version == version}


@pytest.fixture
def world(tmp_path: Path):
    w = fleet_servers(tmp_path / "world")
    w.publish("1.0.0")
    w.publish("1.1.0", bias=0.5)
    w.publish("2.0.0", bias=1.0, nan=True)
    commit_version(w, "1.0.0", extra_files=inventory(N, CANARIES, keys=tmp_path / "keys"))
    yield w
    w.stop()


def test_rollout_of_fifty_devices_with_offline_share_then_bad_version_aborted(world, tmp_path: Path) -> None:
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    sim = Simulation.create(SimSettings(devices=N, source_url=world.git_url, trusted_root=world.trusted_root,
                                        poll_interval=1.0, canaries=CANARIES, offline_share=0.2, workers=6,
                                        credentials=world.device_credentials, status_keys=tmp_path / "keys"),
                            tmp_path / "devices")
    offline = {d.id for d in sim.devices if d.offline}
    online = {d.id for d in sim.devices} - offline
    assert len(offline) == 10
    sim.boot()
    drv = Driver(sim)
    drv.thread.start()
    repo = world.operator_url
    work = world.upstream.work
    try:
        drv.wait(lambda: all(drv.serving()[d] == "1.0.0" for d in online), "1.0.0 everywhere online", 60)

        commit_version(world, "1.1.0", rollout_from="1.0.0", extra_files=inventory(N, CANARIES, keys=tmp_path / "keys"))
        for step in range(4):
            head = git(work, "rev-parse", "HEAD")
            targets = new_version_devices(work, head, "1.1.0")
            assert len(targets) == (CANARIES if step == 0 else len(targets))
            drv.wait(lambda t=targets: all(drv.serving()[d] == "1.1.0" for d in t & online),
                     f"step {step} devices on 1.1.0")
            # Serving comes before the pass reports: wait until the statuses in Git say so too.
            drv.wait(lambda t=targets, s=step: reported(sim, repo, tmp_path, s, len(t & online)),
                     f"step {step} reported healthy")
            st = status(repo, tmp_path)
            cur = st["steps"][step]
            assert st["phase"] == "Ready", st["message"]
            assert cur["targeted"] == len(targets) and cur["healthy"] == len(targets & online)
            assert cur["unknown"] == len(targets & offline) and cur["failed"] == 0
            assert {d["device"] for d in st["devices"] if d["state"] == "unknown"} == targets & offline
            p = modelfleet("rollout", "promote", DEPLOYMENT, "--repo", repo, cwd=tmp_path)
            assert p.returncode == 0, p.stderr
            git(work, "pull", "--quiet", "--ff-only", "origin", "main")
            if step < 3:
                added = new_version_devices(work, "HEAD", "1.1.0") - targets
                plan = make_plan(load_git(work, head).fleet, load_git(work, "HEAD").fleet, include_classes=False)
                planned = {c.device for c in plan.changes}
                assert all(c.old.startswith("det 1.0.0") and c.new.startswith("det 1.1.0") for c in plan.changes)
                assert planned == added and added
        # complete: version stays, rollout gone; every online device on 1.1.0, the offline ones unknown
        drv.wait(lambda: all(drv.serving()[d] == "1.1.0" for d in online), "1.1.0 everywhere online")
        assert sim.flush_status(30)
        st = status(repo, tmp_path)
        assert st["phase"] == "Complete" and st["steps"][0]["unknown"] == len(offline)
        assert all(drv.serving()[d] is None for d in offline)

        sim.set_offline(None, False)  # they come back
        drv.wait(lambda: all(v == "1.1.0" for v in drv.serving().values()), "the returning devices converge")
        assert all(drv.seen_versions[d] <= {"1.1.0"} for d in offline)  # straight to the new version

        # a bad version: NaN outputs fail the real health check on the canaries
        before = dict(drv.serving())
        drv.seen_versions = {d: set() for d in drv.seen_versions}
        commit_version(world, "2.0.0", rollout_from="1.1.0", extra_files=inventory(N, CANARIES, keys=tmp_path / "keys"))
        canaries = new_version_devices(work, "HEAD", "2.0.0")

        def canaries_failed() -> bool:
            sim.flush_status(10)
            st = status(repo, tmp_path)
            return st["phase"] == "Failed" and st["steps"][0]["failed"] == len(canaries)

        drv.wait(canaries_failed, "the canary step to fail", 60)
        p = modelfleet("rollout", "promote", DEPLOYMENT, "--repo", repo, cwd=tmp_path)
        assert p.returncode == 3 and "refusing to promote det-all: step failed" in p.stderr
        p = modelfleet("rollout", "abort", DEPLOYMENT, "--repo", repo, cwd=tmp_path)
        assert p.returncode == 0 and "every device back to 1.1.0" in p.stdout
        time.sleep(3)  # a few polls on the abort commit
        assert drv.serving() == before
        assert all(v <= {"1.1.0"} for v in drv.seen_versions.values())  # nobody ever served 2.0.0
        git(work, "pull", "--quiet", "--ff-only", "origin", "main")
        assert new_version_devices(work, "HEAD", "1.1.0") == set(before)
        assert drv.last["sessions"] <= 3  # one shared runtime session per digest, not one per device
        log = [line.split() for line in world.git_http.requests()]  # METHOD URI STATUS USER ...
        assert any("git-receive-pack" in f[1] and f[2] == "200" and f[3] == "device" for f in log)  # status pushes
        assert any("git-receive-pack" in f[1] and f[2] == "200" and f[3] == "ops" for f in log)  # promote/abort
        assert sum("git-upload-pack" in f[1] for f in log) >= N  # device fetches went through nginx
    finally:
        drv.stop.set()
        drv.thread.join(60)
        sim.close()
