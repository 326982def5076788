"""The ls-refs microcache of :class:`tests._servers.GitHttp` (docs/scale.md), against the real nginx.

The device's idle poll (:mod:`reconciler.gitops.lsrefs`) is answered from nginx for the cache's validity after
one ``git http-backend`` call; pushes, fetches, clones and wrong credentials never touch the cache. A wrapper
around the backend logs every CGI start, so "reached the backend" is counted, not inferred.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.core.reasons import AUTHENTICATION_FAILED
from reconciler.gitops.lsrefs import LsRefsClient, LsRefsError
from tests._git_fixtures import Upstream, git
from tests._servers import GIT_HTTP_BACKEND, GitHttp, Pki

VALID = 5  # seconds; long enough that a push between two polls lands inside it even on a loaded machine
PASSWORD = "cache-secret"
MAIN = "refs/heads/main"


@dataclass
class Server:
    http: GitHttp
    root: Path
    backend_log: Path

    def repo(self, name: str) -> Upstream:
        up = Upstream(self.root / name, name=f"{name}.git")
        up.commit({"fleet.yaml": "x: 1\n"}, "first")
        self.http.publish_repo(f"{name}.git", up.bare)
        return up

    def backend_calls(self, name: str) -> list[str]:
        """``METHOD PATH`` of every git http-backend start for repository ``name``."""
        lines = self.backend_log.read_text().splitlines() if self.backend_log.exists() else []
        return [line for line in lines if f"/{name}.git/" in line]

    def log(self, name: str, count: int) -> list[list[str]]:
        """The access log's ``count`` lines for repository ``name`` (nginx logs just after the response)."""
        deadline = time.monotonic() + 5
        while True:
            lines = [line.split() for line in self.http.requests() if f"/{name}.git/" in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def poller(self, name: str, *, private: bool = False, password: str | None = None) -> LsRefsClient:
        auth = None if password is None else "Basic " + base64.b64encode(f"device:{password}".encode()).decode()
        return LsRefsClient(self.http.url(f"{name}.git", private=private), authorization=lambda: auth)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lsrefs-cache")
    log = root / "backend.log"
    wrapper = root / "git-http-backend-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$REQUEST_METHOD $PATH_INFO" >> {log}\nexec {GIT_HTTP_BACKEND}\n')
    wrapper.chmod(0o755)
    http = GitHttp(root / "nginx", Pki.make(root / "pki"), users={"device": PASSWORD}, tuf_token="t",
                   ls_refs_cache_s=VALID)
    http.backend = wrapper
    with http:
        yield Server(http, root, log)


def push_over_http(server: Server, up: Upstream, name: str, message: str) -> str:
    oid = up.commit({"fleet.yaml": f"message: {message}\n"}, message, push=False)
    url = server.http.url(f"{name}.git").replace("http://", f"http://device:{PASSWORD}@")
    git(up.work, "push", "--quiet", url, f"HEAD:{MAIN}")
    assert git(up.bare, "rev-parse", MAIN) == oid
    return oid


def test_repeated_polls_reach_the_backend_once_per_validity(server: Server) -> None:
    up = server.repo("polled")
    head = git(up.bare, "rev-parse", MAIN)
    client = server.poller("polled")
    try:
        assert [client.ls_ref(MAIN) for _ in range(5)] == [head] * 5
        assert client.ls_ref("refs/heads/absent") is None  # another body, another entry
    finally:
        client.close()
    assert server.backend_calls("polled") == ["POST /polled.git/git-upload-pack"] * 2
    assert [r[-1] for r in server.log("polled", 6)] == ["MISS", "HIT", "HIT", "HIT", "HIT", "MISS"]


def test_a_burst_of_polls_makes_one_backend_call(server: Server) -> None:
    up = server.repo("burst")
    head = git(up.bare, "rev-parse", MAIN)
    clients = [server.poller("burst") for _ in range(8)]
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            assert list(pool.map(lambda c: c.ls_ref(MAIN), clients)) == [head] * len(clients)
    finally:
        for c in clients:
            c.close()
    assert len(server.backend_calls("burst")) == 1  # the others waited on the cache lock


def test_a_push_is_seen_once_the_validity_has_passed(server: Server) -> None:
    up = server.repo("pushed")
    old = git(up.bare, "rev-parse", MAIN)
    client = server.poller("pushed")
    try:
        t0 = time.monotonic()
        assert client.ls_ref(MAIN) == old
        new = push_over_http(server, up, "pushed", "second")
        assert client.ls_ref(MAIN) == old  # the cached answer, at most VALID (+1 s: nginx's clock) old
        time.sleep(max(0.0, t0 + VALID + 1.1 - time.monotonic()))
        assert client.ls_ref(MAIN) == new
    finally:
        client.close()
    polls = [r for r in server.log("pushed", 6) if r[1].endswith("/git-upload-pack")]
    assert [r[-1] for r in polls] == ["MISS", "HIT", "EXPIRED"]


def test_push_fetch_and_clone_never_use_the_cache(server: Server, tmp_path: Path) -> None:
    up = server.repo("fetched")
    url = server.http.url("fetched.git")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", url, str(clone))
    client = server.poller("fetched")
    try:
        first = client.ls_ref(MAIN)
        new = push_over_http(server, up, "fetched", "second")
        assert client.ls_ref(MAIN) == first  # the poll is still within its validity...
    finally:
        client.close()
    git(clone, "fetch", "--quiet", "origin")  # ...but git's own ls-refs and fetch go to the backend
    assert git(clone, "rev-parse", "origin/main") == new
    git(clone, "cat-file", "-e", f"{new}^{{tree}}")
    served = [(r[0], r[1].rsplit("/", 1)[1], r[-1]) for r in server.log("fetched", 11)]
    clone_or_fetch = [("GET", "refs", "BYPASS"), ("POST", "git-upload-pack", "BYPASS"),  # ls-refs
                      ("POST", "git-upload-pack", "BYPASS")]  # fetch
    assert served == [*clone_or_fetch,
                      ("POST", "git-upload-pack", "MISS"),  # the poll
                      ("GET", "refs", "-"),  # the push's 401 challenge (auth before anything else)
                      ("GET", "refs", "BYPASS"), ("POST", "git-receive-pack", "BYPASS"),  # the push
                      ("POST", "git-upload-pack", "HIT"),  # the poll again
                      *clone_or_fetch]
    assert len(server.backend_calls("fetched")) == len(served) - 2  # all but the 401 and the HIT


def test_wrong_credentials_are_refused_before_the_cache(server: Server) -> None:
    up = server.repo("private")
    head = git(up.bare, "rev-parse", MAIN)
    good = server.poller("private", private=True, password=PASSWORD)
    try:
        assert good.ls_ref(MAIN) == head  # the answer is now in the cache, under a key without credentials
        assert good.ls_ref(MAIN) == head
    finally:
        good.close()
    for password in ("wrong", None):
        bad = server.poller("private", private=True, password=password)
        try:
            for _ in range(2):
                with pytest.raises(LsRefsError) as err:
                    bad.ls_ref(MAIN)
                assert err.value.reason == AUTHENTICATION_FAILED
        finally:
            bad.close()
    assert [(r[2], r[-1]) for r in server.log("private", 6)] == [("200", "MISS"), ("200", "HIT")] + [("401", "-")] * 4
    assert len(server.backend_calls("private")) == 1


def test_the_validity_is_whole_seconds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        GitHttp(tmp_path, Pki(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path), users={}, tuf_token="t",
                ls_refs_cache_s=0)
