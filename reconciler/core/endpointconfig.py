"""One endpoint's ``credentials`` block of a config file, read the same way by the agent and the gateway (pure).

The agent's config (``AgentConfig``) and a site gateway's (``GatewayConfig``) both name, per server they talk to,
who they are (user name + password file, bearer token file, SSH key), whom they trust (``caFile``,
``extraCaFile``, a pinned known-hosts file), the client certificate a server asks for (``clientCertFile`` +
``clientKeyFile``) and the route (``proxy`` — a URL or ``direct`` — with ``proxyUsername`` +
``proxyPasswordFile``). Both schemas share the block (``agentconfig.schema.json#/$defs/gitCredentials`` and
``httpCredentials``); :func:`parse_credentials` turns a validated block into a
:class:`~reconciler.core.credentials.Credentials` of paths and refuses what the schema cannot say: keys that
only make sense together, a proxy URL that no client could use or that holds a user name or password.

Errors are :class:`~reconciler.core.errors.UserError` at ``file:line`` of the value (:func:`where`, from the
YAML node tree of the file), so an operator reads which line to fix. Nothing is read from the files here: a
secret file is checked when it is used, so a rotated one applies without a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.credentials import Credentials
from reconciler.core.errors import UserError
from reconciler.core.proxy import DIRECT, ProxyURLError, normalise_proxy
from reconciler.core.redact import redact_url, userinfo_problem

JsonPath = Sequence[str | int]
#: ``where(json path) -> "file:line"`` of the value at that path (or of its deepest existing parent).
Where = Callable[[JsonPath], str]
PROXY_HINT = "put the proxy's user name in proxyUsername and its password in a file named by proxyPasswordFile"


def line_of(node: yaml.Node | None, path: JsonPath) -> int | None:
    """1-based line of the YAML node at the JSON ``path`` (or of its deepest existing ancestor)."""
    if node is None:
        return None
    cur = node
    for key in path:
        nxt: yaml.Node | None = None
        if isinstance(cur, yaml.MappingNode):
            for k, v in cur.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    nxt = v
                    break
        elif isinstance(cur, yaml.SequenceNode) and isinstance(key, int) and key < len(cur.value):
            nxt = cur.value[key]
        if nxt is None:
            break
        cur = nxt
    return cur.start_mark.line + 1


def where(label: str, root: yaml.Node | None, path: JsonPath) -> str:
    """``label:line`` of the value at ``path`` in the document ``root`` (``label`` alone without a line)."""
    line = line_of(root, path)
    return f"{label}:{line}" if line else label


def dotted(path: JsonPath) -> str:
    """``spec.capture.allowedOrigins[0]`` for ``["spec", "capture", "allowedOrigins", 0]``."""
    return ".".join(str(k) if isinstance(k, str) else f"[{k}]" for k in path).replace(".[", "[")


def proxy_userinfo_refusal(value: Any, at: JsonPath, where_: Where) -> None:
    """UserError at ``file:line`` when a ``proxy`` value holds userinfo: it would show in logs, status and git's
    environment. Called before the schema is checked (its messages quote values)."""
    if not isinstance(value, str):
        return
    url = value if "://" in value else "http://" + value
    problem = userinfo_problem(url, ssh_login=False)
    if problem:
        raise UserError(f"{where_(at)}: {dotted(at)} {redact_url(url)} holds {problem}, which would show in `ps`, "
                        f"logs and status; take it out of the URL and {PROXY_HINT}")


def parse_credentials(d: Mapping[str, Any] | None, at: JsonPath, where_: Where,
                      path: Callable[[str | None], Path | None], *, bundle_dir: Path | None = None
                      ) -> Credentials | None:
    """The :class:`Credentials` of the validated block ``d`` found at ``at`` (None without a block).

    ``path`` resolves a file name of the config (relative to the file, ``$CREDENTIALS_DIRECTORY``);
    ``bundle_dir`` is where derived files go (git's combined CA bundle for ``extraCaFile``)."""
    if d is None:
        return None
    at = list(at)
    if ("passwordFile" in d) != ("username" in d):
        raise UserError(f"{where_(at)}: credentials.username and credentials.passwordFile go together (GitHub "
                        "tokens: username x-access-token)")
    if "passwordFile" in d and "bearerTokenFile" in d:
        raise UserError(f"{where_(at)}: use either passwordFile or bearerTokenFile")
    if ("proxyUsername" in d) != ("proxyPasswordFile" in d):
        raise UserError(f"{where_(at)}: proxyUsername and proxyPasswordFile go together")
    if "clientKeyFile" in d and "clientCertFile" not in d:
        raise UserError(f"{where_([*at, 'clientKeyFile'])}: credentials.clientKeyFile needs clientCertFile (the "
                        "certificate it is the key of)")
    proxy = d.get("proxy")
    proxy_userinfo_refusal(proxy, [*at, "proxy"], where_)
    if proxy is not None and proxy != DIRECT:
        try:
            proxy = normalise_proxy(proxy, where=dotted([*at, "proxy"]))
        except ProxyURLError as exc:
            raise UserError(f"{where_([*at, 'proxy'])}: {exc} (or `{DIRECT}` for no proxy)") from None
    return Credentials(username=d.get("username"), password_file=path(d.get("passwordFile")),
                       bearer_token_file=path(d.get("bearerTokenFile")), ssh_key_file=path(d.get("sshKeyFile")),
                       known_hosts_file=path(d.get("knownHostsFile")), ca_file=path(d.get("caFile")),
                       extra_ca_file=path(d.get("extraCaFile")), client_cert_file=path(d.get("clientCertFile")),
                       client_key_file=path(d.get("clientKeyFile")), proxy=proxy,
                       proxy_username=d.get("proxyUsername"), proxy_password_file=path(d.get("proxyPasswordFile")),
                       bundle_dir=bundle_dir)
