"""The agent behind an egress proxy and against servers that require a client certificate, on real servers
(tests/_proxy_mtls.py): nginx + git http-backend over HTTPS with Basic auth and a private CA, the TUF repository
behind a bearer token, Debian's tinyproxy whose upstream connections come from 127.0.0.2, so nginx's log tells
which requests came through it. Every request of a device — the in-process ls-refs poll and
status push, git's fetches, TUF metadata and targets, ``modelfleet check``'s probes — takes the route its
endpoint's settings give, and the origin's credentials cross the proxy only inside the TLS tunnel."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._agent_fixtures import (
    REPO_ROOT,
    AgentProcess,
    World,
    condition,
    read_status,
    wait_for,
    which_version,
)
from tests._cli import run_cli
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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with central(tmp_path_factory.mktemp("proxy-mtls")) as servers:
        yield servers


def _world(env: Env, tmp_path: Path, name: str) -> World:
    return published_world(env, tmp_path, name)


def _config(env: Env, w: World, d: Path, name: str, *, mtls: bool = False, trust: dict[str, str] | None = None,
            source: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
            tuf: dict[str, Any] | None = None) -> Path:
    """An agent config for ``name`` over HTTPS: Basic auth to read and push, a bearer token for TUF, the test CA
    as ``trust`` (default ``caFile``), and each block's extra ``credentials`` settings."""
    sec = d / "secrets"
    trust = trust if trust is not None else {"caFile": str(env.pki.ca)}
    tuf_base = env.http.publish_tuf(name, w.tuf_dir, mtls=mtls)
    return w.agent_config(d, poll="300ms", status=True, extra={
        "source": {"url": env.http.url(f"{name}.git", private=True, tls=True, mtls=mtls),
                   "credentials": {"username": "device-read", "passwordFile": str(private_file(sec / "read", READ_PW)),
                                   **trust, **(source or {})}},
        "status": {"credentials": {"username": "device-push", "passwordFile": str(private_file(sec / "push", PUSH_PW)),
                                   **trust, **(status or {})}},
        "tuf": {"metadataUrl": f"{tuf_base}/metadata/", "targetsUrl": f"{tuf_base}/targets/",
                "credentials": {"bearerTokenFile": str(private_file(sec / "tuf", TUF_TOKEN)), **trust, **(tuf or {})}},
    })


def _server_status(w: World) -> dict[str, Any] | None:
    p = subprocess.run(["git", "--git-dir", str(w.upstream.bare), "show", "refs/heads/status/dev-1:status.yaml"],
                       capture_output=True)
    return yaml.safe_load(p.stdout) if p.returncode == 0 else None


@contextlib.contextmanager
def _agent(config: Path, log: Path, environ: dict[str, str | None]) -> Iterator[AgentProcess]:
    agent = AgentProcess(config, log, env={**NO_PROXY_ENV, **environ}).start()
    try:
        yield agent
    finally:
        assert agent.stop() == 0


def _converge_and_report(agent: AgentProcess, w: World, d: Path) -> None:
    """1.0.0 served and its status pushed, then 1.1.0 found by an idle poll, served and reported."""
    url = agent.url()
    wait_for(lambda: which_version(url, w) == "1.0.0", 60, what="convergence")
    w.publish("1.1.0", bias=1.0)
    w.commit_fleet("1.1.0")
    wait_for(lambda: which_version(url, w) == "1.1.0", 60, what="the next version")
    wait_for(lambda: (s := _server_status(w)) and any(
        e.get("version") == "1.1.0" for e in s["status"].get("endpoints") or []), 30, what="status of 1.1.0 pushed")


def _routes(env: Env, name: str) -> dict[str, set[str]]:
    """Where nginx saw each kind of request for ``name`` come from (127.0.0.2: through the proxy)."""
    kinds = {"ls-refs or fetch": f"/private/{name}.git/git-upload-pack",
             "push": f"/private/{name}.git/git-receive-pack",
             "tuf metadata": f"/tuf/{name}/metadata/", "tuf target": f"/tuf/{name}/targets/"}
    out: dict[str, set[str]] = {k: set() for k in kinds}
    for _method, uri, _status, addr in env.http.peers():
        for kind, prefix in kinds.items():
            if uri.startswith(prefix):
                out[kind].add(addr)
    return out


def _check(config: Path, environ: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for k, v in {**NO_PROXY_ENV, **environ}.items():
        e.pop(k, None) if v is None else e.__setitem__(k, v)
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "check", "--agent-config", str(config)],
                          capture_output=True, text=True, env=e, cwd=REPO_ROOT, timeout=120)


def test_every_request_goes_through_the_environments_proxy_and_credentials_only_inside_the_tunnel(
        env: Env, tmp_path: Path) -> None:
    name = "fleet-env-proxy"
    w = _world(env, tmp_path, name)
    d = tmp_path / "device"
    config = _config(env, w, d, name)
    before = len(env.proxy.tap.seen) if env.proxy.tap else 0
    with _agent(config, d / "agent.log", {"https_proxy": env.proxy.url}) as agent:
        _converge_and_report(agent, w, d)
    routes = _routes(env, name)
    assert all(routes.values()), routes  # every kind of request happened
    assert routes == {k: {PROXIED_FROM} for k in routes}, routes  # and none went around the proxy
    port = env.http.https_port
    assert any(r.startswith(f"CONNECT 127.0.0.1:{port} ") for r in env.proxy.requests())
    seen = env.proxy.tap.seen[before:] if env.proxy.tap else b""
    assert f"CONNECT 127.0.0.1:{port}".encode() in seen
    assert b"Authorization" not in seen and not [s for s in SECRETS if s in seen]  # only inside the tunnel
    checked = _check(config, {"https_proxy": env.proxy.url})
    assert "git source" in checked.stdout and "tuf server" in checked.stdout, checked.stdout + checked.stderr
    probes = [p for p in env.http.peers() if p[1].startswith((f"/private/{name}.git/info/refs", f"/tuf/{name}/metadata/timestamp"))]
    assert probes and {p[3] for p in probes} == {PROXIED_FROM}, probes


def test_the_configured_proxy_wins_over_the_environment_and_direct_turns_it_off(env: Env, tmp_path: Path) -> None:
    name = "fleet-cfg-proxy"
    w = _world(env, tmp_path, name)
    d = tmp_path / "device"
    config = _config(env, w, d, name, source={"proxy": env.proxy.url}, status={"proxy": env.proxy.url},
                     tuf={"proxy": "direct"})
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request that used it would fail
    with _agent(config, d / "agent.log", {"https_proxy": dead}) as agent:
        _converge_and_report(agent, w, d)
    routes = _routes(env, name)
    assert routes == {"ls-refs or fetch": {PROXIED_FROM}, "push": {PROXIED_FROM}, "tuf metadata": {"127.0.0.1"},
                      "tuf target": {"127.0.0.1"}}, routes


def test_no_proxy_sends_matching_hosts_around_the_proxy(env: Env, tmp_path: Path) -> None:
    name = "fleet-no-proxy"
    w = _world(env, tmp_path, name)
    d = tmp_path / "device"
    config = _config(env, w, d, name)
    doc = yaml.safe_load(config.read_text())  # TUF by the server's other name: the one no_proxy lists
    for key in ("metadataUrl", "targetsUrl"):
        doc["spec"]["tuf"][key] = doc["spec"]["tuf"][key].replace("//127.0.0.1:", "//localhost:")
    config.write_text(yaml.safe_dump(doc))
    with _agent(config, d / "agent.log", {"https_proxy": env.proxy.url, "no_proxy": "example.com, .localhost"}) as agent:
        _converge_and_report(agent, w, d)
    routes = _routes(env, name)
    assert routes == {"ls-refs or fetch": {PROXIED_FROM}, "push": {PROXIED_FROM}, "tuf metadata": {"127.0.0.1"},
                      "tuf target": {"127.0.0.1"}}, routes


def test_a_missing_client_certificate_is_named_and_one_signed_by_the_servers_ca_works(
        env: Env, tmp_path: Path) -> None:
    name = "fleet-mtls"
    w = _world(env, tmp_path, name)
    d = tmp_path / "device"
    config = _config(env, w, d, name, mtls=True)
    server = f"https://127.0.0.1:{env.http.mtls_port}"
    with _agent(config, d / "agent.log", {}):
        cond = wait_for(lambda: (c := condition(read_status(d), "SourceAvailable")) and c["status"] == "False" and c,
                        60, what="SourceAvailable=False")
    assert cond["reason"] == "ClientCertificateRefused", cond
    assert server in cond["message"] and "requires a client certificate" in cond["message"], cond
    shown = run_cli("agent", "status", "--config", str(config))
    assert "SourceAvailable False   ClientCertificateRefused the server wants a client certificate" in shown.out, \
        shown.out
    checked = _check(config, {})
    assert checked.returncode != 0
    assert "requires a client certificate" in checked.stdout, checked.stdout

    # With a certificate the server's client CA signed, and the private CA added to the system store
    # (extraCaFile) instead of replacing it, everything works: git, the in-process clients and TUF.
    cert, key = env.pki.client_cert("dev-1")
    tls = {"clientCertFile": str(cert), "clientKeyFile": str(key)}
    config = _config(env, w, d, name, mtls=True, trust={"extraCaFile": str(env.pki.ca)}, source=tls, status=tls,
                     tuf=tls)
    with _agent(config, d / "agent-with-cert.log", {}) as agent:
        _converge_and_report(agent, w, d)
    assert list((d / "state" / "tls").glob("ca-*.pem"))  # git's bundle: the system's CAs and the extra one
    checked = _check(config, {})
    assert "client certificate" not in checked.stdout, checked.stdout


def test_a_client_certificate_the_server_does_not_trust_is_named(env: Env, tmp_path: Path) -> None:
    from reconciler.core.credentials import Credentials
    from reconciler.gitops.lsrefs import LsRefsClient, LsRefsError

    env.http.publish_repo("fleet-mtls-other.git", _world(env, tmp_path, "x").upstream.bare)
    cert, key = env.pki.client_cert("stranger", ca="other-ca")
    url = env.http.url("fleet-mtls-other.git", mtls=True)
    client = LsRefsClient(url, authorization=lambda: None,
                          credentials=Credentials(ca_file=env.pki.ca, client_cert_file=cert, client_key_file=key))
    with pytest.raises(LsRefsError) as err:
        client.ls_refs(["refs/heads/"])
    assert err.value.reason == "ClientCertificateRefused"
    assert str(err.value).startswith(f"https://127.0.0.1:{env.http.mtls_port}/git/fleet-mtls-other.git refused the "
                                     "client certificate")
