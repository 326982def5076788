"""``modelfleet tuf-client``: the tuf-conformance client-under-test protocol (init / refresh / download)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from tests._cli import run_cli
from tests._tuf_fixtures import Published, published  # noqa: F401


def _base(published: Published, mdir: Path) -> list[str]:  # noqa: F811
    return ["tuf-client", "--metadata-dir", str(mdir), "--metadata-url", published.metadata_url]


def _download(published: Published, mdir: Path, tdir: Path, *names: str):  # type: ignore[no-untyped-def]  # noqa: F811
    args = [*_base(published, mdir)]
    for n in names:
        args += ["--target-name", n]
    return run_cli(*args, "--target-base-url", published.targets_url, "--target-dir", str(tdir), "download")


def test_protocol_round_trip(published: Published, tmp_path: Path) -> None:  # noqa: F811
    mdir, tdir = tmp_path / "md", tmp_path / "artifacts"
    a = published.add("a.onnx", b"A" * 100, prefix="vision/a")
    b = published.add("b.txt", b"B" * 10, prefix="")
    published.server.reset_stats()
    r = run_cli("tuf-client", "--metadata-dir", str(mdir), "init", str(published.provisioned_root))
    assert r.code == 0, r.text
    assert published.server.requests == []  # init makes no network request
    r = run_cli(*_base(published, mdir), "refresh")
    assert r.code == 0, r.text
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert (mdir / f"{role}.json").is_file(), role
    r = _download(published, mdir, tdir, a, b)
    assert r.code == 0, r.text
    assert (tdir / quote(a, "")).read_bytes() == b"A" * 100
    assert (tdir / "b.txt").read_bytes() == b"B" * 10
    # Already downloaded with matching hashes: not fetched again.
    published.server.reset_stats()
    assert _download(published, mdir, tdir, a).code == 0
    assert not [p for p, _ in published.server.requests if p.startswith("/targets/")]
    # New content for the same path lands under the same name.
    published.add("a.onnx", b"A2" * 100, prefix="vision/a")
    assert _download(published, mdir, tdir, a).code == 0
    assert (tdir / quote(a, "")).read_bytes() == b"A2" * 100
    assert sorted(p.name for p in tdir.iterdir()) == sorted([quote(a, ""), "b.txt"])


def test_failures_exit_1_and_stop_at_the_first(published: Published, tmp_path: Path) -> None:  # noqa: F811
    mdir, tdir = tmp_path / "md", tmp_path / "artifacts"
    good = published.add("good.onnx", b"good", prefix="m")
    bad = published.add("bad.onnx", b"honest", prefix="m")
    published.target_file(bad).write_bytes(b"evil!!")
    assert run_cli("tuf-client", "--metadata-dir", str(mdir), "init", str(published.provisioned_root)).code == 0
    r = _download(published, mdir, tdir, bad, good)
    assert r.code == 1 and "TargetHashMismatch" in r.err and "Traceback" not in r.text
    assert not (tdir / quote(good, "")).exists()
    r = _download(published, mdir, tdir, "no/such/target")
    assert r.code == 1 and "TargetNotFound" in r.err


def test_refresh_without_init_and_bad_root(published: Published, tmp_path: Path) -> None:  # noqa: F811
    r = run_cli(*_base(published, tmp_path / "md"), "refresh")
    assert r.code == 1 and "run `init` first" in r.err
    r = run_cli("tuf-client", "--metadata-dir", str(tmp_path / "md"), "init", str(tmp_path / "missing.json"))
    assert r.code == 1 and "cannot read" in r.err
    (tmp_path / "junk.json").write_text("{not json")
    assert run_cli("tuf-client", "--metadata-dir", str(tmp_path / "md2"), "init", str(tmp_path / "junk.json")).code == 0
    r = run_cli(*_base(published, tmp_path / "md2"), "refresh")
    assert r.code == 1 and "error:" in r.err and "Traceback" not in r.text
