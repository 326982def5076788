"""A static TUF repository built with python-tuf's Metadata API alone — no modelfleet publisher code.

It stands in for "a repository made by another TUF implementation": the files it writes are what the
specification (and python-tuf's ``examples/manual_repo``) lays out, so the device client is checked against
the spec rather than against our own publisher's habits::

    repo = StaticRepo(tmp_path / "repo")
    repo.add_target("a/b/model.onnx", data, hash_algorithms=["sha512"])   # no ``custom`` unless given
    repo.delegate("targets", "vision", paths=["models/*/v?.onnx"], terminating=True)
    repo.publish()                                                          # signs and writes metadata/

Every :meth:`StaticRepo.publish` bumps the version of every role but root and re-signs, so a test can keep
old bytes around to replay (rollback, mix-and-match).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
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

_TOP = ("root", "timestamp", "snapshot", "targets")


def _in(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


class StaticRepo:
    """Top-level roles plus delegations, one ed25519 key each, served as plain files from ``dir``."""

    def __init__(self, directory: Path, consistent_snapshot: bool = True) -> None:
        self.dir = Path(directory)
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.signers: dict[str, Signer] = {}
        self.roles: dict[str, Metadata[Any]] = {}
        self.parents: dict[str, str] = {}  # delegated role → delegating role
        root = Root(expires=_in(365), consistent_snapshot=consistent_snapshot)
        for name in _TOP:
            signer = CryptoSigner.generate_ed25519()
            self.signers[name] = signer
            root.add_key(signer.public_key, name)
        self.roles["root"] = Metadata(root)
        self.roles["timestamp"] = Metadata(Timestamp(expires=_in(1)))
        self.roles["snapshot"] = Metadata(Snapshot(expires=_in(7)))
        self.roles["targets"] = Metadata(Targets(expires=_in(30)))
        self._published = False
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self._write("root", self.roles["root"], versioned=True)

    @property
    def consistent(self) -> bool:
        return bool(self.roles["root"].signed.consistent_snapshot)

    def root_bytes(self) -> bytes:
        return (self.metadata_dir / "1.root.json").read_bytes()

    # -- content

    def add_target(
        self, path: str, data: bytes, role: str = "targets", hash_algorithms: list[str] | None = None,
        custom: dict[str, Any] | None = None,
    ) -> TargetFile:
        """Sign ``data`` as ``path`` in ``role`` (at the next publish) and write the file(s) the spec names."""
        info = TargetFile.from_data(path, data, hash_algorithms or ["sha256"])
        if custom is not None:
            info.unrecognized_fields["custom"] = custom
        self.roles[role].signed.targets[path] = info
        self.write_target_file(info, data)
        return info

    def write_target_file(self, info: TargetFile, data: bytes) -> None:
        """Write ``data`` where a client looks for ``info`` (one hash-prefixed copy per hash when consistent)."""
        dirname, sep, base = info.path.rpartition("/")
        names = [f"{dirname}{sep}{h}.{base}" for h in info.hashes.values()] if self.consistent else [info.path]
        for name in names:
            out = self.targets_dir / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)

    def delegate(
        self, parent: str, name: str, paths: list[str] | None = None, terminating: bool = False,
        path_hash_prefixes: list[str] | None = None,
    ) -> None:
        """Add delegated role ``name`` under ``parent`` (in call order, which is the search order)."""
        signer = CryptoSigner.generate_ed25519()
        self.signers[name] = signer
        delegator: Targets = self.roles[parent].signed
        if delegator.delegations is None:
            delegator.delegations = Delegations(keys={}, roles={})
        assert delegator.delegations.roles is not None
        delegator.delegations.roles[name] = DelegatedRole(
            name=name, keyids=[], threshold=1, terminating=terminating, paths=paths,
            path_hash_prefixes=path_hash_prefixes,
        )
        delegator.add_key(signer.public_key, name)
        self.roles[name] = Metadata(Targets(expires=_in(30)))
        self.parents[name] = parent

    # -- publishing

    def publish(self, timestamp_expires: datetime | None = None) -> None:
        """Bump, sign and write every role but root: targets roles, then snapshot, then timestamp."""
        targets_roles = [n for n in self.roles if n not in ("root", "timestamp", "snapshot")]
        snapshot: Snapshot = self.roles["snapshot"].signed
        for name in targets_roles:
            md = self.roles[name]
            if self._published:
                md.signed.version += 1
            self._sign(name)
            self._write(name, md, versioned=self.consistent)
            snapshot.meta[f"{name}.json"] = MetaFile(version=md.signed.version)
        if self._published:
            snapshot.version += 1
        self._sign("snapshot")
        self._write("snapshot", self.roles["snapshot"], versioned=self.consistent)
        timestamp: Timestamp = self.roles["timestamp"].signed
        if self._published:
            timestamp.version += 1
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        timestamp.expires = timestamp_expires or _in(1)
        self._sign("timestamp")
        self._write("timestamp", self.roles["timestamp"], versioned=False)
        self._published = True

    def _sign(self, name: str) -> None:
        md = self.roles[name]
        md.signatures.clear()
        md.sign(self.signers[name], append=True)

    def _write(self, name: str, md: Metadata[Any], versioned: bool) -> None:
        if name == "root":
            md.sign(self.signers["root"])
        data = md.to_bytes(JSONSerializer(compact=False))
        if versioned:
            (self.metadata_dir / f"{md.signed.version}.{name}.json").write_bytes(data)
        (self.metadata_dir / f"{name}.json").write_bytes(data)

    def metadata_file(self, name: str) -> Path:
        """The file a client fetches for role ``name`` at its current version."""
        version = self.roles[name].signed.version
        if name == "timestamp" or not self.consistent:
            return self.metadata_dir / f"{name}.json"
        return self.metadata_dir / f"{version}.{name}.json"
