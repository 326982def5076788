"""StatusWriter against a real git daemon (receive-pack enabled) on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from reconciler.gitops.statuswriter import (
    MAX_STATUS_BYTES,
    StatusWriter,
    content_key,
    dump_status,
    trim_status,
)
from reconciler.gitops.verify import Verifier
from tests._git_fixtures import GitDaemon, Upstream, git, make_ssh_key, make_status, write_allowed_signers


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def remote_status(bare: Path, device: str) -> dict:
    return yaml.safe_load(git(bare, "cat-file", "blob", f"refs/heads/status/{device}:status.yaml"))


def remote_commits(bare: Path, device: str) -> int:
    return int(git(bare, "rev-list", "--count", f"refs/heads/status/{device}"))


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path)
    up.commit({"fleet.yaml": "x: 1\n"})
    return up


def test_content_key_ignores_heartbeat_and_trim_bounds_size() -> None:
    a = make_status("d1", heartbeat="2026-11-24T10:00:00Z")
    b = make_status("d1", heartbeat="2026-11-24T11:00:00Z")
    assert content_key(a) == content_key(b) != content_key(make_status("d1", version="2.0.0"))
    big = make_status("d1", attempts=5, message="x" * 1024)
    big["status"]["conditions"] = [dict(big["status"]["conditions"][0], type=f"C{i}") for i in range(60)]
    assert len(dump_status(big)) > MAX_STATUS_BYTES
    small = trim_status(big)
    assert len(dump_status(small)) <= MAX_STATUS_BYTES
    assert small["status"]["endpoints"] == big["status"]["endpoints"]
    assert len(dump_status(big)) > MAX_STATUS_BYTES  # input untouched


def test_commits_only_on_change_or_heartbeat(upstream: Upstream, tmp_path: Path) -> None:
    clock = FakeClock()
    w = StatusWriter(upstream.file_url, "cam-01", tmp_path / "dev", heartbeat_interval=300, clock=clock)
    try:
        w.submit(make_status("cam-01", applied="a" * 40))
        assert w.flush(15) and w.last_push_ok and w.pushes == 1
        assert remote_status(upstream.bare, "cam-01")["status"]["appliedCommit"] == "a" * 40
        clock.t += 10
        w.submit(make_status("cam-01", applied="a" * 40, heartbeat="2026-11-24T10:00:10Z"))
        assert w.flush(15) and w.pushes == 1 and remote_commits(upstream.bare, "cam-01") == 1
        clock.t += 300
        w.submit(make_status("cam-01", applied="a" * 40, heartbeat="2026-11-24T10:05:10Z"))
        assert w.flush(15) and remote_commits(upstream.bare, "cam-01") == 2
        w.submit(make_status("cam-01", applied="b" * 40, heartbeat="2026-11-24T10:05:11Z", attempts=8))
        assert w.flush(15) and remote_commits(upstream.bare, "cam-01") == 3
        assert remote_status(upstream.bare, "cam-01")["status"]["appliedCommit"] == "b" * 40
        assert len(remote_status(upstream.bare, "cam-01")["status"]["attempts"]) == 5
        assert git(upstream.bare, "rev-parse", "refs/heads/main") == upstream.head()  # operators' branch untouched
    finally:
        w.close()
    with pytest.raises(ValueError, match="invalid DeviceStatus"):
        StatusWriter(upstream.file_url, "cam-01", tmp_path / "dev").submit({"kind": "DeviceStatus"})


def test_server_down_queues_newest_and_pushes_on_recovery(upstream: Upstream, tmp_path: Path) -> None:
    d = GitDaemon(upstream.bare.parent).start()
    w = StatusWriter(d.url("fleet.git"), "cam-02", tmp_path / "dev", retry_base=0.05, retry_max=0.3, timeout=5)
    try:
        w.submit(make_status("cam-02", version="1.0.0"))
        assert w.flush(15)
        d.stop()
        for v in ("1.1.0", "1.2.0", "1.3.0"):
            w.submit(make_status("cam-02", version=v))  # never blocks, even with the server down
        assert not w.flush(1.0)
        assert w.last_push_ok is False and w.queued >= 1 and w.push_failures >= 1
        d.start()
        assert w.flush(20) and w.last_push_ok and w.queued == 0
        assert remote_status(upstream.bare, "cam-02")["status"]["endpoints"][0]["version"] == "1.3.0"
        assert remote_commits(upstream.bare, "cam-02") == 2  # offline statuses collapsed into the newest
    finally:
        w.close(timeout=1)
        d.stop()


def test_twenty_devices_push_at_once(upstream: Upstream, tmp_path: Path) -> None:
    with GitDaemon(upstream.bare.parent) as d:
        writers = [StatusWriter(d.url("fleet.git"), f"dev-{i:02d}", tmp_path / f"d{i}", retry_base=0.05,
                                retry_max=0.5) for i in range(20)]
        try:
            for rnd in range(2):
                barrier = threading.Barrier(20)

                def go(w: StatusWriter, rnd: int = rnd, barrier: threading.Barrier = barrier) -> None:
                    barrier.wait()
                    w.submit(make_status(w.device_id, version=f"1.{rnd}.0"))
                threads = [threading.Thread(target=go, args=(w,)) for w in writers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert all(w.flush(60) for w in writers)
            for w in writers:
                assert remote_status(upstream.bare, w.device_id)["status"]["endpoints"][0]["version"] == "1.1.0"
                assert remote_commits(upstream.bare, w.device_id) == 2
        finally:
            for w in writers:
                w.close(timeout=1)


def test_lost_local_state_rebases_on_remote_branch(upstream: Upstream, tmp_path: Path) -> None:
    w = StatusWriter(upstream.file_url, "cam-03", tmp_path / "dev1")
    w.submit(make_status("cam-03", version="1.0.0"))
    assert w.flush(15)
    w.close()
    fresh = StatusWriter(upstream.file_url, "cam-03", tmp_path / "dev2")  # device re-imaged: empty work dir
    try:
        fresh.submit(make_status("cam-03", version="2.0.0"))
        assert fresh.flush(15)
        assert remote_commits(upstream.bare, "cam-03") == 2
        assert remote_status(upstream.bare, "cam-03")["status"]["endpoints"][0]["version"] == "2.0.0"
    finally:
        fresh.close()


def test_signed_status_commits(upstream: Upstream, tmp_path: Path) -> None:
    key = make_ssh_key(tmp_path / "keys", "cam-04@devices.modelfleet")
    w = StatusWriter(upstream.file_url, "cam-04", tmp_path / "dev", signing_key=key.path)
    try:
        w.submit(make_status("cam-04"))
        assert w.flush(15)
    finally:
        w.close()
    allowed = write_allowed_signers(tmp_path / "allowed", key)
    res = Verifier(upstream.bare, allowed_signers=allowed, state_dir=tmp_path).verify(
        [git(upstream.bare, "rev-parse", "refs/heads/status/cam-04")])
    assert res.ok and res.signer == "cam-04@devices.modelfleet"


def test_push_spread_waits_folds_newer_statuses_and_gives_way_to_flush(upstream: Upstream, tmp_path: Path) -> None:
    w = StatusWriter(upstream.file_url, "cam-09", tmp_path / "dev", push_spread=1.5, rand=lambda: 1.0)
    try:
        w.submit(make_status("cam-09", version="1.0.0"))
        assert w.flush(15) and remote_commits(upstream.bare, "cam-09") == 1  # flush does not wait the spread
        t0 = time.monotonic()
        w.submit(make_status("cam-09", version="1.1.0"))
        time.sleep(0.5)
        assert not w.in_sync() and remote_commits(upstream.bare, "cam-09") == 1  # still within the spread
        w.submit(make_status("cam-09", version="1.2.0"))  # arrives during the wait: folded into one commit
        while not w.in_sync() and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        assert 1.4 <= time.monotonic() - t0 < 15
        assert remote_commits(upstream.bare, "cam-09") == 2
        assert remote_status(upstream.bare, "cam-09")["status"]["endpoints"][0]["version"] == "1.2.0"
    finally:
        w.close()
    with pytest.raises(ValueError, match="push_spread"):
        StatusWriter(upstream.file_url, "cam-09", tmp_path / "dev2", push_spread=-1)


def test_a_token_in_a_status_message_never_reaches_git(upstream: Upstream, tmp_path: Path) -> None:
    """The last line of defence: whatever a message quotes (a server's error with a URL that carries a token, an
    Authorization header) is masked before the status is committed, and so before it is pushed."""
    tok = "ghp_StatusLeak0a1b2c3d4e5f"
    w = StatusWriter(upstream.file_url, "cam-10", tmp_path / "dev")
    try:
        doc = make_status("cam-10", message=f"fatal: unable to access 'https://{tok}@git.example.com/f.git/': 403; "
                                            f"Authorization: Bearer {tok}; HTTPS://x:{tok}@h/r")
        w.submit(doc)
        assert w.flush(10)
    finally:
        w.close()
    blob = git(upstream.bare, "cat-file", "blob", "refs/heads/status/cam-10:status.yaml")
    assert tok not in blob and "https://***@git.example.com/f.git/" in blob and "HTTPS://***@h/r" in blob
    assert tok in doc["status"]["conditions"][0]["message"]  # the caller's document is left as it was
