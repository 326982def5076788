"""A target that fails verification is a failure: remembered, backed off, reported with its documented reason.

End to end against real parts: ``modelfleet agent run`` as a child process, a git daemon (fleet repo and status
branch), the TUF repository over HTTP, ONNX Runtime serving the last good version.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from reconciler.core import reasons as R
from tests._agent_fixtures import AgentProcess, World, condition, read_status, wait_for, which_version

POLL = 0.25


def tamper(world: World, version: str) -> str:
    """Flip bytes of the version's model file on the server (same length); the URL path it is served under."""
    (served,) = (world.tuf_dir / "targets" / "det" / version).glob("*model.onnx")
    data = bytearray(served.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    served.write_bytes(bytes(data))
    return "/" + served.relative_to(world.tuf_dir).as_posix()


def status_commits(world: World, device: str = "dev-1") -> int:
    out = subprocess.run(["git", "--git-dir", str(world.upstream.bare), "rev-list", "--count", f"status/{device}"],
                         capture_output=True, text=True)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def test_tampered_target_is_held_back_reported_and_not_refetched(world: World, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    cfg = world.agent_config(dev, poll=f"{int(POLL * 1000)}ms", status=True)
    agent = AgentProcess(cfg, tmp_path / "agent.log").start()
    try:
        url = agent.url()
        wait_for(lambda: which_version(url, world) == "1.0.0", 30, what="1.0.0 serving")
        world.publish("2.0.0", bias=2.0)
        path = tamper(world, "2.0.0")
        world.commit_fleet("2.0.0")

        def artifacts_reason() -> str | None:
            c = condition(read_status(dev), "ArtifactsReady")
            return c["reason"] if c and c["status"] == "False" else None

        wait_for(artifacts_reason, 30, what="ArtifactsReady=False")
        commits_before = status_commits(world)
        time.sleep(20 * POLL)
        downloads = sum(1 for p, _ in world.http.requests if p == path)
        assert 1 <= downloads <= 3, f"the tampered target was downloaded {downloads} times in 20 poll intervals"
        assert status_commits(world) - commits_before <= 1, "the status branch is rewritten on every poll"
        # The status says why, with the documented reason, and the old version keeps serving.
        doc = read_status(dev)
        assert doc is not None
        st = doc["status"]
        assert artifacts_reason() == R.TARGET_HASH_MISMATCH and R.TARGET_HASH_MISMATCH in R.BY_CODE
        applied = condition(doc, "Applied")
        assert applied is not None and (applied["status"], applied["reason"]) == ("False", R.TARGET_HASH_MISMATCH)
        assert condition(doc, "Ready")["status"] == "False"
        (ep,) = st["endpoints"]
        assert (ep["state"], ep["version"], ep["desiredVersion"]) == ("Failed", "1.0.0", "2.0.0")
        assert "TargetHashMismatch" in ep["message"] and "held back until" in ep["message"]
        (failure,) = st["failures"]
        assert failure["version"] == "2.0.0" and failure["reason"].startswith("TargetHashMismatch:")
        assert st["attempts"][0]["result"] == "Failed" and st["attempts"][0]["step"] == "artifacts"
        assert which_version(url, world) == "1.0.0"
        # One `step failed` line per real attempt, not one per poll.
        lines = [json.loads(x) for x in (tmp_path / "agent.log").read_text().splitlines() if x.startswith("{")]
        failed = [x for x in lines if x.get("msg") == "step failed" and x.get("step") == "artifacts"]
        assert failed and failed[0]["reason"] == R.TARGET_HASH_MISMATCH and len(failed) <= downloads
        # A fixed build (new commit, new target) is tried at once and converges.
        world.publish("2.0.1", bias=2.5)
        world.commit_fleet("2.0.1")
        wait_for(lambda: which_version(url, world) == "2.0.1", 30, what="2.0.1 serving")
        wait_for(lambda: condition(read_status(dev), "Ready")["status"] == "True", 30, what="Ready")
        assert read_status(dev)["status"]["failures"] == []
    finally:
        agent.stop()
