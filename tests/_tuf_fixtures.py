"""Shared fixtures for the TUF tests: a signed repository served over HTTP on 127.0.0.1, and a device client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from reconciler.distribution import tufrepo
from reconciler.distribution.httpserve import StaticServer
from reconciler.distribution.store import ModelStore
from reconciler.distribution.tufclient import TufClient


@dataclass
class Published:
    """A publisher's repository, its keys and the server that serves it."""

    dir: Path
    keys: Path
    root_keys: Path
    server: StaticServer
    tmp: Path
    provisioned_root: Path = field(init=False)

    def __post_init__(self) -> None:
        # What a device is provisioned with: root v1, copied out of the repository.
        self.provisioned_root = self.tmp / "provisioned-root.json"
        shutil.copyfile(self.dir / "metadata" / "1.root.json", self.provisioned_root)

    @property
    def metadata_url(self) -> str:
        return f"{self.server.url}/metadata"

    @property
    def targets_url(self) -> str:
        return f"{self.server.url}/targets"

    def add(self, name: str, data: bytes, prefix: str = "models/m/1.0", **kw: Any) -> str:
        src = self.tmp / "src" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        key_dirs = kw.pop("key_dirs", [self.keys])
        rows = tufrepo.add_targets(self.dir, key_dirs, [src], prefix, **kw)
        return rows[0].path

    def client(self, name: str = "device", **kw: Any) -> TufClient:
        state = self.tmp / name
        return TufClient(
            state / "tuf", self.metadata_url, self.targets_url, self.provisioned_root,
            ModelStore(state / "store"), **kw,
        )

    def meta(self, name: str) -> Path:
        return self.dir / "metadata" / name

    def target_file(self, path: str) -> Path:
        row = next(r for r in tufrepo.list_targets(self.dir) if r.path == path)
        return self.dir / "targets" / tufrepo.target_url_path(path, row.sha256)


@pytest.fixture
def published(tmp_path: Path) -> Iterator[Published]:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    tufrepo.init_repo(repo, keys)
    server = StaticServer(repo).start()
    try:
        yield Published(repo, keys, tufrepo.default_root_keys_dir(keys), server, tmp_path)
    finally:
        server.stop()


class FakeClock:
    """An injectable clock for freeze-attack tests."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)
