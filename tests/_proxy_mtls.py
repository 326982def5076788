"""The central servers of the proxy and mutual-TLS tests, shared by the agent's (tests/agent/test_proxy_mtls.py)
and the gateway's (tests/gateway/test_gateway_proxy_mtls.py): nginx + git http-backend over HTTPS with Basic
auth, a private CA and a third port with ``ssl_verify_client on`` (tests/_servers.py), the TUF repository behind
a bearer token, and Debian's tinyproxy (tests/_proxy.py) whose upstream connections come from 127.0.0.2, so
nginx's log tells which requests came through it."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests._agent_fixtures import World
from tests._proxy import TinyProxy
from tests._servers import GitHttp, Pki

PUSH_PW = "push-Pr0xy-5c1e7a"
READ_PW = "read-Pr0xy-88d0f3"
TUF_TOKEN = "tuf-Pr0xy-T0k-41b2"
USERS = {"device-push": PUSH_PW, "device-read": READ_PW}
SECRETS = [PUSH_PW.encode(), READ_PW.encode(), TUF_TOKEN.encode(),
           *(base64.b64encode(f"{u}:{p}".encode()) for u, p in USERS.items())]
NO_PROXY_ENV: dict[str, str | None] = {k: None for k in ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
                                                         "ALL_PROXY", "no_proxy", "NO_PROXY")}


@dataclass
class Env:
    pki: Pki
    http: GitHttp
    proxy: TinyProxy


@contextlib.contextmanager
def central(root: Path, *, proxy_auth: tuple[str, str] | None = None) -> Iterator[Env]:
    """The central servers (client CA: the test CA) and a tinyproxy (asking for ``proxy_auth`` if given)."""
    pki = Pki.make(root / "pki")
    with GitHttp(root / "nginx", pki, users=USERS, tuf_token=TUF_TOKEN, client_ca=pki.ca) as http, \
            TinyProxy(root / "proxy", basic_auth=proxy_auth) as proxy:
        yield Env(pki, http, proxy)


def published_world(env: Env, tmp_path: Path, name: str) -> World:
    """A fleet repository with 1.0.0 published and committed, served by ``env.http`` as ``<name>.git``."""
    w = World(tmp_path / "world", daemon=False)
    w.publish("1.0.0", bias=0.0)
    w.commit_fleet("1.0.0")
    env.http.publish_repo(f"{name}.git", w.upstream.bare)
    return w
