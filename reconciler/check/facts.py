"""The I/O of ``modelfleet check``: ask git, the servers, the files and the disk, and write down what they said.

Nothing here decides: each function returns a :mod:`~.model` fact, and a failure to observe is itself a fact
(an ``error`` string), never an exception. :func:`gather_operator` reuses what ``fleet status`` uses — the
:class:`~reconciler.gitops.statusrepo.StatusRepo` (one fetch, every status branch judged against the inventory)
and :func:`~reconciler.gitops.fleetstatus.build_report`; :func:`gather_device` reuses the agent's own config
loader, :class:`~reconciler.gitops.auth.GitAuth` and :func:`~reconciler.core.credentials.check_private_file`,
so the check sees what the agent will see.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from reconciler.agent.config import AgentConfig, load_agent_config
from reconciler.check.model import (
    AllowedSignersFile,
    AnchorFile,
    DeviceBeat,
    DeviceFacts,
    DiskSpace,
    GitInstall,
    HttpProbe,
    OperatorFacts,
    PrivateFile,
    RemoteRef,
    RoleExpiry,
    Runtime,
    SigningConfig,
    StateDir,
    StatusKey,
    StatusSnapshot,
    TufMetadata,
)
from reconciler.check.probes import MAX_METADATA_BYTES, authorization, http_date, http_get, pool_for, probe
from reconciler.core import reasons as R
from reconciler.core.credentials import CredentialError, Credentials, check_private_file
from reconciler.core.errors import UserError
from reconciler.core.extras import RUNTIME_EXTRAS, installed
from reconciler.core.redact import redact, redact_url
from reconciler.fleet.repository import FleetRepo
from reconciler.gitops.auth import GitAuth, classify, http_origin
from reconciler.gitops.fleetstatus import build_report
from reconciler.gitops.source import parse_ls_remote
from reconciler.gitops.statusrepo import StatusRepo
from reconciler.gitops.verify import GitError, run_git
from reconciler.net.pools import Pools

MAX_ROOT_VERSIONS = 1024
MAX_DELEGATED_ROLES = 64
MAX_SIGNERS_BYTES = 1 << 20
#: dist names a runtime module can come from (GPU and vendor builds install the same module)
RUNTIME_DISTS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
                 "openvino": ("openvino",)}


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# -- git on the operator's machine -----------------------------------------------------------------------------

def git_install() -> GitInstall:
    exe = shutil.which("git")
    if exe is None:
        return GitInstall(None, "no git on PATH")
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GitInstall(None, str(exc))
    words = p.stdout.split()
    if p.returncode != 0 or len(words) < 3:
        return GitInstall(None, " ".join(p.stderr.split())[:200] or f"git --version exited {p.returncode}")
    return GitInstall(words[2])


def _git_config(key: str, *, cwd: Path | None = None, as_bool: bool = False) -> str | None:
    args = ["config", *(["--type=bool"] if as_bool else []), "--get", key]
    try:
        p = run_git(args, cwd=cwd, check=False, timeout=10)
    except GitError:
        return None
    text = p.stdout.decode(errors="replace").strip()
    return text if p.returncode == 0 and text else None


def signing_config(*, cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> SigningConfig:
    """The settings a commit made in ``cwd`` would be signed with, and the allowed-signers file rollouts use."""
    env = os.environ if environ is None else environ
    key = _git_config("user.signingkey", cwd=cwd)
    fmt = _git_config("gpg.format", cwd=cwd)
    gpgsign = _git_config("commit.gpgsign", cwd=cwd, as_bool=True)
    exists: bool | None = None
    if key and fmt == "ssh" and not key.startswith(("key::", "ssh-")):
        exists = Path(key).expanduser().exists()
    signers: AllowedSignersFile | None = None
    path, origin = env.get("MODELFLEET_ALLOWED_SIGNERS", "").strip(), "MODELFLEET_ALLOWED_SIGNERS"
    if not path:
        path, origin = _git_config("gpg.ssh.allowedSignersFile", cwd=cwd) or "", "gpg.ssh.allowedSignersFile"
    if path:
        full = Path(path).expanduser()
        try:
            with open(full, "rb") as fh:
                data = fh.read(MAX_SIGNERS_BYTES + 1)
            if len(data) > MAX_SIGNERS_BYTES:
                signers = AllowedSignersFile(str(full), origin, None, f"larger than {MAX_SIGNERS_BYTES} bytes")
            else:
                signers = AllowedSignersFile(str(full), origin, data.decode("utf-8", "replace"))
        except OSError as exc:
            signers = AllowedSignersFile(str(full), origin, None, exc.strerror or str(exc))
    return SigningConfig(key, fmt, None if gpgsign is None else gpgsign == "true", exists, signers)


def ls_remote(url: str, branch: str, auth: GitAuth, *, timeout: float) -> RemoteRef:
    """Ask the server where ``branch`` points (one ``git ls-remote``, with the same credentials a fetch uses)."""
    display = redact_url(url)
    start = time.monotonic()
    try:
        env = auth.env()
    except CredentialError as exc:
        return RemoteRef(display, branch, error=str(exc), reason=R.CREDENTIALS_UNREADABLE)
    try:
        out = run_git(["ls-remote", "--", url, f"refs/heads/{branch}"], timeout=timeout, env=env).stdout.decode()
    except GitError as exc:
        text = " ".join(redact(str(exc)).split())[:300]
        reason = R.GIT_TIMEOUT if exc.timed_out else classify(text)
        return RemoteRef(display, branch, error=text, reason=reason, seconds=time.monotonic() - start)
    return RemoteRef(display, branch, parse_ls_remote(out, f"refs/heads/{branch}"), seconds=time.monotonic() - start)


def status_snapshot(repo: StatusRepo, *, now: _dt.datetime) -> tuple[StatusSnapshot, FleetRepo | None]:
    """Every status branch read and judged as ``fleet status`` does, and the manifests at the branch head."""
    from reconciler.rollout.evaluate import DEFAULT_HEARTBEAT, heartbeat_interval

    try:
        read = repo.read()
    except (GitError, CredentialError) as exc:
        return StatusSnapshot(error=" ".join(redact(str(exc)).split())[:300]), None
    hb = heartbeat_interval(read.fleet) if read.fleet is not None else DEFAULT_HEARTBEAT
    report = build_report(repo.branch, read, {}, now=now, stale_after=hb)
    beats = tuple(DeviceBeat(r.device, r.trust, r.trust_reason, r.age_seconds, r.error is not None)
                  for r in report.rows)
    return StatusSnapshot(beats, tuple(report.never_reported), hb, read.fleet is not None), read.fleet


# -- TUF metadata, from the publisher's directory or the server ------------------------------------------------

Reader = Callable[[str], tuple[bytes | None, _dt.datetime | None]]  # file name -> (bytes or None if absent, mtime)


def _dir_reader(directory: Path) -> Reader:
    meta = directory / "metadata"

    def read(name: str) -> tuple[bytes | None, _dt.datetime | None]:
        path = meta / name
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_METADATA_BYTES + 1)
            mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
        except FileNotFoundError:
            return None, None
        if len(data) > MAX_METADATA_BYTES:
            raise ValueError(f"{name} is larger than {MAX_METADATA_BYTES} bytes")
        return data, mtime

    return read


def _url_reader(base: str, pool: Pools, timeout: float) -> tuple[Reader, dict[str, int]]:
    statuses: dict[str, int] = {}

    def read(name: str) -> tuple[bytes | None, _dt.datetime | None]:
        answer = http_get(pool, base + quote(name), timeout=timeout)
        statuses[name] = answer.status
        if answer.status == 404:
            return None, None
        if answer.status >= 400:
            raise ValueError(f"{name}: HTTP {answer.status}")
        return answer.body, http_date(answer.headers.get("last-modified"))

    return read, statuses


def _expiries(read: Reader) -> list[RoleExpiry]:
    """Every role's current version and expiry, walked like a client: root chain, timestamp, snapshot, targets,
    delegations. ``ValueError`` names what is missing or unreadable."""
    from tuf.api.metadata import Metadata

    def load(name: str, required: bool = True) -> tuple[Any, _dt.datetime | None] | None:
        data, mtime = read(name)
        if data is None:
            if required:
                raise ValueError(f"{name} is missing")
            return None
        try:
            return Metadata.from_bytes(data), mtime
        except Exception as exc:  # noqa: BLE001 - DeserializationError and the JSON errors under it
            raise ValueError(f"{name} is not TUF metadata: {' '.join(str(exc).split())[:200]}") from None

    root = None
    for version in range(1, MAX_ROOT_VERSIONS + 1):
        found = load(f"{version}.root.json", required=False)
        if found is None:
            break
        root = found
    if root is None:
        root = load("root.json")
    assert root is not None
    out = [RoleExpiry("root", root[0].signed.version, root[0].signed.expires, root[1])]
    consistent = bool(root[0].signed.consistent_snapshot)
    ts, ts_time = load("timestamp.json")  # type: ignore[misc]
    out.append(RoleExpiry("timestamp", ts.signed.version, ts.signed.expires, ts_time))

    def versioned(role: str, version: int) -> str:
        return f"{version}.{quote(role, '')}.json" if consistent else f"{quote(role, '')}.json"

    snap_version = ts.signed.snapshot_meta.version
    snap, snap_time = load(versioned("snapshot", snap_version))  # type: ignore[misc]
    out.append(RoleExpiry("snapshot", snap.signed.version, snap.signed.expires, snap_time))
    pending = ["targets"]
    seen: set[str] = set()
    while pending and len(seen) < MAX_DELEGATED_ROLES + 1:
        role = pending.pop(0)
        if role in seen:
            continue
        seen.add(role)
        meta = snap.signed.meta.get(f"{role}.json")
        if meta is None:
            raise ValueError(f"snapshot version {snap_version} lists no {role}.json")
        md, mtime = load(versioned(role, meta.version))  # type: ignore[misc]
        out.append(RoleExpiry(role, md.signed.version, md.signed.expires, mtime))
        delegations = md.signed.delegations
        if delegations is not None and delegations.roles:
            pending.extend(delegations.roles)
    return out


def tuf_from_dir(directory: Path) -> TufMetadata:
    origin = "--tuf-repo"
    if not (directory / "metadata").is_dir():
        return TufMetadata(str(directory), origin, error="no metadata/ directory: not a TUF repository")
    try:
        return TufMetadata(str(directory), origin, tuple(_expiries(_dir_reader(directory))))
    except (ValueError, OSError) as exc:
        return TufMetadata(str(directory), origin, error=str(exc))


def tuf_from_url(url: str, origin: str, *, timeout: float, ca_file: Path | None = None) -> TufMetadata:
    base = url.rstrip("/") + "/"
    display = redact_url(base)
    if not base.startswith(("http://", "https://")):
        return TufMetadata(display, origin, error="not an http(s) URL")
    try:
        read, statuses = _url_reader(base, pool_for(Credentials(ca_file=ca_file)), timeout)
        roles = tuple(_expiries(read))
    except (ValueError, OSError, urllib3.exceptions.HTTPError) as exc:
        why = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        return TufMetadata(display, origin, error=" ".join(redact(str(why)).split())[:300],
                           http_status=statuses.get("timestamp.json"))
    return TufMetadata(display, origin, roles, http_status=statuses.get("timestamp.json"))


def gather_operator(repo: StatusRepo | None, *, repo_error: str = "", tuf_repo: Path | None = None,
                    tuf_url: str | None = None, ca_file: Path | None = None, timeout: float = 30.0,
                    cwd: Path | None = None) -> OperatorFacts:
    """Everything the operator side judges. ``repo``: the fleet repository (None, with ``repo_error``, when it
    could not even be named)."""
    now = _now()
    git = git_install()
    signing = signing_config(cwd=cwd) if git.version is not None else None
    remote: RemoteRef | None = None
    status: StatusSnapshot | None = None
    fleet: FleetRepo | None = None
    if repo is None:
        remote = RemoteRef("", "-", error=repo_error)
    elif git.version is not None:
        remote = ls_remote(repo.url, repo.branch, repo.auth, timeout=min(timeout, repo.timeout))
        if not remote.error and remote.head is not None:
            status, fleet = status_snapshot(repo, now=now)
    tuf: TufMetadata | None = None
    if tuf_repo is not None:
        tuf = tuf_from_dir(tuf_repo)
    elif tuf_url:
        tuf = tuf_from_url(tuf_url, "--tuf-url", timeout=timeout, ca_file=ca_file)
    elif fleet is not None and (fleet.fleet_spec.get("tuf") or {}).get("metadataUrl"):
        tuf = tuf_from_url(str(fleet.fleet_spec["tuf"]["metadataUrl"]), "the Fleet's spec.tuf.metadataUrl",
                           timeout=timeout, ca_file=ca_file)
    return OperatorFacts(now, git, signing, remote, tuf, status)


# -- the device ------------------------------------------------------------------------------------------------

def private_files(cfg: AgentConfig) -> list[tuple[str, Path]]:
    """Every secret the config names: credentials, keys, tokens (the status key has its own check)."""
    out: list[tuple[str, Path]] = []
    sections: list[tuple[str, Credentials | None]] = [("source", cfg.source_credentials),
                                                      ("status", cfg.status_credentials), ("tuf", cfg.tuf_credentials)]
    for section, creds in sections:
        if creds is None:
            continue
        for field, path in (("passwordFile", creds.password_file), ("bearerTokenFile", creds.bearer_token_file),
                            ("sshKeyFile", creds.ssh_key_file), ("proxyPasswordFile", creds.proxy_password_file),
                            ("clientKeyFile" if creds.client_key_file else "clientCertFile", creds.client_key_path)):
            if path is not None:
                out.append((f"{section}.credentials.{field}", path))
    capture_key = cfg.capture_tls.client_key_path
    for setting, path in (("tuf.decryptionKey", cfg.decryption_key), ("serving.authTokenFile", cfg.auth_token_file),
                          ("serving.tlsKey", cfg.tls_key), ("capture.uploadTokenFile", cfg.capture_token_file),
                          ("capture.clientKeyFile" if cfg.capture_tls.client_key_file else "capture.clientCertFile",
                           capture_key), ("capture.proxyPasswordFile", cfg.capture_tls.proxy_password_file)):
        if path is not None:
            out.append((setting, path))
    return out


def anchor_files(cfg: AgentConfig) -> list[tuple[str, Path]]:
    """The public files the agent reads: trust anchors, CA bundles, known hosts, the TLS certificate."""
    out: list[tuple[str, Path]] = [("tuf.trustedRoot", cfg.trusted_root)]
    for setting, path in (("source.verify.allowedSigners", cfg.allowed_signers),
                          ("source.verify.gpgKeyring", cfg.gpg_keyring), ("serving.tlsCert", cfg.tls_cert),
                          ("capture.caFile", cfg.capture_ca_file), ("capture.extraCaFile", cfg.capture_tls.extra_ca_file)):
        if path is not None:
            out.append((setting, path))
    for section, creds in (("source", cfg.source_credentials), ("status", cfg.status_credentials),
                           ("tuf", cfg.tuf_credentials)):
        if creds is None:
            continue
        for field, path in (("knownHostsFile", creds.known_hosts_file), ("caFile", creds.ca_file),
                            ("extraCaFile", creds.extra_ca_file),
                            ("clientCertFile", creds.client_cert_file if creds.client_key_file else None)):
            if path is not None:
                out.append((f"{section}.credentials.{field}", path))
    return out


def private_file(setting: str, path: Path) -> PrivateFile:
    try:
        st = check_private_file(path)
    except CredentialError as exc:
        try:
            mode: int | None = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = None
        return PrivateFile(setting, str(path), str(exc), mode)
    return PrivateFile(setting, str(path), "", st.st_mode & 0o7777)


def anchor_file(setting: str, path: Path) -> AnchorFile:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        return AnchorFile(setting, str(path), f"{path} does not exist")
    except IsADirectoryError:
        return AnchorFile(setting, str(path), f"{path} is a directory, not a file")
    except OSError as exc:
        return AnchorFile(setting, str(path), f"cannot read {path}: {exc.strerror}")
    return AnchorFile(setting, str(path))


def status_key(cfg: AgentConfig) -> StatusKey:
    from reconciler.identity import keys, sshsig

    default = str(cfg.default_status_key)
    if not cfg.status_enabled:
        return StatusKey(False, default_path=default)
    path = cfg.status_key_path
    if path is None:
        return StatusKey(True, None, default)
    try:
        key = keys.load(path)
    except CredentialError as exc:
        return StatusKey(True, str(path), default, problem=str(exc))
    return StatusKey(True, str(path), default, sshsig.fingerprint(sshsig.public_key_blob(key.public_key())))


def state_dir(path: Path) -> StateDir:
    if path.is_dir():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".modelfleet-check.", dir=path)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            return StateDir(str(path), True, False, exc.strerror or str(exc))
        return StateDir(str(path), True, True)
    if path.exists():
        return StateDir(str(path), True, False, "not a directory")
    parent = _existing_ancestor(path)
    ok = os.access(parent, os.W_OK | os.X_OK)
    return StateDir(str(path), False, ok, "" if ok else f"cannot create it in {parent}")


def _existing_ancestor(path: Path) -> Path:
    for p in [path, *path.parents]:
        if p.exists():
            return p
    return Path("/")


def cached_fleet(cfg: AgentConfig) -> FleetRepo | None:
    """The fleet's manifests as this device last fetched them (its applied commit, else the fetched head)."""
    from reconciler.agent.journal import Journal, JournalError
    from reconciler.fleet.manifests import load_files, read_git

    git_dir = cfg.git_cache_dir / "repo.git"
    if not (git_dir / "HEAD").is_file():
        return None
    try:
        commit = Journal.load(cfg.state_dir).applied_commit
    except (JournalError, OSError):
        commit = None
    if commit is None:
        p = run_git(["rev-parse", "--verify", "--quiet", f"refs/modelfleet/source/{cfg.source_branch}"],
                    git_dir=git_dir, check=False, timeout=10)
        commit = p.stdout.decode().strip() or None
    if commit is None:
        return None
    try:
        load = load_files(read_git(git_dir, commit, cfg.source_path))
    except Exception:  # noqa: BLE001 - a cache that does not read is no basis for an estimate; the agent says more
        return None
    return load.fleet if load.ok else None


def local_target_lengths(metadata_dir: Path) -> dict[str, int]:
    """target path -> length, from the targets roles this device already verified and keeps in ``metadata_dir``."""
    from tuf.api.metadata import Metadata, Targets

    out: dict[str, int] = {}
    if not metadata_dir.is_dir():
        return out
    for f in sorted(metadata_dir.glob("*.json")):
        if f.name in ("root.json", "timestamp.json", "snapshot.json"):
            continue
        try:
            md = Metadata.from_bytes(f.read_bytes()[:MAX_METADATA_BYTES])
        except Exception:  # noqa: BLE001 - not a targets role (or a partial write): no sizes from it
            continue
        if isinstance(md.signed, Targets):
            for path, tf in md.signed.targets.items():
                out[path] = max(out.get(path, 0), int(tf.length))
    return out


def largest_download(fleet: FleetRepo | None, lengths: Mapping[str, int]) -> tuple[str, int] | None:
    """The largest variant (all its targets) the fleet's models name, sized by the signed metadata; without
    manifests, the largest target the metadata lists."""
    best: tuple[str, int] | None = None
    if fleet is not None:
        for name, model in sorted(fleet.models.items()):
            for version in model.spec.get("versions") or []:
                for variant in version.get("variants") or []:
                    known = [lengths[t] for t in variant.get("targets") or [] if t in lengths]
                    if known and (best is None or sum(known) > best[1]):
                        best = (f"{name} {version.get('version')} {variant.get('name')}", sum(known))
    if best is None and lengths:
        path = max(lengths, key=lambda p: lengths[p])
        best = (path, lengths[path])
    return best


def disk_space(cfg: AgentConfig, fleet: FleetRepo | None) -> DiskSpace:
    where = _existing_ancestor(cfg.state_dir)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return DiskSpace(str(cfg.state_dir), error=exc.strerror or str(exc))
    return DiskSpace(str(cfg.state_dir), free, largest_download(fleet, local_target_lengths(cfg.tuf_metadata_dir)))


def runtime_versions(fleet: FleetRepo | None) -> tuple[Runtime, ...]:
    needed = {str(variant.get("runtime")) for model in (fleet.models.values() if fleet else ())
              for version in model.spec.get("versions") or [] for variant in version.get("variants") or []}
    out = []
    for name, (_label, module, _extra) in RUNTIME_EXTRAS.items():
        version = None
        for dist in RUNTIME_DISTS.get(name, (name,)):
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if version is None and installed(module):
            version = "(version unknown)"
        out.append(Runtime(name, version, name in needed))
    return tuple(out)


def gather_device(config_path: Path) -> DeviceFacts:
    """Everything the device side judges, as the agent with this config would see it (run it as the agent's user)."""
    try:
        cfg = load_agent_config(config_path)
    except UserError as exc:
        return DeviceFacts(str(config_path), config_error=str(exc))
    fleet = cached_fleet(cfg)
    source = ls_remote(cfg.source_url, cfg.source_branch, GitAuth(cfg.source_url, cfg.source_credentials),
                       timeout=cfg.source_timeout)
    git_http: HttpProbe | None = None
    if http_origin(cfg.source_url) is not None:
        auth = authorization(cfg.source_credentials)
        git_http = probe("Git server", cfg.source_url.rstrip("/") + "/info/refs?service=git-upload-pack",
                          auth=auth, creds=cfg.source_credentials, timeout=cfg.source_timeout)
        if source.error and git_http.status == 400 and git_http.error:  # git says "error: 400", the probe why
            source = dataclasses.replace(source, error=git_http.error, reason=R.CLIENT_CERTIFICATE_REFUSED)
    fleet_tuf = (fleet.fleet_spec.get("tuf") or {}) if fleet is not None else {}
    metadata_url = cfg.tuf_metadata_url or str(fleet_tuf.get("metadataUrl") or "")
    if metadata_url:
        auth = authorization(cfg.tuf_credentials)
        tuf_http = probe("TUF server", metadata_url.rstrip("/") + "/timestamp.json", auth=auth,
                          creds=cfg.tuf_credentials, timeout=cfg.tuf_timeout)
    else:
        tuf_http = HttpProbe("TUF server", "", note="no TUF metadata URL known: tuf.metadataUrl is not set and the "
                                                    "device has not fetched the Fleet's spec.tuf yet")
    gateway_git = gateway_tuf = None
    if cfg.gateway_source_url is not None and (tuf_urls := cfg.gateway_tuf_urls()) is not None:
        # as the agent asks the gateway: its mirror's ref advertisement, its TUF cache's timestamp
        auth = authorization(cfg.gateway_credentials)
        gateway_git = probe("gateway (Git)", cfg.gateway_source_url + "/info/refs?service=git-upload-pack",
                            auth=auth, creds=cfg.gateway_credentials, timeout=cfg.source_timeout)
        gateway_tuf = probe("gateway (TUF)", tuf_urls[0] + "timestamp.json", auth=auth,
                            creds=cfg.gateway_credentials, timeout=cfg.tuf_timeout)
    return DeviceFacts(
        str(cfg.path or config_path), device_id=cfg.device_id, gateway_git=gateway_git, gateway_tuf=gateway_tuf,
        private_files=tuple(private_file(s, p) for s, p in private_files(cfg)),
        anchors=tuple(anchor_file(s, p) for s, p in anchor_files(cfg)),
        status_key=status_key(cfg), source=source, git_http=git_http, tuf_http=tuf_http,
        disk=disk_space(cfg, fleet), runtimes=runtime_versions(fleet), state_dir=state_dir(cfg.state_dir))
