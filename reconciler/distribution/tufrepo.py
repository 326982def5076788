"""Publisher side of model distribution: a static TUF repository built with python-tuf's Metadata API.

Workflow: ``init_repo`` creates root/targets/snapshot/timestamp with fresh ed25519 keys (online keys in one
directory, root keys in another, to be moved offline); ``add_targets`` copies model files (optionally
AES-256-GCM encrypted) to ``targets/`` under their content hash and re-signs targets → snapshot → timestamp;
``refresh`` re-signs snapshot and timestamp (a cron job, before they expire); ``rotate_key`` replaces a role's
key with a new root version signed by the old and the new root keys; ``delegate`` hands a path prefix to a team
key; ``verify_repo`` checks signatures, versions, target files and expiries (for CI).

Layout of ``DIR`` (serve it with any static web server)::

    metadata/  1.root.json … N.root.json, root.json, timestamp.json, N.snapshot.json, N.targets.json,
               N.<delegated-role>.json (+ unversioned copies of each: the publisher's working state)
    targets/   <dir>/<sha256>.<name>       (consistent snapshots: target files are content addressed)
    modelfleet-repo.json                   (expiry settings)

Key files are PKCS#8 PEM, one per key: ``<KEYDIR>/<role>-<keyid>.pem`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from securesystemslib.signer import Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_bytes, atomic_write_text, fsync_dir
from reconciler.distribution import modelcrypto

# default_root_keys_dir and find_signer are part of the publisher API (docs/publishing.md): re-exported here.
from reconciler.distribution.tufkeys import (
    default_root_keys_dir as default_root_keys_dir,
    find_signer as find_signer,
    generate_key,
    retire_key_file,
)

TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
CONFIG_NAME = "modelfleet-repo.json"
SPEC_VERSION = "1.0.31"
_SERIALIZER = JSONSerializer(compact=False)


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).replace(microsecond=0)


# ---------------------------------------------------------------------------------------------- repository


@dataclass
class TargetRow:
    """One signed target, as ``repo list`` shows it."""

    path: str
    length: int
    sha256: str
    role: str
    custom: dict[str, Any] = field(default_factory=dict)


class _Repo:
    """Metadata of one repository on disk plus the keys the caller holds."""

    def __init__(self, repo_dir: Path, key_dirs: Sequence[Path] = (), now: datetime | None = None) -> None:
        self.dir = Path(repo_dir)
        self.meta_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.key_dirs = [Path(k) for k in key_dirs]
        self.now = _now(now)
        if not (self.meta_dir / "root.json").is_file():
            raise UserError(f"{self.dir} is not a TUF repository (no metadata/root.json); run `modelfleet repo init`")
        self.config = self._load_config()
        self.root: Metadata[Root] = self.load("root")  # type: ignore[assignment]

    def _load_config(self) -> dict[str, Any]:
        path = self.dir / CONFIG_NAME
        if not path.exists():
            return {"expiry": {r: int(d.total_seconds()) for r, d in DEFAULT_EXPIRY.items()}}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc

    def expiry(self, role: str) -> timedelta:
        exp = self.config.get("expiry", {})
        return timedelta(seconds=exp.get(role, exp.get("targets", DEFAULT_EXPIRY["targets"].total_seconds())))

    def load(self, role: str) -> Metadata[Any]:
        path = self.meta_dir / f"{quote(role, '')}.json"
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"metadata for role {role!r} not found in {self.meta_dir}") from None
        except Exception as exc:  # DeserializationError and friends
            raise UserError(f"cannot parse {path}: {exc}") from exc

    def delegator(self, role: str) -> Metadata[Any]:
        """The metadata holding the keys of ``role`` (root for top-level roles, targets for delegated ones)."""
        if role in TOP_LEVEL:
            return self.root
        targets = self.load("targets")
        delegations = targets.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise UserError(f"no delegated role {role!r} in targets")
        return targets

    def signers(self, role: str, delegator: Metadata[Any] | None = None, dirs: Sequence[Path] | None = None) -> list[Signer]:
        delegator = delegator or self.delegator(role)
        spec = delegator.signed.get_delegated_role(role)
        found = [s for kid in spec.keyids if (s := find_signer(dirs or self.key_dirs, kid)) is not None]
        if len(found) < spec.threshold:
            where = ", ".join(str(d) for d in (dirs or self.key_dirs)) or "(no key directory given)"
            raise UserError(
                f"signing {role} needs {spec.threshold} of its keys; found {len(found)} in {where}"
            )
        return found

    def write(self, md: Metadata[Any], role: str, signers: Iterable[Signer], *, versioned: bool = True) -> None:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes(_SERIALIZER)
        name = quote(role, "")
        if versioned:
            atomic_write_bytes(self.meta_dir / f"{md.signed.version}.{name}.json", data)
        atomic_write_bytes(self.meta_dir / f"{name}.json", data)

    def bump(self, md: Metadata[Any], role: str) -> None:
        md.signed.version += 1
        md.signed.expires = self.now + self.expiry(role if role in TOP_LEVEL else "targets")

    def resign_targets_role(self, md: Metadata[Any], role: str) -> None:
        self.bump(md, role)
        self.write(md, role, self.signers(role))

    def resign_snapshot_timestamp(self) -> None:
        """Point snapshot at the current version of every targets role, then timestamp at snapshot."""
        snapshot: Metadata[Snapshot] = self.load("snapshot")
        targets = self.load("targets")
        meta = {"targets.json": MetaFile(version=targets.signed.version)}
        for role in _delegated_role_names(targets):
            meta[f"{role}.json"] = MetaFile(version=self.load(role).signed.version)
        snapshot.signed.meta = meta
        self.bump(snapshot, "snapshot")
        self.write(snapshot, "snapshot", self.signers("snapshot"))
        timestamp: Metadata[Timestamp] = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self.bump(timestamp, "timestamp")
        self.write(timestamp, "timestamp", self.signers("timestamp"), versioned=False)

    def role_for_path(self, path: str) -> str:
        """The targets role that must sign ``path``: a delegated role whose patterns match, else targets."""
        for role in _delegated_roles(self.load("targets")):
            if role.is_delegated_path(path):
                return role.name
        return "targets"


def _delegated_roles(targets: Metadata[Any]) -> list[DelegatedRole]:
    d = targets.signed.delegations
    return list(d.roles.values()) if d is not None and d.roles else []


def _delegated_role_names(targets: Metadata[Any]) -> list[str]:
    return [r.name for r in _delegated_roles(targets)]


# ----------------------------------------------------------------------------------------------- commands


def init_repo(
    repo_dir: Path,
    keys_dir: Path,
    root_keys_dir: Path | None = None,
    *,
    thresholds: dict[str, int] | None = None,
    expiry: dict[str, timedelta] | None = None,
    now: datetime | None = None,
) -> dict[str, list[str]]:
    """Create a new repository; returns role → key ids. ``thresholds[role]`` keys are generated per role."""
    repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
    root_keys_dir = Path(root_keys_dir) if root_keys_dir else default_root_keys_dir(keys_dir)
    meta_dir = repo_dir / "metadata"
    if (meta_dir / "root.json").exists():
        raise UserError(f"{repo_dir} already holds a TUF repository")
    thresholds = {**{r: 1 for r in TOP_LEVEL}, **(thresholds or {})}
    for role, n in thresholds.items():
        if role not in TOP_LEVEL or not 1 <= n <= 16:
            raise UserError(f"bad threshold {role}={n}: roles are {', '.join(TOP_LEVEL)}, thresholds 1..16")
    expiries = {**DEFAULT_EXPIRY, **(expiry or {})}
    ts = _now(now)
    meta_dir.mkdir(parents=True, exist_ok=True)
    (repo_dir / "targets").mkdir(exist_ok=True)
    atomic_write_text(
        repo_dir / CONFIG_NAME,
        json.dumps({"expiry": {r: int(d.total_seconds()) for r, d in expiries.items()}}, indent=2) + "\n",
    )
    root = Root(expires=ts + expiries["root"], consistent_snapshot=True)
    signers: dict[str, list[Signer]] = {}
    for role in TOP_LEVEL:
        kdir = root_keys_dir if role == "root" else keys_dir
        signers[role] = [generate_key(kdir, role) for _ in range(thresholds[role])]
        for s in signers[role]:
            root.add_key(s.public_key, role)
        root.roles[role].threshold = thresholds[role]
    repo = _RepoWriter(repo_dir)
    repo.write(Metadata(root), "root", signers["root"])
    targets = Targets(expires=ts + expiries["targets"])
    repo.write(Metadata(targets), "targets", signers["targets"])
    snapshot = Snapshot(expires=ts + expiries["snapshot"], meta={"targets.json": MetaFile(version=1)})
    repo.write(Metadata(snapshot), "snapshot", signers["snapshot"])
    timestamp = Timestamp(expires=ts + expiries["timestamp"], snapshot_meta=MetaFile(version=1))
    repo.write(Metadata(timestamp), "timestamp", signers["timestamp"], versioned=False)
    return {role: [s.public_key.keyid for s in signers[role]] for role in TOP_LEVEL}


class _RepoWriter(_Repo):
    """A _Repo used while the repository is being created (no metadata to load yet)."""

    def __init__(self, repo_dir: Path) -> None:
        self.dir = Path(repo_dir)
        self.meta_dir = self.dir / "metadata"


_FORMATS = {".onnx": ("onnx", "onnxruntime"), ".xml": ("openvino-ir", "openvino"), ".bin": ("openvino-ir", "openvino")}


def target_url_path(path: str, sha256: str) -> str:
    """Where a target lives under ``targets/`` (consistent snapshot: the hash prefixes the file name)."""
    dirname, sep, base = path.rpartition("/")
    return f"{dirname}{sep}{sha256}.{base}"


def _copy_hashed(src: Path, dst_dir: Path, progress: Callable[[int], None] | None = None) -> tuple[Path, str, int]:
    """Copy ``src`` into ``dst_dir`` (temp + fsync) while hashing; returns (temp path, sha256, length)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=".add.", dir=dst_dir)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        while chunk := inp.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
            if progress is not None:
                progress(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    return Path(tmp), h.hexdigest(), n


def add_targets(
    repo_dir: Path,
    key_dirs: Sequence[Path],
    files: Sequence[Path],
    prefix: str,
    *,
    model: str | None = None,
    version: str | None = None,
    encrypt_key: bytes | None = None,
    role: str | None = None,
    custom: dict[str, Any] | None = None,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[TargetRow]:
    """Sign ``files`` as targets ``<prefix>/<file name>``; re-signs the owning role, snapshot and timestamp.

    ``progress`` is called with each number of bytes read (the CLI's progress bar)."""
    repo = _Repo(repo_dir, key_dirs, now)
    prefix = prefix.strip("/")
    if not files:
        raise UserError("no files to add")
    rows: list[TargetRow] = []
    by_role: dict[str, Metadata[Any]] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        for f in files:
            f = Path(f)
            if not f.is_file():
                raise UserError(f"{f}: no such file")
            path = f"{prefix}/{f.name}" if prefix else f.name
            if path.startswith("/") or ".." in path.split("/"):
                raise UserError(f"bad target path {path!r}")
            owner = repo.role_for_path(path)
            if role is not None and owner != role:
                raise UserError(
                    f"target {path!r} is outside the paths delegated to role {role!r}"
                    if role != "targets"
                    else f"target {path!r} is delegated to role {owner!r}; sign it with that role's key"
                )
            md = by_role.get(owner) or by_role.setdefault(owner, repo.load(owner))
            fmt, runtime = _FORMATS.get(f.suffix.lower(), (f.suffix.lstrip(".").lower() or "raw", None))
            info: dict[str, Any] = {"format": fmt}
            if runtime:
                info["runtime"] = runtime
            if model:
                info["model"] = model
            if version:
                info["version"] = version
            if encrypt_key is not None:
                plain = f.read_bytes()
                info.update(encrypted=True, plaintext_sha256=hashlib.sha256(plain).hexdigest(), plaintext_length=len(plain))
                blob = modelcrypto.encrypt(plain, encrypt_key)
                fd, tmp_s = tempfile.mkstemp(prefix=".add.", dir=_mkdir(repo.targets_dir))
                with os.fdopen(fd, "wb") as out:
                    out.write(blob)
                    out.flush()
                    os.fsync(out.fileno())
                tmp, digest, length = Path(tmp_s), hashlib.sha256(blob).hexdigest(), len(blob)
                if progress is not None:
                    progress(len(plain))
            else:
                tmp, digest, length = _copy_hashed(f, repo.targets_dir, progress)
            info.update(custom or {})
            final = repo.targets_dir / target_url_path(path, digest)
            staged.append((tmp, final))
            md.signed.targets[path] = TargetFile(length, {"sha256": digest}, path, {"custom": info})
            rows.append(TargetRow(path, length, digest, owner, info))
        for tmp, final in staged:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        staged.clear()
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for name, md in by_role.items():
        repo.resign_targets_role(md, name)
    repo.resign_snapshot_timestamp()
    return rows


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def remove_targets(repo_dir: Path, key_dirs: Sequence[Path], paths: Sequence[str], *, now: datetime | None = None) -> None:
    """Unsign ``paths`` (files stay under targets/ for clients still on an older snapshot)."""
    repo = _Repo(repo_dir, key_dirs, now)
    targets = repo.load("targets")
    roles = {"targets": targets, **{n: repo.load(n) for n in _delegated_role_names(targets)}}
    changed: dict[str, Metadata[Any]] = {}
    for path in paths:
        owner = next((n for n, md in roles.items() if path in md.signed.targets), None)
        if owner is None:
            raise UserError(f"target {path!r} is not in the repository")
        del roles[owner].signed.targets[path]
        changed[owner] = roles[owner]
    for name, md in changed.items():
        repo.resign_targets_role(md, name)
    repo.resign_snapshot_timestamp()


def list_targets(repo_dir: Path) -> list[TargetRow]:
    repo = _Repo(repo_dir)
    targets = repo.load("targets")
    rows = []
    for name, md in [("targets", targets), *((n, repo.load(n)) for n in _delegated_role_names(targets))]:
        for path, tf in md.signed.targets.items():
            custom = tf.custom if isinstance(tf.custom, dict) else {}  # optional in the TUF specification
            rows.append(TargetRow(path, tf.length, tf.hashes.get("sha256", ""), name, dict(custom)))
    return sorted(rows, key=lambda r: r.path)


def list_target_paths(repo_dir: Path) -> set[str]:
    """All target paths signed in the local repository, delegations included."""
    return {r.path for r in list_targets(repo_dir)}


def refresh(repo_dir: Path, key_dirs: Sequence[Path], *, now: datetime | None = None) -> tuple[int, int]:
    """Re-sign snapshot and timestamp with fresh expiries; returns their new versions."""
    repo = _Repo(repo_dir, key_dirs, now)
    repo.resign_snapshot_timestamp()
    return repo.load("snapshot").signed.version, repo.load("timestamp").signed.version


MAX_PREFIX_DEPTH = 8


def prefix_patterns(prefix: str, depth: int = MAX_PREFIX_DEPTH) -> list[str]:
    """TUF path patterns covering everything under ``prefix`` (a ``*`` never matches ``/`` in TUF)."""
    prefix = prefix.strip("/")
    if not prefix or "*" in prefix:
        raise UserError(f"bad delegation prefix {prefix!r}: give a directory such as 'vision/'")
    return [prefix + "/*" * n for n in range(1, depth + 1)]


def delegate(
    repo_dir: Path,
    key_dirs: Sequence[Path],
    role: str,
    paths: Sequence[str],
    team_keys_dir: Path,
    *,
    threshold: int = 1,
    now: datetime | None = None,
) -> list[str]:
    """Delegate target path patterns (``vision/*``) to a new role with its own key(s); returns the key ids."""
    repo = _Repo(repo_dir, key_dirs, now)
    if role in TOP_LEVEL or not role or "/" in role:
        raise UserError(f"bad delegated role name {role!r}")
    if not paths:
        raise UserError("a delegation needs at least one path pattern (e.g. 'vision/*')")
    targets = repo.load("targets")
    if role in _delegated_role_names(targets):
        raise UserError(f"role {role!r} is already delegated")
    team = [generate_key(Path(team_keys_dir), role) for _ in range(threshold)]
    if targets.signed.delegations is None:
        targets.signed.delegations = Delegations(keys={}, roles={})
    targets.signed.delegations.roles[role] = DelegatedRole(role, [], threshold, True, list(paths))
    for s in team:
        targets.signed.add_key(s.public_key, role)
    md = Metadata(Targets(version=1, expires=repo.now + repo.expiry("targets")))
    repo.write(md, role, team)
    repo.resign_targets_role(targets, "targets")
    repo.resign_snapshot_timestamp()
    return [s.public_key.keyid for s in team]


def rotate_key(
    repo_dir: Path,
    key_dirs: Sequence[Path],
    root_keys_dirs: Sequence[Path],
    role: str,
    *,
    now: datetime | None = None,
) -> str:
    """Replace ``role``'s key(s) by one new key: a new root version signed by old and new root keys."""
    if role not in TOP_LEVEL:
        raise UserError(f"can only rotate top-level role keys ({', '.join(TOP_LEVEL)}), not {role!r}")
    repo = _Repo(repo_dir, [*key_dirs, *root_keys_dirs], now)
    old_root = repo.root
    old_signers = repo.signers("root", old_root, list(root_keys_dirs) or None)
    new_dir = (list(root_keys_dirs) or [default_root_keys_dir(Path(key_dirs[0]))])[0] if role == "root" else Path(key_dirs[0])
    new = generate_key(Path(new_dir), role)
    root = Metadata.from_bytes(old_root.to_bytes())
    old_ids = list(root.signed.roles[role].keyids)
    for kid in old_ids:
        root.signed.revoke_key(kid, role)
    root.signed.add_key(new.public_key, role)
    root.signed.roles[role].threshold = 1
    root.signed.version += 1
    root.signed.expires = repo.now + repo.expiry("root")
    signers = list(old_signers)
    if role == "root":
        signers.append(new)
    repo.write(root, "root", signers)
    repo.root = root
    for kid in old_ids:
        retire_key_file([*key_dirs, *root_keys_dirs], kid)
    if role == "targets":
        repo.resign_targets_role(repo.load("targets"), "targets")
    if role != "root":
        repo.resign_snapshot_timestamp()
    return new.public_key.keyid


def verify_repo(repo_dir: Path, *, within: timedelta = timedelta(days=0), now: datetime | None = None) -> list[str]:
    """Problems found in the repository (empty: consistent, signed and not expiring within ``within``)."""
    repo = _Repo(repo_dir)
    problems: list[str] = []
    ts = _now(now)

    def check_expiry(role: str, md: Metadata[Any]) -> None:
        exp = md.signed.expires
        if exp <= ts:
            problems.append(f"{role}: expired at {exp.isoformat()}")
        elif exp <= ts + within:
            problems.append(f"{role}: expires at {exp.isoformat()}, within {within.days} days")

    def check_sig(delegator: Metadata[Any], role: str, md: Metadata[Any]) -> None:
        try:
            delegator.verify_delegate(role, md)
        except UnsignedMetadataError as exc:
            problems.append(f"{role}: bad signatures: {exc}")

    # Root chain: every version signed by its predecessor's and its own threshold.
    prev = None
    for v in range(1, repo.root.signed.version + 1):
        p = repo.meta_dir / f"{v}.root.json"
        if not p.exists():
            problems.append(f"root: version {v} missing ({p.name})")
            prev = None
            continue
        md = Metadata.from_bytes(p.read_bytes())
        if prev is not None:
            check_sig(prev, "root", md)
        check_sig(md, "root", md)
        prev = md
    root = repo.root
    check_expiry("root", root)
    timestamp = repo.load("timestamp")
    check_sig(root, "timestamp", timestamp)
    check_expiry("timestamp", timestamp)
    snap_v = timestamp.signed.snapshot_meta.version
    snapshot = _load_versioned(repo, "snapshot", snap_v, problems)
    if snapshot is None:
        return problems
    check_sig(root, "snapshot", snapshot)
    check_expiry("snapshot", snapshot)
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        problems.append("snapshot: no entry for targets.json")
        return problems
    targets = _load_versioned(repo, "targets", targets_meta.version, problems)
    if targets is None:
        return problems
    check_sig(root, "targets", targets)
    check_expiry("targets", targets)
    roles = [("targets", targets)]
    for name in _delegated_role_names(targets):
        meta = snapshot.signed.meta.get(f"{name}.json")
        if meta is None:
            problems.append(f"snapshot: no entry for delegated role {name}")
            continue
        md = _load_versioned(repo, name, meta.version, problems)
        if md is None:
            continue
        check_sig(targets, name, md)
        check_expiry(name, md)
        spec = targets.signed.get_delegated_role(name)
        for path in md.signed.targets:
            if not spec.is_delegated_path(path):
                problems.append(f"{name}: signs {path!r}, outside its delegated paths {spec.paths}")
        roles.append((name, md))
    for name, md in roles:
        for path, tf in md.signed.targets.items():
            f = repo.targets_dir / target_url_path(path, tf.hashes.get("sha256", ""))
            try:
                with open(f, "rb") as fh:
                    tf.verify_length_and_hashes(fh)
            except FileNotFoundError:
                problems.append(f"{name}: target {path!r} missing ({f.relative_to(repo.dir)})")
            except LengthOrHashMismatchError as exc:
                problems.append(f"{name}: target {path!r} does not match its metadata: {exc}")
    return problems


def _load_versioned(repo: _Repo, role: str, version: int, problems: list[str]) -> Metadata[Any] | None:
    p = repo.meta_dir / f"{version}.{quote(role, '')}.json"
    try:
        md = Metadata.from_bytes(p.read_bytes())
    except FileNotFoundError:
        problems.append(f"{role}: version {version} referenced but {p.name} is missing")
        return None
    except Exception as exc:
        problems.append(f"{role}: cannot parse {p.name}: {exc}")
        return None
    if md.signed.version != version:
        problems.append(f"{role}: {p.name} holds version {md.signed.version}")
    return md

