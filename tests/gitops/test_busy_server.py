"""A Git server that answers 502 for a while (fcgiwrap stopped behind a running nginx: an overloaded or
restarting server behind its proxy): the device's poll and status push fail with a named reason, cost one
request per attempt, and go back to their in-process protocol once the server is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.credentials import Credentials
from reconciler.core.reasons import GIT_UNAVAILABLE
from reconciler.gitops.source import GitSource
from reconciler.gitops.statuswriter import StatusWriter
from tests._git_fixtures import Upstream, git, make_status
from tests._servers import GitHttp, Pki, private_file

PASSWORD = "busy-secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GitHttp, Upstream, Credentials]]:
    up = Upstream(tmp_path / "up")
    up.commit({"fleet.yaml": "x: 1\n"})
    with GitHttp(tmp_path / "nginx", Pki.make(tmp_path / "pki"), users={"device": PASSWORD}, tuf_token="t") as http:
        http.publish_repo("fleet.git", up.bare)
        yield http, up, Credentials(username="device", password_file=private_file(tmp_path / "pw", PASSWORD))


def requests_since(http: GitHttp, since: int, at_least: int = 1) -> list[tuple[str, str, str]]:
    """(method, last path segment, status) of each request nginx logged after ``since`` (nginx logs a request
    after answering it: wait up to 5 s for ``at_least`` lines)."""
    deadline = time.monotonic() + 5
    while len(http.requests()) - since < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # and nothing more is on its way
    return [(f[0], f[1].rsplit("/", 1)[-1], f[2]) for f in (line.split() for line in http.requests()[since:])]


def test_a_502_fails_the_poll_and_the_next_poll_is_still_one_ls_refs(server, tmp_path: Path) -> None:
    http, up, creds = server
    src = GitSource(http.url("fleet.git"), tmp_path / "cache", credentials=creds)
    try:
        assert src.poll(None).ok
        http.stop_backend()
        before = len(http.requests())
        failed = src.poll(None)
        assert not failed.ok and failed.reason == GIT_UNAVAILABLE
        assert "HTTP 502" in failed.message
        assert requests_since(http, before) == [("POST", "git-upload-pack", "502")]  # no git ls-remote after it

        http.start_backend()
        new = up.commit({"fleet.yaml": "x: 2\n"})
        before = len(http.requests())
        result = src.poll(None)
        assert result.ok and result.commit == new
        polls = [r for r in requests_since(http, before) if r[1] == "git-upload-pack"]
        # The ls-refs poll, then git fetch's own requests: no GET info/refs of a git ls-remote before them.
        assert requests_since(http, before)[0] == ("POST", "git-upload-pack", "200") and polls
        before = len(http.requests())
        assert src.poll(new).ok
        assert requests_since(http, before) == [("POST", "git-upload-pack", "200")]
    finally:
        src.close()


def test_a_502_fails_the_push_without_git_push_and_the_retry_lands(server, tmp_path: Path) -> None:
    http, up, creds = server
    w = StatusWriter(http.url("fleet.git"), "cam-7", tmp_path / "dev", credentials=creds, heartbeat_interval=0,
                     retry_base=0.2, retry_max=0.5)
    try:
        w.submit(make_status("cam-7", version="1.0.0"))
        assert w.flush(15)
        http.stop_backend()
        before = len(http.requests())
        w.submit(make_status("cam-7", version="1.1.0"))
        assert not w.flush(1.5)
        rep = w.reporting()
        assert rep["pushed"] is False and rep["reason"] == GIT_UNAVAILABLE and "HTTP 502" in rep["lastError"]
        tried = requests_since(http, before)
        # Each attempt is the one in-process request, refused; `git push` would add a GET info/refs of its own.
        assert tried and set(tried) <= {("POST", "git-receive-pack", "502"), ("GET", "refs", "502")}
        assert sum(r[1] == "refs" for r in tried) <= sum(r[1] == "git-receive-pack" for r in tried)

        http.start_backend()
        assert w.flush(15)
        assert w.reporting()["pushed"] is True
        assert "1.1.0" in git(up.bare, "cat-file", "blob", "refs/heads/status/cam-7:status.yaml")
    finally:
        w.close()
