"""The device agent's configuration file (``/etc/modelfleet/agent.yaml``, kind ``AgentConfig``).

Workflow: :func:`load_agent_config` reads the YAML, validates it against ``schemas/agentconfig.schema.json``
and returns an :class:`AgentConfig` with every default filled in and every relative path resolved against the
config file's directory. Any problem is a :class:`~reconciler.core.errors.UserError` naming ``file:line`` of the
offending value, so ``modelfleet agent run`` prints one clear line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler.capture.upload import origin_of
from reconciler.core.credentials import Credentials
from reconciler.core.endpointconfig import PROXY_HINT, dotted, parse_credentials, where
from reconciler.core.errors import UserError
from reconciler.core.redact import redact, redact_url, userinfo_problem
from reconciler.core.units import parse_duration
from reconciler.fleet.manifests import schema_problem
from reconciler.fleet.schemas import validator
from reconciler.serving.limits import ServerLimits

DEFAULT_STATE_DIR = "/var/lib/modelfleet"
# common.schema.json's `name`, for a device id that comes from the environment instead of the file.
_DEVICE_ID = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_SOURCE_TIMEOUT = 30.0
DEFAULT_TUF_TIMEOUT = 30.0
DEFAULT_TUF_MIN_RATE = 4096  # bytes/s; keep in step with distribution.fetcher.DEFAULT_MIN_RATE
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class AgentConfig:
    """The resolved agent settings (see the schema for each field's meaning)."""

    device_id: str
    source_url: str
    trusted_root: Path
    path: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    poll_interval: float | None = None
    source_branch: str = "main"
    source_path: str | None = None
    source_timeout: float = DEFAULT_SOURCE_TIMEOUT
    verify_mode: str = "none"
    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    allow_history_rewrite: bool = False
    bundle_dir: Path | None = None
    status_enabled: bool = True
    status_url: str | None = None
    status_branch_prefix: str | None = None
    heartbeat_interval: float | None = None
    status_push_spread: float = 0.0  # a new status waits a random time up to this before it is pushed
    status_signing_key: Path | None = None
    tuf_metadata_url: str | None = None
    tuf_targets_url: str | None = None
    decryption_key: Path | None = None
    max_concurrent_downloads: int = 2
    tuf_timeout: float = DEFAULT_TUF_TIMEOUT
    tuf_min_rate: int = DEFAULT_TUF_MIN_RATE
    serving_host: str = "127.0.0.1"
    serving_port: int = DEFAULT_PORT
    unix_socket: str | None = None
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    server_limits: ServerLimits = field(default_factory=ServerLimits)
    serving_workers: int = 1
    serving_grpc_port: int | None = None  # the gRPC front (modelfleet[grpc]); None: off
    serving_pin_workers: bool | None = None  # None: one CPU per worker when there are as many workers as CPUs
    openvino_cache_dir: Path | None = None
    threads: int | None = None
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    capture_token_file: Path | None = None
    capture_ca_file: Path | None = None
    capture_tls: Credentials = field(default_factory=Credentials)  # capture's proxy, CA files, client certificate
    capture_allowed_origins: tuple[str, ...] = ()  # normalised by capture.upload.origin_of
    capture_sealer: str = "process"  # where captured records are sealed: process | thread
    shadow_enabled: bool = True
    shadow_max_memory_mb: float | None = None
    shadow_reserve_mb: float = 64.0
    log_format: str = "text"
    log_level: str = "info"
    source_credentials: Credentials = field(default_factory=Credentials)
    status_credentials: Credentials | None = None  # None: the source's
    tuf_credentials: Credentials = field(default_factory=Credentials)
    gateway_url: str | None = None  # a site gateway, asked first (docs/gateway.md)
    gateway_credentials: Credentials | None = None
    gateway_upstream_check: float = 3600.0

    # What a gateway serves, at fixed paths under its base URL (reconciler.gateway).
    @property
    def gateway_source_url(self) -> str | None:
        return f"{self.gateway_url.rstrip('/')}/git/fleet.git" if self.gateway_url else None

    @property
    def gateway_status_url(self) -> str | None:
        return f"{self.gateway_url.rstrip('/')}/git/status.git" if self.gateway_url else None

    def gateway_tuf_urls(self) -> tuple[str, str] | None:
        """(metadata URL, targets URL) of the gateway's TUF cache."""
        if not self.gateway_url:
            return None
        base = self.gateway_url.rstrip("/")
        return f"{base}/tuf/metadata/", f"{base}/tuf/targets/"

    # Layout of the state directory.
    @property
    def journal_dir(self) -> Path:
        return self.state_dir

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "store"

    @property
    def default_status_key(self) -> Path:
        """Where ``modelfleet agent keygen`` puts the device's status signing key unless ``status.signingKey``
        names another path."""
        return self.state_dir / "identity" / "status_ed25519"

    @property
    def status_key_path(self) -> Path | None:
        """The status signing key the agent uses: ``status.signingKey``, else the default path when a key
        is there (unsigned status otherwise, which fleets with ``requireSignatures`` do not count)."""
        if self.status_signing_key is not None:
            return self.status_signing_key
        return self.default_status_key if self.default_status_key.is_file() else None

    @property
    def git_cache_dir(self) -> Path:
        return self.state_dir / "git"

    @property
    def tuf_metadata_dir(self) -> Path:
        return self.state_dir / "tuf"

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    @property
    def status_work_dir(self) -> Path:
        return self.state_dir / "status"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "agent.pid"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def ov_cache_dir(self) -> Path:
        return self.openvino_cache_dir or self.state_dir / "ov-cache"


def _where(path: Path | None, root: yaml.Node | None, jpath: list[str | int]) -> str:
    return where(str(path) if path else "<agent config>", root, jpath)


def _device_id(spec: Mapping[str, Any], environ: Mapping[str, str], where: Callable[[list[str | int]], str]) -> str:
    """``spec.deviceId``, or the value of the environment variable ``spec.deviceIdEnv`` names."""
    if ("deviceId" in spec) == ("deviceIdEnv" in spec):
        raise UserError(f"{where(['spec'])}: give exactly one of spec.deviceId and spec.deviceIdEnv")
    if "deviceId" in spec:
        return str(spec["deviceId"])
    var = spec["deviceIdEnv"]
    value = environ.get(var, "")
    if not value:
        raise UserError(f"{where(['spec', 'deviceIdEnv'])}: spec.deviceIdEnv: environment variable {var} is not "
                        "set (on Kubernetes: from spec.nodeName through the downward API)")
    if not _DEVICE_ID.fullmatch(value):
        raise UserError(f"{where(['spec', 'deviceIdEnv'])}: {var}={value!r} is not a valid device id (lower-case "
                        "letters, digits, '-' and '.', at most 63 characters)")
    return value


# The URLs of an agent config and where the secret goes instead of their userinfo (docs/hosting.md).
_GIT_HINT = ("put the secret in a file named by the `credentials` block next to the URL: username + passwordFile "
             "(a GitHub token: username x-access-token)")
_TUF_HINT = "put the token in a file named by spec.tuf.credentials: bearerTokenFile (or username + passwordFile)"
_CAPTURE_HINT = "put the upload token in a file named by spec.capture.uploadTokenFile"


def _refuse_userinfo(data: Mapping[str, Any], where: Callable[[list[str | int]], str]) -> None:
    """UserError at ``file:line`` for any userinfo in a URL of the config: ``user@``, ``token@`` (GitHub's
    ``https://<token>@github.com``), ``user:pass@``, percent-encoded, any scheme case. It would reach git's argv,
    the logs, ``journal.json``, ``status.json`` and the status commits. An SSH URL's user name is its login,
    not a secret: ``ssh://git@host/…`` and scp-like ``git@host:path`` stay allowed for ``source.url`` and
    ``status.url``."""
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return
    fields: list[tuple[list[str | int], Any, bool, str]] = []
    for section, key, ssh, hint in (("source", "url", True, _GIT_HINT), ("status", "url", True, _GIT_HINT),
                                    ("tuf", "metadataUrl", False, _TUF_HINT), ("tuf", "targetsUrl", False, _TUF_HINT),
                                    ("gateway", "url", False, _GIT_HINT)):
        block = spec.get(section)
        if isinstance(block, dict):
            fields.append(([section, key], block.get(key), ssh, hint))
    for section in ("source", "status", "tuf", "gateway", "capture"):
        block = spec.get(section)
        creds = (block if section == "capture" else block.get("credentials")) if isinstance(block, dict) else None
        if isinstance(creds, dict) and isinstance(proxy := creds.get("proxy"), str):
            at: list[str | int] = [section, "proxy"] if section == "capture" else [section, "credentials", "proxy"]
            fields.append((at, proxy if "://" in proxy else "http://" + proxy, False, PROXY_HINT))
    capture = spec.get("capture")
    origins = capture.get("allowedOrigins") if isinstance(capture, dict) else None
    if isinstance(origins, list):
        fields += [(["capture", "allowedOrigins", i], o, False, _CAPTURE_HINT) for i, o in enumerate(origins)]
    for jpath, url, ssh, hint in fields:
        problem = userinfo_problem(url, ssh_login=ssh) if isinstance(url, str) else None
        if problem:
            raise UserError(f"{where(['spec', *jpath])}: spec.{dotted(jpath)} {redact_url(url)} holds {problem}, which "
                            "would show in `ps`, logs, journal.json, status.json and the status pushed to Git; "
                            f"take it out of the URL and {hint} (docs/hosting.md)")


#: The config's HTTP(S) URLs (Git URLs may be SSH, scp-like or file://: git itself judges those).
_HTTP_URLS: tuple[list[str | int], ...] = (["tuf", "metadataUrl"], ["tuf", "targetsUrl"], ["gateway", "url"])


def http_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an HTTP(S) server's URL the agent asks, or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"does not parse ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    return None


def _refuse_bad_http_urls(spec: Mapping[str, Any], where: Callable[[list[str | int]], str]) -> None:
    for jpath in _HTTP_URLS:
        block = spec.get(str(jpath[0]))
        url = block.get(str(jpath[1])) if isinstance(block, dict) else None
        if isinstance(url, str) and (problem := http_url_problem(url)) is not None:
            raise UserError(f"{where(['spec', *jpath])}: spec.{dotted(jpath)} {redact_url(url)!r} {problem}: give "
                            "the server's base URL, e.g. http://gw.site-7.lan:8780")


def parse_agent_config(text: str, path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Parse and validate config text; ``path`` names the file in errors and anchors relative paths.

    ``environ`` (default: the process environment) supplies ``spec.deviceIdEnv`` and ``$CREDENTIALS_DIRECTORY``."""
    env = os.environ if environ is None else environ
    label = str(path) if path else "<agent config>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected an AgentConfig mapping (apiVersion, kind, spec)")
    _refuse_userinfo(data, lambda jpath: _where(path, root, jpath))  # before the schema: its messages quote values
    errors = sorted(validator("AgentConfig").iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors[:10]:  # said as `modelfleet validate` says it: an unknown field with its near match
            problem = schema_problem(err)
            hint = f" (hint: {problem.hint})" if problem.hint else ""
            lines.append(f"{_where(path, root, list(problem.path))}: {redact(problem.message)}{hint}")
        raise UserError("invalid agent config:\n  " + "\n  ".join(lines))

    base = path.parent if path else Path.cwd()
    spec: dict[str, Any] = data["spec"]
    _refuse_bad_http_urls(spec, lambda jpath: _where(path, root, jpath))

    def p(value: str | None) -> Path | None:
        if value is None:
            return None
        if "${CREDENTIALS_DIRECTORY}" in value or "$CREDENTIALS_DIRECTORY" in value:
            creds_dir = env.get("CREDENTIALS_DIRECTORY", "/run/credentials/modelfleet-agent.service")
            value = value.replace("${CREDENTIALS_DIRECTORY}", creds_dir).replace("$CREDENTIALS_DIRECTORY", creds_dir)
        q = Path(os.path.expanduser(value))
        return q if q.is_absolute() else (base / q)

    def dur(section: list[str], value: str | None, default: float | None) -> float | None:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise UserError(f"{_where(path, root, ['spec', *section])}: {exc}") from None

    src = spec["source"]
    gateway = spec.get("gateway") or {}
    verify = src.get("verify") or {}
    status = spec.get("status") or {}
    tuf = spec["tuf"]
    serving = spec.get("serving") or {}
    runtime = spec.get("runtime") or {}
    metrics = spec.get("metrics") or {}
    log = spec.get("log") or {}
    capture = spec.get("capture") or {}
    shadow = spec.get("shadow") or {}

    mode = verify.get("mode", "none")
    if mode in ("head", "all") and not (verify.get("allowedSigners") or verify.get("gpgKeyring")):
        raise UserError(
            f"{_where(path, root, ['spec', 'source', 'verify', 'mode'])}: verify mode {mode!r} needs "
            "allowedSigners (SSH) or gpgKeyring (GPG)"
        )
    if bool(serving.get("tlsCert")) != bool(serving.get("tlsKey")):
        raise UserError(f"{_where(path, root, ['spec', 'serving'])}: tlsCert and tlsKey go together")

    try:
        server_limits = ServerLimits().with_options(
            {"maxBodyBytes": int(serving.get("maxBodyBytes", DEFAULT_MAX_BODY)), **(serving.get("limits") or {})}
        )
    except ValueError as exc:
        raise UserError(f"{_where(path, root, ['spec', 'serving', 'limits'])}: {exc}") from None

    def creds(section: list[str], d: dict[str, Any] | None) -> Credentials | None:
        return parse_credentials(d, ["spec", *section], lambda jpath: _where(path, root, list(jpath)), p,
                                 bundle_dir=(p(spec.get("stateDir")) or Path(DEFAULT_STATE_DIR)) / "tls")

    allowed_origins = []
    for i, origin in enumerate(capture.get("allowedOrigins") or []):
        try:
            allowed_origins.append(origin_of(origin))
        except ValueError:
            raise UserError(f"{_where(path, root, ['spec', 'capture', 'allowedOrigins', i])}: "
                            f"capture.allowedOrigins[{i}] {origin!r} is not an https://host:port origin") from None

    trusted_root = p(tuf["trustedRoot"])
    assert trusted_root is not None
    return AgentConfig(
        path=path,
        device_id=_device_id(spec, env, lambda jpath: _where(path, root, jpath)),
        labels=dict(spec.get("labels") or {}),
        state_dir=p(spec.get("stateDir")) or Path(DEFAULT_STATE_DIR),
        poll_interval=dur(["pollInterval"], spec.get("pollInterval"), None),
        source_url=src["url"],
        source_branch=src.get("branch", "main"),
        source_path=src.get("path"),
        source_timeout=dur(["source", "timeout"], src.get("timeout"), DEFAULT_SOURCE_TIMEOUT) or 1.0,
        verify_mode=mode,
        allowed_signers=p(verify.get("allowedSigners")),
        gpg_keyring=p(verify.get("gpgKeyring")),
        allow_history_rewrite=bool(src.get("allowHistoryRewrite", False)),
        bundle_dir=p(src.get("bundleDir")),
        status_enabled=bool(status.get("enabled", True)),
        status_url=status.get("url"),
        status_branch_prefix=status.get("branchPrefix"),
        heartbeat_interval=dur(["status", "heartbeatInterval"], status.get("heartbeatInterval"), None),
        status_push_spread=dur(["status", "pushSpread"], status.get("pushSpread"), 0.0) or 0.0,
        status_signing_key=p(status.get("signingKey")),
        trusted_root=trusted_root,
        tuf_metadata_url=tuf.get("metadataUrl"),
        tuf_targets_url=tuf.get("targetsUrl"),
        decryption_key=p(tuf.get("decryptionKey")),
        max_concurrent_downloads=int(tuf.get("maxConcurrentDownloads", 2)),
        tuf_timeout=dur(["tuf", "timeout"], tuf.get("timeout"), DEFAULT_TUF_TIMEOUT) or 1.0,
        tuf_min_rate=int(tuf.get("minBytesPerSecond", DEFAULT_TUF_MIN_RATE)),
        serving_host=serving.get("host", "127.0.0.1"),
        serving_port=int(serving.get("port", DEFAULT_PORT)),
        unix_socket=serving.get("unixSocket"),
        auth_token_file=p(serving.get("authTokenFile")),
        tls_cert=p(serving.get("tlsCert")),
        tls_key=p(serving.get("tlsKey")),
        max_body_bytes=int(serving.get("maxBodyBytes", DEFAULT_MAX_BODY)),
        server_limits=server_limits,
        serving_workers=int(serving.get("workers", 1)),
        serving_grpc_port=int(serving["grpcPort"]) if serving.get("grpcPort") is not None else None,
        serving_pin_workers=serving.get("pinWorkers"),
        openvino_cache_dir=p(runtime.get("openvinoCacheDir")),
        threads=runtime.get("threads"),
        metrics_enabled=bool(metrics.get("enabled", True)),
        metrics_host=metrics.get("host", "127.0.0.1"),
        metrics_port=metrics.get("port"),
        capture_token_file=p(capture.get("uploadTokenFile")),
        capture_ca_file=p(capture.get("caFile")),
        capture_tls=creds(["capture"], {k: capture[k] for k in ("caFile", "extraCaFile", "clientCertFile",
                                                               "clientKeyFile", "proxy", "proxyUsername",
                                                               "proxyPasswordFile") if k in capture})
        or Credentials(),
        capture_allowed_origins=tuple(allowed_origins),
        capture_sealer=str(capture.get("sealer", "process")),
        shadow_enabled=bool(shadow.get("enabled", True)),
        shadow_max_memory_mb=float(shadow["maxMemoryMB"]) if shadow.get("maxMemoryMB") is not None else None,
        shadow_reserve_mb=float(shadow.get("reserveMB", 64.0)),
        log_format=log.get("format", "text"),
        log_level=log.get("level", "info"),
        source_credentials=creds(["source", "credentials"], src.get("credentials")) or Credentials(),
        status_credentials=creds(["status", "credentials"], status.get("credentials")),
        tuf_credentials=creds(["tuf", "credentials"], tuf.get("credentials")) or Credentials(),
        gateway_url=gateway.get("url"),
        gateway_credentials=creds(["gateway", "credentials"], gateway.get("credentials")),
        gateway_upstream_check=dur(["gateway", "upstreamCheckInterval"], gateway.get("upstreamCheckInterval"),
                                   3600.0) or 3600.0,
    )


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, validate and resolve the agent config at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: agent config not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read agent config: {exc}") from None
    return parse_agent_config(text, p.resolve())
