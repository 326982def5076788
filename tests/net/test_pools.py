"""The shared pools through a real proxy (tinyproxy, tests/_proxy.py): plain http forwarded in absolute form,
https kept alive in one CONNECT tunnel, the proxy's own credentials sent to the proxy only, a refused tunnel
named, and the TUF download deadline still cutting a dripping server off through the proxy."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core import reasons as R
from reconciler.core.credentials import CredentialError, Credentials
from reconciler.distribution.httpserve import Drip
from reconciler.distribution.tufclient import TufClientError
from reconciler.gitops.lsrefs import LsRefsClient, LsRefsError
from reconciler.net.pools import Pools
from tests._agent_fixtures import wait_for
from tests._proxy import PROXIED_FROM, TinyProxy
from tests._servers import GitHttp, Pki
from tests._tuf_fixtures import Published, published  # noqa: F401

PROXY_USER, PROXY_PW = "egress", "Pr0xyPw-e71"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitHttp, TinyProxy, TinyProxy, Pki]]:
    root = tmp_path_factory.mktemp("pools")
    pki = Pki.make(root / "pki")
    bare = root / "fleet.git"
    work = root / "work"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "one"], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", str(bare), "main"], check=True)
    with GitHttp(root / "nginx", pki, users={"u": "p"}, tuf_token="t") as http, \
            TinyProxy(root / "open") as open_proxy, \
            TinyProxy(root / "auth", basic_auth=(PROXY_USER, PROXY_PW)) as auth_proxy:
        http.publish_repo("fleet.git", bare)
        yield http, open_proxy, auth_proxy, pki


def test_plain_http_is_forwarded_in_absolute_form(servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    http, proxy, _, _ = servers
    url = http.url("fleet.git")
    client = LsRefsClient(url, authorization=lambda: None, credentials=Credentials(proxy=proxy.url))
    assert set(client.ls_refs(["refs/heads/"])) == {"refs/heads/main"}
    assert f"POST {url}/git-upload-pack HTTP/1.1" in proxy.requests()
    # nginx logs a request once its answer is sent: wait for the line
    wait_for(lambda: ("POST", "/git/fleet.git/git-upload-pack", "200", PROXIED_FROM) in http.peers(), 5,
             what="nginx's log line")


def test_https_polls_share_one_tunnel(servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    http, proxy, _, pki = servers
    url = http.url("fleet.git", tls=True)
    connects = lambda: sum(r.startswith(f"CONNECT 127.0.0.1:{http.https_port} ") for r in proxy.requests())  # noqa: E731
    before = connects()
    client = LsRefsClient(url, authorization=lambda: None, credentials=Credentials(ca_file=pki.ca, proxy=proxy.url))
    for _ in range(5):
        assert "refs/heads/main" in client.ls_refs(["refs/heads/"])
    client.close()
    assert connects() == before + 1


def test_the_proxys_credentials_go_to_the_proxy_only(servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    http, _, proxy, pki = servers
    assert proxy.tap is not None
    url = http.url("fleet.git", tls=True) + "/info/refs?service=git-upload-pack"
    port = proxy.tap.port
    pools = Pools(Credentials(ca_file=pki.ca), env={"https_proxy": f"http://{PROXY_USER}:{PROXY_PW}@127.0.0.1:{port}"})
    start = len(proxy.tap.seen)
    assert pools.request("GET", url, headers={"Authorization": "Basic b3JpZ2luOnNlY3JldA=="}).status == 200
    seen = proxy.tap.seen[start:]
    assert b"proxy-authorization: basic " in seen.lower() and b"b3JpZ2luOnNlY3JldA==" not in seen  # origin's: in the tunnel

    wrong_env = {"https_proxy": f"http://{PROXY_USER}:wrong-pw@127.0.0.1:{port}"}
    wrong = LsRefsClient(http.url("fleet.git", tls=True), authorization=lambda: None,
                         credentials=Credentials(ca_file=pki.ca), env=wrong_env)
    with pytest.raises(LsRefsError) as err:
        wrong.ls_refs(["refs/heads/"])
    assert err.value.reason == R.GIT_UNAVAILABLE
    # tinyproxy answers a wrong proxy password with 401 (squid: 407)
    assert "through the proxy: the proxy refused the tunnel (401 Unauthorized)" in str(err.value), str(err.value)
    assert "wrong-pw" not in str(err.value)


def test_the_download_deadline_holds_through_the_proxy(published: Published,  # noqa: F811
                                                       servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    _, proxy, _, _ = servers
    data = os.urandom(20_000)
    path = published.add("big.onnx", data)
    client = published.client(timeout=0.5, min_rate=65536, credentials=Credentials(proxy=proxy.url))
    client.refresh()
    published.server.drip = Drip("big.onnx", every=0.004)  # ~250 bytes/s: five times the deadline and more
    t0 = time.monotonic()
    with pytest.raises(TufClientError) as err:
        client.fetch([path])
    took = time.monotonic() - t0
    assert err.value.reason == R.SLOW_RETRIEVAL and took < 0.5 + len(data) / 65536 + 1.5, (took, str(err.value))
    assert any(r.startswith(f"GET {published.targets_url}/") for r in proxy.requests())


def test_capture_uploads_go_through_the_proxy_with_the_token_inside_the_tunnel(
        servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    from reconciler.capture.upload import HttpDestination
    from tests.capture._capture import Recorder

    _, proxy, _, pki = servers
    assert proxy.tap is not None
    token = "capture-T0ken-0b9e"
    with Recorder(pki) as store:
        start = len(proxy.tap.seen)
        dest = HttpDestination(store.url, "dev-1", token=token, tls=Credentials(ca_file=pki.ca, proxy=proxy.url))
        assert dest.put_bytes("b1.mfcap", b"sealed batch") is True
        assert [m for m, _, _ in store.requests] == ["MKCOL", "PUT", "GET"]  # the read-back too
        assert {h.get("Authorization") for _, _, h in store.requests} == {f"Bearer {token}"}
        port = store.url.split(":")[2].split("/")[0]
        assert sum(r.startswith(f"CONNECT 127.0.0.1:{port} ") for r in proxy.requests()) == 3
        assert token.encode() not in proxy.tap.seen[start:]


def test_the_proxys_password_from_a_private_file_reaches_the_proxy_from_both_clients(
        servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki], tmp_path: Path) -> None:
    from reconciler.gitops.auth import GitAuth
    from reconciler.gitops.verify import run_git
    from tests._servers import private_file

    http, _, proxy, pki = servers
    assert proxy.tap is not None
    creds = Credentials(ca_file=pki.ca, proxy=proxy.url, proxy_username=PROXY_USER,
                        proxy_password_file=private_file(tmp_path / "proxy-pw", PROXY_PW))
    url = http.url("fleet.git", tls=True)
    start = len(proxy.tap.seen)
    client = LsRefsClient(url, authorization=lambda: None, credentials=creds)
    assert "refs/heads/main" in client.ls_refs(["refs/heads/"])  # in-process: Proxy-Authorization on CONNECT
    out = run_git(["ls-remote", "--", url, "refs/heads/main"], env=GitAuth(url, creds).env(), timeout=30)
    assert b"refs/heads/main" in out.stdout  # git: the proxy URL with the password, in its environment
    assert proxy.tap.seen[start:].lower().count(b"proxy-authorization: basic ") >= 2
    (tmp_path / "proxy-pw").chmod(0o644)
    with pytest.raises(CredentialError, match="too open"):
        LsRefsClient(url, authorization=lambda: None, credentials=creds)


def test_redirects_are_still_refused_through_the_proxy(servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki]) -> None:
    from reconciler.capture.upload import HttpDestination, UploadError
    from reconciler.gitops.lsrefs import NotV2
    from tests.capture._capture import Recorder

    _, proxy, _, pki = servers
    with Recorder(pki) as elsewhere, Recorder(pki, redirect_to=elsewhere.url) as redirecting:
        via = Credentials(ca_file=pki.ca, proxy=proxy.url)
        client = LsRefsClient(redirecting.url + "/fleet.git", authorization=lambda: "Bearer ls-T0k", credentials=via)
        with pytest.raises(NotV2, match="HTTP 307"):  # not followed
            client.ls_refs(["refs/heads/"])
        dest = HttpDestination(redirecting.url, "dev-1", token="cap-T0k", tls=via)
        with pytest.raises(UploadError, match="HTTP 307"):
            dest.put_bytes("b.mfcap", b"batch")
        assert redirecting.requests and elsewhere.requests == []


def test_a_rotated_proxy_password_file_applies_without_a_restart(
        servers: tuple[GitHttp, TinyProxy, TinyProxy, Pki], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The proxy's password changes (tinyproxy restarted with another BasicAuth) and the operator rotates the
    file: the clients built before — the kept-alive ls-refs pool and the shared pools — use the new one at their
    next request, and neither password shows in an error, a log line or git's argv."""
    from reconciler.gitops.auth import GitAuth
    from reconciler.gitops.verify import run_git
    from tests._servers import private_file

    http, _, _, pki = servers
    old, new = "R0tate-0ld-5a1", "R0tate-N3w-c77"
    with TinyProxy(tmp_path / "rotating", basic_auth=(PROXY_USER, old)) as proxy:
        pw = private_file(tmp_path / "proxy-pw", old)
        creds = Credentials(ca_file=pki.ca, proxy=proxy.url, proxy_username=PROXY_USER, proxy_password_file=pw)
        url = http.url("fleet.git", tls=True)
        client = LsRefsClient(url, authorization=lambda: None, credentials=creds)
        pools = Pools(creds, retries=False)
        assert "refs/heads/main" in client.ls_refs(["refs/heads/"])
        assert pools.request("GET", f"{url}/info/refs?service=git-upload-pack").status == 200

        proxy.restart(basic_auth=(PROXY_USER, new))  # the proxy's password changed; the file not yet
        with pytest.raises(LsRefsError) as err:
            client.ls_refs(["refs/heads/"])
        # (tinyproxy answers a CONNECT without the right credentials with 401, not 407)
        assert "the proxy refused the tunnel" in str(err.value)
        assert old not in str(err.value) and new not in str(err.value)

        private_file(pw, new)  # rotated: the same clients, no restart
        assert "refs/heads/main" in client.ls_refs(["refs/heads/"])
        assert pools.request("GET", f"{url}/info/refs?service=git-upload-pack").status == 200
        env = GitAuth(url, creds).env()
        out = run_git(["ls-remote", "--", url, "refs/heads/main"], env=env, timeout=30)
        assert b"refs/heads/main" in out.stdout
        assert sum(r.startswith("CONNECT ") for r in proxy.requests()) >= 4
    text = caplog.text + str(out.args)
    assert old not in text and new not in text
