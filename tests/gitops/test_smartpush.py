"""Status pushes over smart HTTP without a ``git push`` process, against nginx + git http-backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.core.credentials import Credentials
from reconciler.gitops.smartpush import PushRejected, SmartPush, encode_pack
from reconciler.gitops.statuswriter import StatusWriter
from tests._git_fixtures import Upstream, git, make_status
from tests._servers import GitHttp, Pki, private_file

PASSWORD = "push-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitHttp, Upstream, Credentials]]:
    root = tmp_path_factory.mktemp("smartpush")
    up = Upstream(root / "up")
    up.commit({"fleet.yaml": "x: 1\n"})
    with GitHttp(root / "nginx", Pki.make(root / "pki"), users={"device": PASSWORD}, tuf_token="t") as http:
        http.publish_repo("fleet.git", up.bare)
        creds = Credentials(username="device", password_file=private_file(root / "pw", PASSWORD))
        yield http, up, creds


def remote_status(bare: Path, device: str) -> dict:
    return yaml.safe_load(git(bare, "cat-file", "blob", f"refs/heads/status/{device}:status.yaml"))


def push_requests(http: GitHttp, since: int, count: int = 0) -> list[list[str]]:
    """The push requests in the server's access log since line ``since``. nginx writes a request's line after it
    has sent the answer, so a client can hold the answer before the line is there: wait (5 s at most) until
    ``count`` lines are."""
    deadline = time.monotonic() + 5.0
    while True:
        reqs = [line.split() for line in http.requests()[since:] if "/info/refs" in line or "receive-pack" in line]
        if len(reqs) >= count or time.monotonic() > deadline:
            return reqs
        time.sleep(0.02)


def test_status_pushes_land_on_one_kept_alive_connection(server, tmp_path: Path) -> None:
    http, up, creds = server
    before = len(http.requests())
    w = StatusWriter(http.url("fleet.git"), "cam-10", tmp_path / "dev", credentials=creds, heartbeat_interval=0)
    try:
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            w.submit(make_status("cam-10", version=version))
            assert w.flush(15)
    finally:
        w.close()
    assert w.pushes == 3 and w.reporting()["pushed"] is True
    assert remote_status(up.bare, "cam-10")["status"]["endpoints"][0]["version"] == "1.2.0"
    assert git(up.bare, "rev-list", "--count", "refs/heads/status/cam-10") == "3"
    git(up.bare, "fsck", "--strict", "--no-dangling")  # the packs we sent are valid
    reqs = push_requests(http, before, 3)
    # The ref update alone, from the first push on: a branch the writer never pushed is created with the zero
    # id as its old value, then the writer knows the branch's tip on the server. No ref advertisement
    # (GET info/refs) at all; authenticated, all on one connection (no git process).
    assert [(r[0], r[2], r[3]) for r in reqs] == [("POST", "200", "device")] * 3
    assert len({r[4] for r in reqs}) == 1
    assert w._smart is not None and w._smart.advertisements == 0


def test_a_restarted_writer_pushes_without_an_advertisement(server, tmp_path: Path) -> None:
    """The simulator's and a rebooted device's case: the writer's state (its last pushed commit) survives, its
    connection does not; the next push is still the ref update alone."""
    http, up, creds = server
    url = http.url("fleet.git")
    for version in ("1.0.0", "1.1.0"):
        w = StatusWriter(url, "cam-14", tmp_path / "dev", credentials=creds, heartbeat_interval=0)
        before = len(http.requests())
        try:
            w.submit(make_status("cam-14", version=version))
            assert w.flush(15)
        finally:
            w.close()
        assert [r[0] for r in push_requests(http, before, 1)] == ["POST"]
    assert git(up.bare, "rev-list", "--count", "refs/heads/status/cam-14") == "2"


def test_a_branch_moved_behind_the_writers_back_is_rebased_after_one_refused_update(server, tmp_path: Path) -> None:
    http, up, creds = server
    url = http.url("fleet.git")
    w = StatusWriter(url, "cam-13", tmp_path / "dev1", credentials=creds, heartbeat_interval=0)
    other = StatusWriter(url, "cam-13", tmp_path / "dev2", credentials=creds, heartbeat_interval=0)
    try:
        w.submit(make_status("cam-13", version="1.0.0"))
        assert w.flush(15)
        other.submit(make_status("cam-13", version="1.1.0"))  # e.g. the re-imaged device, or an operator's edit
        assert other.flush(15)
        before = len(http.requests())
        w.submit(make_status("cam-13", version="1.2.0"))  # w still believes the server has its 1.0.0 commit
        assert w.flush(15)
    finally:
        w.close()
        other.close()
    # The ref update alone is refused (the server checks the old tip), the advertisement shows the moved
    # branch, the writer fetches it (git fetch: GET info/refs) and pushes a commit on top of it (the ref update
    # alone again: now it knows the tip); nothing of the other writer's is lost.
    assert [r[0] for r in push_requests(http, before, 4)] == ["POST", "GET", "GET", "POST"]
    assert git(up.bare, "rev-list", "--count", "refs/heads/status/cam-13") == "3"
    assert remote_status(up.bare, "cam-13")["status"]["endpoints"][0]["version"] == "1.2.0"


def test_lost_local_state_and_a_moved_branch_are_rebased(server, tmp_path: Path) -> None:
    http, up, creds = server
    url = http.url("fleet.git")
    w = StatusWriter(url, "cam-11", tmp_path / "dev1", credentials=creds)
    w.submit(make_status("cam-11", version="1.0.0"))
    assert w.flush(15)
    w.close()
    fresh = StatusWriter(url, "cam-11", tmp_path / "dev2", credentials=creds)  # re-imaged device
    before = len(http.requests())
    try:
        fresh.submit(make_status("cam-11", version="2.0.0"))
        assert fresh.flush(15)
        # Creating the branch is refused (it exists), the advertisement says where it is, the writer fetches it
        # and pushes on top of it.
        assert [(r[0], r[2]) for r in push_requests(http, before, 4)] == [("POST", "200"), ("GET", "200"),
                                                                       ("GET", "200"), ("POST", "200")]
        assert git(up.bare, "rev-list", "--count", "refs/heads/status/cam-11") == "2"
        assert remote_status(up.bare, "cam-11")["status"]["endpoints"][0]["version"] == "2.0.0"
    finally:
        fresh.close()
    client = SmartPush(url, authorization=creds.authorization)
    try:
        with pytest.raises(PushRejected, match="on the server"):
            client.push("refs/heads/status/cam-11", "1" * 40, "2" * 40, [("blob", b"x")])
    finally:
        client.close()


def test_without_credentials_falls_back_to_git_push_and_reports_why(server, tmp_path: Path) -> None:
    http, up, _ = server
    w = StatusWriter(http.url("fleet.git"), "cam-12", tmp_path / "dev", retry_base=30)
    try:
        w.submit(make_status("cam-12", version="1.0.0"))
        assert not w.flush(3)
        rep = w.reporting()
        assert rep["pushed"] is False and rep["reason"] == "AuthenticationFailed", rep
    finally:
        w.close(timeout=0.1)
    assert "refs/heads/status/cam-12" not in git(up.bare, "for-each-ref")


def test_pack_of_whole_objects_is_what_git_reads(tmp_path: Path) -> None:
    big = bytes(range(256)) * 40  # a size that needs several header bytes
    pack = tmp_path / "p.pack"
    pack.write_bytes(encode_pack([("blob", b"hello\n"), ("blob", big)]))
    git(tmp_path, "init", "-q", "--bare", "r.git")
    git(tmp_path / "r.git", "index-pack", str(pack))
    listed = git(tmp_path / "r.git", "verify-pack", "-v", str(pack.with_suffix(".idx")))
    for body in (b"hello\n", big):
        assert git(tmp_path / "r.git", "hash-object", "--stdin", input=body) in listed
