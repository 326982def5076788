"""The device's TUF client against a repository built with python-tuf's Metadata API alone (tests/_tuf_static.py).

Every spec-conformant shape a foreign publisher may use downloads and verifies; every attack still fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from reconciler.distribution.httpserve import StaticServer
from reconciler.distribution.store import ModelStore
from reconciler.distribution.tufclient import TufClient, TufClientError
from tests._cli import run_cli
from tests._tuf_static import StaticRepo


@dataclass
class Served:
    repo: StaticRepo
    server: StaticServer
    tmp: Path

    def client(self, name: str = "device") -> TufClient:
        root = self.tmp / f"{name}-root.json"
        root.write_bytes(self.repo.root_bytes())
        state = self.tmp / name
        return TufClient(
            state / "tuf", f"{self.server.url}/metadata", f"{self.server.url}/targets", root,
            ModelStore(state / "store"),
        )

    def target_requests(self) -> list[str]:
        return [p for p, _ in self.server.requests if p.startswith("/targets/")]


@pytest.fixture(params=[True, False], ids=["consistent", "plain"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    repo = StaticRepo(tmp_path / "repo", consistent_snapshot=request.param)
    server = StaticServer(repo.dir).start()
    try:
        yield Served(repo, server, tmp_path)
    finally:
        server.stop()


def _fetch_one(client: TufClient, path: str) -> tuple[bytes, bool]:
    client.refresh()
    stored = client.fetch([path])[path]
    return client.load_bytes(stored), stored.downloaded


# ------------------------------------------------------------------------------------ conformant shapes


def test_target_without_custom_downloads(served: Served) -> None:
    served.repo.add_target("plain.bin", b"no custom here")
    served.repo.publish()
    client = served.client()
    client.refresh()
    stored = client.fetch(["plain.bin"])["plain.bin"]
    assert stored.custom == {} and stored.encrypted is False
    assert client.load_bytes(stored) == b"no custom here"


@pytest.mark.parametrize("algorithms", [["sha512"], ["sha256", "sha512"], ["sha512", "sha384"], ["blake2b"]])
def test_other_hash_algorithms_verify_and_are_cached(served: Served, algorithms: list[str]) -> None:
    data = b"weights " * 1000
    served.repo.add_target("m/model.onnx", data, hash_algorithms=algorithms)
    served.repo.publish()
    assert _fetch_one(served.client(), "m/model.onnx") == (data, True)
    served.server.reset_stats()
    # A new pass (fresh updater, same device state): still valid in the store, not fetched again.
    assert _fetch_one(served.client(), "m/model.onnx") == (data, False)
    assert served.target_requests() == []


@pytest.mark.parametrize("algorithms", [["sha512"], ["sha256", "sha512"]])
def test_any_wrong_hash_rejects_the_target(served: Served, algorithms: list[str]) -> None:
    data = b"genuine model"
    info = served.repo.add_target("m.onnx", data, hash_algorithms=algorithms)
    served.repo.publish()
    if len(algorithms) > 1:
        # sha256 right, sha512 wrong: each declared hash is checked with its own algorithm.
        info.hashes["sha512"] = hashlib.sha512(b"something else").hexdigest()
        served.repo.publish()
    else:
        served.repo.write_target_file(info, b"tampered mod!")  # same length, other bytes
    client = served.client()
    client.refresh()
    with pytest.raises(TufClientError) as err:
        client.fetch(["m.onnx"])
    assert err.value.reason == "TargetHashMismatch"
    assert client.store.digests() == set()


def test_target_paths_in_subdirectories(served: Served) -> None:
    served.repo.add_target("vision/detector/v1/model.onnx", b"deep", hash_algorithms=["sha512"])
    served.repo.add_target("vision/detector/v1/probe.json", b"{}")
    served.repo.publish()
    client = served.client()
    client.refresh()
    got = client.fetch(["vision/detector/v1/model.onnx", "vision/detector/v1/probe.json"])
    assert client.load_bytes(got["vision/detector/v1/model.onnx"]) == b"deep"
    assert client.load_bytes(got["vision/detector/v1/probe.json"]) == b"{}"


def test_delegations_with_wildcards_and_separators(served: Served) -> None:
    repo = served.repo
    repo.delegate("targets", "vision", paths=["models/*/v?.onnx"])
    repo.delegate("vision", "nested", paths=["models/nested/*"])
    repo.add_target("models/det/v1.onnx", b"one", role="vision")
    repo.add_target("models/nested/v2.onnx", b"nested", role="nested")
    repo.add_target("models/det/extra/v1.onnx", b"too deep", role="vision")  # '*' must not cross '/'
    repo.add_target("models/det/v10.onnx", b"two chars", role="vision")  # '?' is exactly one character
    repo.publish()
    client = served.client()
    client.refresh()
    assert client.load_bytes(client.fetch(["models/det/v1.onnx"])["models/det/v1.onnx"]) == b"one"
    assert client.load_bytes(client.fetch(["models/nested/v2.onnx"])["models/nested/v2.onnx"]) == b"nested"
    for outside in ("models/det/extra/v1.onnx", "models/det/v10.onnx"):
        with pytest.raises(TufClientError) as err:
            client.fetch([outside])
        assert err.value.reason == "TargetNotFound", outside


@pytest.mark.parametrize("terminating", [True, False])
def test_terminating_delegation_stops_the_search(served: Served, terminating: bool) -> None:
    repo = served.repo
    repo.delegate("targets", "first", paths=["shared/*"], terminating=terminating)
    repo.delegate("targets", "second", paths=["shared/*"])
    repo.add_target("shared/model.onnx", b"from second", role="second")
    repo.publish()
    client = served.client()
    client.refresh()
    if terminating:
        with pytest.raises(TufClientError) as err:
            client.fetch(["shared/model.onnx"])
        assert err.value.reason == "TargetNotFound"
    else:
        assert client.load_bytes(client.fetch(["shared/model.onnx"])["shared/model.onnx"]) == b"from second"


def test_target_that_changes_between_refreshes(served: Served) -> None:
    served.repo.add_target("m.onnx", b"version one")
    served.repo.publish()
    client = served.client()
    assert _fetch_one(client, "m.onnx") == (b"version one", True)
    served.repo.add_target("m.onnx", b"version two, longer", hash_algorithms=["sha512"])
    served.repo.publish()
    assert _fetch_one(client, "m.onnx") == (b"version two, longer", True)
    served.server.reset_stats()
    assert _fetch_one(client, "m.onnx") == (b"version two, longer", False)
    assert served.target_requests() == []


def test_tuf_client_cli_against_foreign_repository(served: Served, tmp_path: Path) -> None:
    served.repo.add_target("dir/plain.bin", b"cli bytes", hash_algorithms=["sha512"])
    served.repo.publish()
    mdir, tdir, root = tmp_path / "md", tmp_path / "out", tmp_path / "trusted-root.json"
    root.write_bytes(served.repo.root_bytes())
    base = ["tuf-client", "--metadata-dir", str(mdir), "--metadata-url", f"{served.server.url}/metadata"]
    assert run_cli("tuf-client", "--metadata-dir", str(mdir), "init", str(root)).code == 0
    r = run_cli(*base, "--target-name", "dir/plain.bin", "--target-base-url", f"{served.server.url}/targets",
                "--target-dir", str(tdir), "download")
    assert r.code == 0, r.text
    assert (tdir / quote("dir/plain.bin", "")).read_bytes() == b"cli bytes"


def test_tuf_client_cli_unexpected_error_is_one_line(served: Served, tmp_path: Path) -> None:
    served.repo.add_target("x.bin", b"x")
    served.repo.publish()
    mdir, root, blocker = tmp_path / "md", tmp_path / "trusted-root.json", tmp_path / "not-a-dir"
    root.write_bytes(served.repo.root_bytes())
    blocker.write_text("a file where the target directory should be")
    assert run_cli("tuf-client", "--metadata-dir", str(mdir), "init", str(root)).code == 0
    r = run_cli("tuf-client", "--metadata-dir", str(mdir), "--metadata-url", f"{served.server.url}/metadata",
                "--target-name", "x.bin", "--target-base-url", f"{served.server.url}/targets",
                "--target-dir", str(blocker), "download")
    assert r.code == 1
    assert "Traceback" not in r.text
    assert r.err.count("\n") == 1 and r.err.startswith("error: unexpected error: "), r.err


# --------------------------------------------------------------------------------------------- attacks


def test_tampered_target_fails(served: Served) -> None:
    info = served.repo.add_target("m.onnx", b"genuine")
    served.repo.publish()
    served.repo.write_target_file(info, b"evil!!!")
    client = served.client()
    client.refresh()
    with pytest.raises(TufClientError) as err:
        client.fetch(["m.onnx"])
    assert err.value.reason == "TargetHashMismatch"


def test_wrong_length_fails(served: Served) -> None:
    info = served.repo.add_target("m.onnx", b"genuine")
    served.repo.publish()
    served.repo.write_target_file(info, b"genuine plus a long tail the metadata never signed")
    client = served.client()
    client.refresh()
    with pytest.raises(TufClientError) as err:
        client.fetch(["m.onnx"])
    assert err.value.reason == "LengthExceeded"
    assert client.store.digests() == set()


def test_metadata_rollback_fails(served: Served) -> None:
    served.repo.add_target("m.onnx", b"v1")
    served.repo.publish()
    old_timestamp = served.repo.metadata_file("timestamp").read_bytes()
    served.repo.publish()
    client = served.client()
    client.refresh()
    served.repo.metadata_file("timestamp").write_bytes(old_timestamp)
    with pytest.raises(TufClientError) as err:
        client.refresh()
    assert err.value.reason == "RollbackAttack"


def test_expired_timestamp_fails(served: Served) -> None:
    served.repo.add_target("m.onnx", b"v1")
    served.repo.publish(timestamp_expires=datetime.now(timezone.utc) - timedelta(minutes=1))
    with pytest.raises(TufClientError) as err:
        served.client().refresh()
    assert err.value.reason == "MetadataExpired"


def test_mix_and_match_fails(served: Served) -> None:
    served.repo.add_target("m.onnx", b"v1")
    served.repo.publish()
    old_targets = served.repo.metadata_file("targets").read_bytes()
    served.repo.add_target("m.onnx", b"v2")
    served.repo.publish()
    # The current snapshot, served with an older (validly signed) targets role.
    served.repo.metadata_file("targets").write_bytes(old_targets)
    client = served.client()
    with pytest.raises(TufClientError) as err:
        client.refresh()
        client.fetch(["m.onnx"])
    assert err.value.reason in ("RollbackAttack", "MetadataMismatch")
    assert client.store.digests() == set()


def test_publisher_listing_reads_a_foreign_repository(served: Served) -> None:
    from reconciler.distribution import tufrepo

    served.repo.add_target("plain.bin", b"no custom", hash_algorithms=["sha512"])
    served.repo.publish()
    (row,) = tufrepo.list_targets(served.repo.dir)
    assert (row.path, row.length, row.custom) == ("plain.bin", 9, {})


def test_tuf_client_init_unexpected_error_is_one_line(tmp_path: Path) -> None:
    root, blocker = tmp_path / "root.json", tmp_path / "file"
    root.write_text("{}")
    blocker.write_text("not a directory")
    r = run_cli("tuf-client", "--metadata-dir", str(blocker / "md"), "init", str(root))
    assert r.code == 1 and "Traceback" not in r.text
    assert r.err.count("\n") == 1 and r.err.startswith("error: unexpected error: "), r.err
