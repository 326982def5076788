"""A site gateway behind the site's egress proxy, talking to central servers that require a client certificate,
on real servers (tests/_proxy_mtls.py: nginx with ``ssl_verify_client on``, tinyproxy asking for its own
credentials and opening its upstream connections from 127.0.0.2) and a real ``modelfleet gateway run``.

Its upstream ``credentials`` take the agent's keys: the ``proxy`` with ``proxyUsername``/``proxyPasswordFile``
(over a dead ``https_proxy`` in its environment), ``caFile``, ``clientCertFile``/``clientKeyFile``. Without a
certificate every upstream is named ``ClientCertificateRefused`` in ``gateway status``; with one the central
server's CA signed, the mirror's polls and fetches, the relay's pushes and nginx's TUF requests all go through
the proxy, and a rotated proxy password applies without a restart. No secret reaches the log, the state, the
proxy in clear text, or a command line."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._gateway import GatewayProcess
from tests._git_fixtures import free_port
from tests._proxy import PROXIED_FROM
from tests._proxy_mtls import (
    NO_PROXY_ENV,
    PUSH_PW,
    READ_PW,
    SECRETS,
    TUF_TOKEN,
    Env,
    central,
    published_world,
)
from tests._servers import private_file

PROXY_USER, PROXY_PW, PROXY_PW2 = "site-egress", "Eg-Pr0xy-1f2e", "Eg-Pr0xy-r0t-9a8b"
NAME = "fleet-gw"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with central(tmp_path_factory.mktemp("gw-proxy-mtls"), proxy_auth=(PROXY_USER, PROXY_PW)) as servers:
        yield servers


def _gateway(env: Env, tmp_path: Path, tuf_dir: Path, tls: dict[str, str]) -> GatewayProcess:
    sec = tmp_path / "secrets"
    route = {"proxy": env.proxy.url, "proxyUsername": PROXY_USER,
             "proxyPasswordFile": str(private_file(sec / "proxy.pw", PROXY_PW)), "caFile": str(env.pki.ca), **tls}
    tuf = env.http.publish_tuf(NAME, tuf_dir, mtls=True)
    spec: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}", "dataDir": str(tmp_path / "gw" / "data"), "interval": "1h",
        "upstream": {
            "source": {"url": env.http.url(f"{NAME}.git", private=True, mtls=True),
                       "credentials": {"username": "device-read",
                                       "passwordFile": str(private_file(sec / "read", READ_PW)), **route}},
            "status": {"credentials": {"username": "device-push",
                                       "passwordFile": str(private_file(sec / "push", PUSH_PW)), **route}},
            # By name: nginx checks the central server's certificate against the name it asked for.
            "tuf": {"url": tuf.replace("//127.0.0.1:", "//localhost:"),
                    "credentials": {"bearerTokenFile": str(private_file(sec / "tuf", TUF_TOKEN)), **route}}}}
    dead = f"http://127.0.0.1:{free_port()}"  # the environment's proxy: nothing listens there
    return GatewayProcess(tmp_path / "gw", {"apiVersion": "modelfleet/v1", "kind": "GatewayConfig",
                                            "metadata": {"name": "site-9"}, "spec": spec},
                          environ={**NO_PROXY_ENV, "https_proxy": dead})


def _install(pair: tuple[Path, Path], cert: Path, key: Path) -> None:
    """Copy a certificate and its key where the gateway's config names them (the key 0600), in place."""
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(pair[0].read_bytes())
    private_file(key, pair[1].read_text().strip())


def _push_status(gw: GatewayProcess, where: Path) -> str:
    """A device's status commit pushed to the gateway (``status/dev-9``); its id."""
    work = where / "device-status"
    subprocess.run(["git", "init", "-q", "-b", "status/dev-9", str(work)], check=True)
    (work / "status.yaml").write_text("status: {}\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=d", "-c", "user.email=d@d", "commit", "-qm", "s"],
                   check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", f"{gw.url}/git/status.git", "status/dev-9"], check=True)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_gateway_reaches_central_through_the_proxy_with_its_client_certificate(
        env: Env, tmp_path: Path) -> None:
    w = published_world(env, tmp_path, NAME)
    server = f"https://127.0.0.1:{env.http.mtls_port}"

    # No client certificate: each upstream says so, naming the server.
    gw = _gateway(env, tmp_path / "no-cert", w.tuf_dir, {}).start()
    try:
        _push_status(gw, tmp_path / "no-cert")
        st = gw.round()
    finally:
        gw.stop()
    assert st["status"]["reason"] == "ClientCertificateRefused", st["status"]
    assert st["status"]["lastError"].startswith(f"ClientCertificateRefused: {server}/private/{NAME}.git requires a "
                                                "client certificate and none is configured"), st["status"]
    assert st["mirror"]["reason"] == "ClientCertificateRefused", st["mirror"]
    assert st["mirror"]["lastError"].startswith(f"ClientCertificateRefused: {server}/private/{NAME}.git requires a "
                                                "client certificate and none is configured"), st["mirror"]
    assert st["tuf"]["reason"] == "ClientCertificateRefused" and "localhost" in st["tuf"]["lastError"], st["tuf"]
    assert "ClientCertificateRefused" in gw.log_path.read_text()

    # A certificate the central client CA signed: everything works, through the proxy only.
    signed = env.pki.client_cert("site-9")
    cert, key = tmp_path / "tls" / "site-9.pem", tmp_path / "tls" / "site-9.key"
    _install(signed, cert, key)
    gw = _gateway(env, tmp_path / "cert", w.tuf_dir, {"clientCertFile": str(cert), "clientKeyFile": str(key)}).start()
    try:
        st = gw.state()
        assert st is not None and st["mirror"]["reason"] is None and st["tuf"]["ok"], st
        head = subprocess.run(["git", "--git-dir", str(w.upstream.bare), "rev-parse", "refs/heads/main"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert st["mirror"]["heads"] == {"refs/heads/main": head}
        with urllib.request.urlopen(f"{gw.url}/tuf/metadata/timestamp.json", timeout=30) as resp:
            assert json.load(resp)["signed"]["_type"] == "timestamp"
        sha = _push_status(gw, tmp_path)
        st = gw.round()
        assert st["status"]["reason"] is None and st["status"]["relayed"] == 1, st["status"]
        upstream = subprocess.run(["git", "--git-dir", str(w.upstream.bare), "rev-parse", "refs/heads/status/dev-9"],
                                  capture_output=True, text=True).stdout.strip()
        assert upstream == sha

        # The proxy's password changes and the operator rotates the file: the next round uses it, no restart.
        env.proxy.restart(basic_auth=(PROXY_USER, PROXY_PW2))
        # Past the cached timestamp.json's lifetime (tufCache.metadataSeconds: 1 s, which nginx counts in whole
        # seconds, so up to 2 s): the probe's request goes upstream.
        time.sleep(2.5)
        st = gw.round()
        assert st["mirror"]["reason"] == "GitUnavailable" and "proxy" in st["mirror"]["lastError"], st["mirror"]
        assert not st["tuf"]["ok"] and "refused the tunnel" in st["tuf"]["lastError"], st["tuf"]
        private_file(tmp_path / "cert" / "secrets" / "proxy.pw", PROXY_PW2)
        w.commit_fleet("1.0.0", message="a new head")
        st = gw.round()
        assert st["mirror"]["reason"] is None and st["mirror"]["fetches"] >= 2 and st["tuf"]["ok"], st

        # The certificate files are replaced (by one another CA signed, then the good one again): nginx is
        # reloaded with each at the next round, no restart.
        _install(env.pki.client_cert("stranger", ca="other-ca"), cert, key)
        time.sleep(2.5)
        st = gw.round()
        assert st["tuf"]["reason"] == "ClientCertificateRefused", st["tuf"]
        assert "refused the client certificate" in st["tuf"]["lastError"], st["tuf"]
        _install(signed, cert, key)
        time.sleep(2.5)
        assert gw.round()["tuf"]["ok"]
        assert gw.log_path.read_text().count("nginx reloaded") == 2
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in (gw.pid,)]
    finally:
        gw.stop()
        env.proxy.restart(basic_auth=(PROXY_USER, PROXY_PW))

    routes: dict[str, set[str]] = {"git": set(), "push": set(), "tuf": set()}
    for _method, uri, _status, addr in env.http.peers():
        for kind, prefix in (("git", f"/private/{NAME}.git/git-upload-pack"),
                             ("push", f"/private/{NAME}.git/git-receive-pack"), ("tuf", f"/tuf/{NAME}/metadata/")):
            if uri.startswith(prefix):
                routes[kind].add(addr)
    assert routes == {"git": {PROXIED_FROM}, "push": {PROXIED_FROM}, "tuf": {PROXIED_FROM}}, routes
    seen = env.proxy.tap.seen if env.proxy.tap else b""
    assert not [s for s in SECRETS if s in seen]  # the origins' credentials only inside the tunnels
    for root in (tmp_path / "no-cert", tmp_path / "cert"):
        text = ((root / "gw" / "gateway.log").read_bytes() + (root / "gw" / "data" / "run" / "state.json").read_bytes()
                + b"".join(cmdlines))
        for secret in (*SECRETS, PROXY_PW.encode(), PROXY_PW2.encode()):
            assert secret not in text, secret
        assert PROXY_PW.encode() not in (root / "gw" / "data" / "run" / "nginx.conf").read_bytes()
