"""``modelfleet data open`` against forged batches: anyone holding a campaign's public key (it is in Git and on
every device) can seal a batch, so its id, metadata and arrays are hostile input. Each forged batch must fail
alone with one line; nothing is written outside ``--out``; the genuine batches beside it still open; memory
stays bounded."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.public import PublicKey, SealedBox

import reconciler
from reconciler.capture.batch import (
    BOUND_FIELDS,
    MAGIC,
    MAX_BATCH_BYTES,
    MAX_MEMBERS,
    BatchError,
    new_batch_id,
    open_batch,
    seal_batch,
)
from reconciler.capture.policy import recipient_key_id
from tests._cli import run_cli
from tests.capture._capture import Campaign

# The code under test, also in the subprocess: the checkout this test process imported `reconciler` from.
CODE_ROOT = Path(reconciler.__file__).resolve().parent.parent
RSS_LIMIT_MB = 200


def _meta(**over: Any) -> dict[str, Any]:
    now = time.time()
    meta: dict[str, Any] = {"id": new_batch_id(now), "device": "dev-1", "endpoint": "mm", "model": "m",
                            "modelVersion": "1", "campaign": "c", "purpose": "p", "start": now, "end": now,
                            "records": 2, "rows": 2}
    meta.update(over)
    return meta


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def forge(public: bytes, meta: dict[str, Any], npz: bytes) -> bytes:
    """A batch sealed the way a device does, with any metadata and any bytes as the arrays (no checks)."""
    meta = dict(meta, format=1, keyId=recipient_key_id(public))
    inner = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n" + npz
    payload = SealedBox(PublicKey(public)).encrypt(inner)
    header = {k: meta[k] for k in BOUND_FIELDS if k in meta}
    header.update(payloadSha256=hashlib.sha256(payload).hexdigest(), payloadBytes=len(payload))
    return MAGIC + json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + payload


def genuine(campaign: Campaign, seed: int) -> tuple[str, bytes, np.ndarray]:
    rows = np.random.default_rng(seed).standard_normal((2, 16)).astype(np.float32)
    header, data = seal_batch(_meta(), {"input": rows, "output": rows.sum(axis=1)}, campaign.public)
    return header["id"], data, rows


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(name: str, data: bytes, method: int, usize: int, crc: int) -> bytes:
    """One-member zip built by hand, so a member can claim what it likes."""
    fname = name.encode()
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), usize, len(fname), 0)
    central = struct.pack("<4s6H3I5HII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), usize,
                          len(fname), 0, 0, 0, 0, 0, 0)
    body = local + fname + data
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(fname), len(body), 0)
    return body + central + fname + end


def deflate_bomb() -> bytes:
    """An .npz whose one DEFLATE member inflates to ~4 GiB of zeros (an npy header for 4095 MiB of float64):
    after a full flush each MiB of zeros compresses to the same bytes, so the stream is built by repetition."""
    mib = bytes(1 << 20)
    n_mib = 4095
    head = _npy_header((n_mib * (1 << 17),))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH) == block
    stream = first + block * n_mib + c.flush(zlib.Z_FINISH)
    assert zlib.decompressobj(-15).decompress(stream[:len(first) + 3 * len(block)]) == head + bytes(3 << 20)
    big = bytes(16 << 20)
    crc = zlib.crc32(head)
    for _ in range(n_mib // 16):
        crc = zlib.crc32(big, crc)
    crc = zlib.crc32(bytes((n_mib % 16) << 20), crc)
    return _zip("input.npy", stream, zipfile.ZIP_DEFLATED, len(head) + n_mib * (1 << 20), crc)


def lying_npy() -> bytes:
    """Stored, but the npy header says 4 GiB of float64 while 64 bytes follow."""
    data = _npy_header((1 << 29,)) + bytes(64)
    return _zip("input.npy", data, zipfile.ZIP_STORED, len(data), zlib.crc32(data))


def many_members(n: int) -> bytes:
    return _npz(**{f"a{i}": np.zeros(1, np.uint8) for i in range(n)})


def _key(tmp_path: Path, campaign: Campaign) -> Path:
    key = tmp_path / "campaign.key"
    key.write_text(base64.b64encode(campaign.private).decode() + "\n")
    return key


def _assert_genuine_opened(out: Path, bid: str, rows: np.ndarray) -> None:
    with np.load(out / f"{bid}.npz") as z:
        assert sorted(z.files) == ["input", "output"]
        np.testing.assert_array_equal(z["input"], rows)
    assert json.loads((out / f"{bid}.json").read_text())["id"] == bid


def _refusals(err: str, path: Path) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"error: {path}:")]


@pytest.fixture
def campaign() -> Campaign:
    return Campaign()


@pytest.mark.parametrize("kind", ["relative", "absolute", "nested"])
def test_a_forged_id_that_is_a_path_is_refused_and_nothing_is_written_outside_out(
        campaign: Campaign, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "work" / "opened"
    out.mkdir(parents=True)
    bid = {"relative": "../../outside/pwned", "absolute": str(outside / "pwned"), "nested": "sub/pwned"}[kind]
    if kind == "nested":
        (out / "sub").symlink_to(outside, target_is_directory=True)
    batches = tmp_path / "batches"
    batches.mkdir()
    forged = batches / "forged.mfcap"
    forged.write_bytes(forge(campaign.public, _meta(id=bid), _npz(input=np.ones((2, 3), np.float32))))
    gid, data, rows = genuine(campaign, 1)
    (batches / f"{gid}.mfcap").write_bytes(data)
    r = run_cli("data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(out), str(batches))
    assert r.code == 1, r.text
    assert "Traceback" not in r.text
    (line,) = _refusals(r.err, forged)
    assert "is not a plain name" in line
    assert sorted(p.name for p in outside.iterdir()) == []
    assert not list(tmp_path.rglob("pwned*"))
    _assert_genuine_opened(out, gid, rows)
    assert "1 of 2 batch(es) opened" in r.out


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_an_output_name_that_exists_as_a_symlink_is_neither_followed_nor_replaced(
        campaign: Campaign, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "opened"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (out / f"cap-victim{suffix}").symlink_to(victim)
    batches = tmp_path / "batches"
    batches.mkdir()
    forged = batches / "cap-victim.mfcap"
    forged.write_bytes(forge(campaign.public, _meta(id="cap-victim"), _npz(input=np.ones((2, 3), np.float32))))
    gid, data, rows = genuine(campaign, 2)
    (batches / f"{gid}.mfcap").write_bytes(data)
    r = run_cli("data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(out), str(batches))
    assert r.code == 1, r.text
    (line,) = _refusals(r.err, forged)
    assert f"cannot write {out / f'cap-victim{suffix}'}: exists as a symbolic link" in line
    assert victim.read_text() == "keep\n"
    assert (out / f"cap-victim{suffix}").is_symlink()
    assert not [p for p in out.iterdir() if p.name.startswith("cap-victim") and not p.is_symlink()]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind
    _assert_genuine_opened(out, gid, rows)


def test_a_second_batch_with_the_same_id_does_not_overwrite_the_first(campaign: Campaign, tmp_path: Path) -> None:
    gid, data, rows = genuine(campaign, 3)
    batches = tmp_path / "batches"
    batches.mkdir()
    (batches / "a.mfcap").write_bytes(data)
    (batches / "b.mfcap").write_bytes(forge(campaign.public, _meta(id=gid), _npz(input=np.zeros((2, 16), np.float32),
                                                                                  output=np.zeros(2, np.float32))))
    out = tmp_path / "opened"
    r = run_cli("data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(out), str(batches))
    assert r.code == 1
    assert f"error: {batches / 'b.mfcap'}: batch id {gid} was already opened from {batches / 'a.mfcap'}" in r.err
    _assert_genuine_opened(out, gid, rows)


def test_the_device_never_seals_an_id_that_is_not_a_plain_name(campaign: Campaign) -> None:
    with pytest.raises(BatchError, match="not a plain name"):
        seal_batch(_meta(id="../x"), {"input": np.zeros(1)}, campaign.public)


@pytest.mark.parametrize("npz, reason", [
    (lying_npy(), "x 8 bytes is not the 64 bytes the archive holds"),
    (many_members(MAX_MEMBERS + 1), f"members, more than {MAX_MEMBERS}"),
    (_npz(**{"../../evil": np.zeros(1)}), "is not '<name>.npy' with a plain name"),
    (_npz(input=np.array([{"a": 1}], dtype=object)), "is not a plain numeric or string type"),
    (_npz(input=np.zeros(1)) + b"junk", "sealed arrays are not a plain .npz"),
], ids=["npy-header-lies", "too-many-members", "member-path", "object-array", "trailing-bytes"])
def test_forged_arrays_are_refused_before_they_are_read(campaign: Campaign, npz: bytes, reason: str) -> None:
    with pytest.raises(BatchError, match=re.escape(reason)):
        open_batch(forge(campaign.public, _meta(), npz), campaign.private, name="forged")


def test_forged_metadata_is_refused(campaign: Campaign) -> None:
    for over, reason in [({"device": 5}, "'device' is not a string"), ({"start": 1e300}, "'start' is not a time"),
                         ({"records": -1}, "'records' is not a count")]:
        with pytest.raises(BatchError, match=reason):
            open_batch(forge(campaign.public, _meta(**over), _npz(input=np.zeros(1))), campaign.private)


def _open_in_subprocess(args: list[str]) -> tuple[int, str, str, int]:
    """Run ``modelfleet`` (the venv's console script) and return (exit code, stdout, stderr, peak RSS in MB) of
    that one process (wait4, so no other child of the test process counts)."""
    exe = Path(sys.executable).parent / "modelfleet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "reconciler.cli"]
    # The data owner's shell, not the test process's environment: what earlier tests left in os.environ (runtime
    # thread settings and the like) must not change what this process costs.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: os.environ[k] for k in keep if k in os.environ} | {"PYTHONPATH": str(CODE_ROOT)}

    # If the bomb goes off, fail with MemoryError rather than take 4 GiB of a shared host. The limit is set by a
    # small launcher that then execs the CLI: a preexec_fn would make Python fork the whole test process, and the
    # forked image (hundreds of MB late in a suite) would count as the child's peak RSS.
    launcher = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    if cmd[0] != sys.executable:
        cmd = [sys.executable, "-c", launcher, *cmd]
    else:
        cmd = [sys.executable, "-c", launcher, sys.executable, *cmd[1:]]

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd + args, stdout=out, stderr=err, env=env)
        timer = threading.Timer(120, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss // 1024


def test_bombs_and_forgeries_fail_alone_with_bounded_memory(campaign: Campaign, tmp_path: Path) -> None:
    batches = tmp_path / "batches"
    batches.mkdir()
    bad = {
        "a-deflate-bomb": forge(campaign.public, _meta(), deflate_bomb()),
        "b-npy-header-lies": forge(campaign.public, _meta(), lying_npy()),
        "c-many-members": forge(campaign.public, _meta(), many_members(5000)),
        "e-traversal": forge(campaign.public, _meta(id="../../pwned"), _npz(input=np.zeros(1))),
        "f-absolute": forge(campaign.public, _meta(id=str(tmp_path / "pwned")), _npz(input=np.zeros(1))),
    }
    assert 3_000_000 < len(bad["a-deflate-bomb"]) < 6_000_000
    for name, data in bad.items():
        (batches / f"{name}.mfcap").write_bytes(data)
    oversize = batches / "d-oversize.mfcap"
    with open(oversize, "wb") as fh:  # sparse: costs no disk
        fh.write(MAGIC)
        fh.truncate(MAX_BATCH_BYTES + 1)
    good = [genuine(campaign, seed) for seed in (10, 11)]
    for i, (gid, data, _) in enumerate(good):
        (batches / f"{'mz'[i]}-{gid}.mfcap").write_bytes(data)
    # Same-run baseline: the same command on the genuine batches alone (the CLI's own footprint on this machine).
    alone = tmp_path / "genuine-only"
    alone.mkdir()
    for i, (gid, data, _) in enumerate(good):
        (alone / f"{'mz'[i]}-{gid}.mfcap").write_bytes(data)
    base_code, _, base_err, base_rss = _open_in_subprocess(
        ["data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(tmp_path / "opened-alone"), str(alone)])
    assert base_code == 0, base_err
    out = tmp_path / "opened"
    code, stdout, stderr, rss_mb = _open_in_subprocess(
        ["data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(out), str(batches)])
    print(f"data open: peak RSS {rss_mb} MB; the genuine batches alone: {base_rss} MB")
    assert code == 1, stderr
    assert "Traceback" not in stderr + stdout
    for name in [*bad, "d-oversize"]:
        assert len(_refusals(stderr, batches / f"{name}.mfcap")) == 1, (name, stderr)
    assert len(stderr.splitlines()) == len(bad) + 1, stderr
    assert "is compressed (zip method 8)" in stderr
    assert f"{MAX_BATCH_BYTES + 1} bytes, over the {MAX_BATCH_BYTES}" in stderr
    for gid, _, rows in good:
        _assert_genuine_opened(out, gid, rows)
    assert "2 of 8 batch(es) opened" in stdout
    assert not list(tmp_path.rglob("pwned*"))
    # The hostile batches may cost less than RSS_LIMIT_MB over what opening the genuine ones costs (alone, on
    # an idle machine: 77 MB of 77 MB; the footprint itself varies with the machine, the bound does not).
    assert rss_mb - base_rss < RSS_LIMIT_MB, (rss_mb, base_rss)


def test_sealed_strings_reach_the_terminal_without_control_sequences(campaign: Campaign, tmp_path: Path) -> None:
    batch = tmp_path / "b.mfcap"
    batch.write_bytes(forge(campaign.public, _meta(device="\x1b]0;owned\x07\x1b[2Jdev", model="m" * 5000),
                            _npz(input=np.zeros(1))))
    r = run_cli("data", "open", "--key", str(_key(tmp_path, campaign)), "--out", str(tmp_path / "o"), str(batch))
    assert r.code == 0, r.text
    assert "\x1b" not in r.text and "\x07" not in r.text
    assert "\\x1b]0;owned\\x07\\x1b[2Jdev" in r.out
    assert max(len(line) for line in r.out.splitlines()) < 400
