"""The gateway's configuration file (kind ``GatewayConfig``, ``schemas/gatewayconfig.schema.json``).

:func:`load_gateway_config` validates the YAML and returns a :class:`GatewayConfig` with every default filled in
and relative paths resolved against the file's directory; a problem is a
:class:`~reconciler.core.errors.UserError` naming ``file:line`` and the field. Credentials are paths of files,
checked when used, as on a device (:mod:`reconciler.core.credentials`).

Each upstream (``source``, ``status``, ``tuf``) takes the agent's ``credentials`` block with the agent's own
parser (:mod:`reconciler.core.endpointconfig`): the same keys — a proxy (or ``direct``) with its credentials,
``caFile``/``extraCaFile``, a client certificate for a central server that asks for one — the same checks and
the same messages. A site gateway is the box behind the corporate proxy that talks to the central servers with
mutual TLS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.credentials import Credentials
from reconciler.core.endpointconfig import Where, dotted, parse_credentials, proxy_userinfo_refusal, where
from reconciler.core.errors import UserError
from reconciler.core.redact import has_password, redact, redact_url
from reconciler.core.units import parse_duration
from reconciler.fleet.manifests import schema_problem
from reconciler.fleet.schemas import validator

DEFAULT_LISTEN = "0.0.0.0:8780"
DEFAULT_DATA_DIR = "/var/lib/modelfleet-gateway"
DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    source_url: str
    tuf_url: str
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    interval: float = DEFAULT_INTERVAL
    branches: tuple[str, ...] = ("main",)
    source_credentials: Credentials = field(default_factory=Credentials)
    status_urls: tuple[str, ...] = ()  # empty: the fleet repository
    status_prefix: str = "status/"
    status_credentials: Credentials | None = None  # None: the source's
    tuf_credentials: Credentials = field(default_factory=Credentials)
    metadata_seconds: int = 1
    cache_max_size: str = "10g"
    cache_inactive: str = "30d"
    htpasswd_file: Path | None = None
    max_refs_per_push: int = 2000
    max_devices: int = 20000
    fcgiwrap_children: int = 4
    nginx: str = field(default_factory=lambda: shutil.which("nginx") or "/usr/sbin/nginx")
    fcgiwrap: str = field(default_factory=lambda: shutil.which("fcgiwrap") or "/usr/sbin/fcgiwrap")

    @property
    def upstream_status_urls(self) -> tuple[str, ...]:
        return self.status_urls or (self.source_url,)

    @property
    def relay_credentials(self) -> Credentials:
        return self.status_credentials if self.status_credentials is not None else self.source_credentials

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _refuse_userinfo(spec: Any, where_: Where) -> None:
    """UserError at ``file:line`` for a secret in an upstream URL or a proxy URL (before the schema: its messages
    quote values)."""
    up = spec.get("upstream") if isinstance(spec, dict) else None
    if not isinstance(up, dict):
        return
    for section, block in up.items():
        if not isinstance(block, dict):
            continue
        many = block.get("urls") if isinstance(block.get("urls"), list) else []
        urls = [(["url"], block.get("url")), *((["urls", i], u) for i, u in enumerate(many))]
        for sub, url in urls:
            at = ["spec", "upstream", section, *sub]
            if isinstance(url, str) and has_password(url):
                raise UserError(f"{where_(at)}: {dotted(at)} {redact_url(url)} embeds a password or token: put it "
                                "in a file and set credentials.username + credentials.passwordFile")
        creds = block.get("credentials")
        if isinstance(creds, dict):
            proxy_userinfo_refusal(creds.get("proxy"), ["spec", "upstream", section, "credentials", "proxy"], where_)


def parse_gateway_config(text: str, path: Path | None = None) -> GatewayConfig:
    """Parse and validate config text; ``path`` names the file in errors (``file:line``) and anchors relative
    paths."""
    label = str(path) if path else "<gateway config>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{label}:{mark.line + 1}" if mark is not None else label
        raise UserError(f"{at}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a GatewayConfig mapping (apiVersion, kind, metadata, spec)")

    def at(jpath: Sequence[str | int]) -> str:
        return where(label, root, jpath)

    _refuse_userinfo(data.get("spec"), at)
    errors = sorted(validator("GatewayConfig").iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors[:10]:  # said as the agent config says it: an unknown field with its near match
            problem = schema_problem(err)
            hint = f" (hint: {problem.hint})" if problem.hint else ""
            lines.append(f"{at(list(problem.path))}: {redact(problem.message)}{hint}")
        raise UserError(f"invalid gateway config {label}:\n  " + "\n  ".join(lines))
    base = path.parent if path else Path.cwd()

    def p(value: str | None) -> Path | None:
        if value is None:
            return None
        creds_dir = os.environ.get("CREDENTIALS_DIRECTORY", "/run/credentials/modelfleet-gateway.service")
        value = value.replace("${CREDENTIALS_DIRECTORY}", creds_dir).replace("$CREDENTIALS_DIRECTORY", creds_dir)
        q = Path(os.path.expanduser(value))
        return q if q.is_absolute() else base / q

    spec = data["spec"]
    up = spec["upstream"]
    src, status, tuf = up["source"], up.get("status") or {}, up["tuf"]
    cache, relay = spec.get("tufCache") or {}, spec.get("relay") or {}
    data_dir = p(spec.get("dataDir")) or Path(DEFAULT_DATA_DIR)

    def creds(section: str, d: dict[str, Any] | None) -> Credentials | None:
        # The agent's own parser: the same keys, checks and messages (reconciler.core.endpointconfig).
        return parse_credentials(d, ["spec", "upstream", section, "credentials"], at, p, bundle_dir=data_dir / "tls")

    try:
        interval = parse_duration(spec.get("interval", "10s"))
    except ValueError as exc:
        raise UserError(f"{at(['spec', 'interval'])}: spec.interval: {exc}") from None
    kw: dict[str, Any] = {}
    if spec.get("nginx"):
        kw["nginx"] = spec["nginx"]
    if spec.get("fcgiwrap"):
        kw["fcgiwrap"] = spec["fcgiwrap"]
    return GatewayConfig(
        name=data["metadata"]["name"], source_url=src["url"], tuf_url=tuf["url"].rstrip("/"),
        listen=spec.get("listen", DEFAULT_LISTEN), data_dir=data_dir,
        interval=max(1.0, interval), branches=tuple(src.get("branches") or ("main",)),
        source_credentials=creds("source", src.get("credentials")) or Credentials(),
        status_urls=tuple(status.get("urls") or ()), status_prefix=status.get("branchPrefix", "status/"),
        status_credentials=creds("status", status.get("credentials")),
        tuf_credentials=creds("tuf", tuf.get("credentials")) or Credentials(),
        metadata_seconds=int(cache.get("metadataSeconds", 1)), cache_max_size=cache.get("maxSize", "10g"),
        cache_inactive=cache.get("inactive", "30d"), htpasswd_file=p((spec.get("statusAuth") or {}).get("htpasswdFile")),
        max_refs_per_push=int(relay.get("maxRefsPerPush", 2000)), max_devices=int(relay.get("maxDevices", 20000)),
        fcgiwrap_children=int(spec.get("fcgiwrapChildren", 4)), **kw)


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: gateway config not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read gateway config: {exc}") from None
    return parse_gateway_config(text, p.resolve())
