"""The batch file: records sealed to the data owner's public key, with authenticated metadata.

Layout of ``<id>.mfcap``::

    MFCAP1\\n
    <header: one line of JSON>\\n
    <sealed payload>

The sealed payload is a libsodium sealed box (X25519 + XSalsa20-Poly1305, PyNaCl ``SealedBox``) of
``<metadata JSON>\\n<npz bytes>``. Only the holder of the recipient's private key opens it; the device, which
has only the public key, can write batches but never read them back. The plaintext header lets the device
manage batches (quota, TTL, erasure, upload) without decrypting; everything in it is repeated in the sealed
metadata and the header carries the payload's SHA-256, so on open a changed header (other device, endpoint,
time range, count) or a changed/truncated payload is rejected. A sealed box proves integrity, not origin
(anyone with the public key can seal): origin rests on the upload channel (see docs/privacy.md).

So everything inside a batch is hostile input on open: the id must be a plain file name (it names the output
files), the file is size-capped before it is read, and the arrays are read only from an uncompressed ``.npz``
whose member sizes (central directory and ``.npy`` headers) add up before anything is allocated.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from reconciler.capture.policy import recipient_key_id

MAGIC = b"MFCAP1\n"
SUFFIX = ".mfcap"
MAX_HEADER = 16 * 1024
# A device seals once 4 MiB of records are buffered (MAX_OPEN_BATCH_BYTES), so a batch is that plus its last
# record; the cap leaves room for one large request and bounds what `data open` reads and decrypts.
MAX_BATCH_BYTES = 128 * 1024 * 1024
MAX_MEMBERS = 1024  # arrays in one batch: one per input/output name
MAX_ARRAY_NAME = 1024
MAX_NDIM = 32
MAX_DIM = 2**31 - 1
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last time a datetime can show
# Plain file names only: the id names the batch file on the device and the output files on open.
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ARRAY_KINDS = "biufcSU"  # what a device captures; object arrays would need pickle
# Fields the header and the sealed metadata must agree on.
BOUND_FIELDS = ("format", "id", "device", "endpoint", "model", "modelVersion", "campaign", "purpose", "keyId",
                "start", "end", "records", "rows")


class BatchError(ValueError):
    """A batch that is not what its header says (tampered, truncated, wrong key, forged)."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def valid_batch_id(value: object) -> bool:
    return isinstance(value, str) and BATCH_ID.fullmatch(value) is not None


def _check_id(value: object, name: str) -> None:
    if not valid_batch_id(value):
        shown = _short(value) if isinstance(value, str) else type(value).__name__
        raise BatchError(f"{name}: batch id {shown} is not a plain name (letters, digits, '.', '_', '-'; "
                         "at most 128)")


def new_batch_id(now: float) -> str:
    """Sortable and unique: UTC time of sealing (milliseconds) plus 64 random bits."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"cap-{stamp}{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class OpenedBatch:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


# Triggers are fixed identifiers: a record index entry is written without JSON escaping (see _index_json).
_PLAIN_TRIGGER = re.compile(r"[A-Za-z]{1,32}")


def _index_json(record_index: Sequence[tuple[float, str, int]]) -> str:
    """``[{"rows":…,"time":…,"trigger":…}, …]`` as JSON, for (time, trigger, rows) tuples: what ``json.dumps``
    of those dicts (time rounded to ms) says, at a third of its cost (a batch holds up to 100,000 records)."""
    kinds = {(r[1], r[2]) for r in record_index}  # (trigger, rows): one, or a few
    if not all(_PLAIN_TRIGGER.fullmatch(trigger) for trigger, _ in kinds):
        return json.dumps([{"rows": n, "time": round(t, 3), "trigger": trigger} for t, trigger, n in record_index],
                          separators=(",", ":"))
    entries = {(trigger, n): f'{{"rows":{n:d},"time":%.3f,"trigger":"{trigger}"}}' for trigger, n in kinds}
    if len(entries) == 1:  # the common batch (sampled, one row each)
        template = ",".join(list(entries.values()) * len(record_index))
    else:
        template = ",".join([entries[r[1], r[2]] for r in record_index])
    return "[" + template % tuple([r[0] for r in record_index]) + "]"


def seal_batch(meta: dict[str, Any], arrays: dict[str, np.ndarray], recipient: bytes, *,
               record_index: Sequence[tuple[float, str, int]] | None = None) -> tuple[dict[str, Any], bytes]:
    """The header and the file bytes of a batch sealed to ``recipient`` (32-byte X25519 public key).

    ``record_index``: (time, trigger, rows) per record, sealed as the metadata's ``recordIndex``."""
    _check_id(meta.get("id"), "seal")
    meta = dict(meta, format=1, keyId=recipient_key_id(recipient))
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if record_index is not None:
        text = text[:-1] + ',"recordIndex":' + _index_json(record_index) + "}"
    inner = text.encode() + b"\n" + npz_bytes(arrays)
    payload = SealedBox(PublicKey(recipient)).encrypt(inner)
    header = {k: meta[k] for k in BOUND_FIELDS if k in meta}
    header["payloadSha256"] = hashlib.sha256(payload).hexdigest()
    header["payloadBytes"] = len(payload)
    line = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    data = MAGIC + line + b"\n" + payload
    if len(data) > MAX_BATCH_BYTES:
        raise BatchError(f"seal: batch of {len(data)} bytes is over the {MAX_BATCH_BYTES} a batch can be")
    return header, data


def read_header(data: bytes | memoryview, *, name: str = "batch") -> tuple[dict[str, Any], int]:
    """The plaintext header and the payload's offset; raises BatchError when the file is not a batch."""
    head = bytes(data[: len(MAGIC) + MAX_HEADER])
    if not head.startswith(MAGIC):
        raise BatchError(f"{name}: not a modelfleet capture batch (bad magic)")
    end = head.find(b"\n", len(MAGIC))
    if end < 0:
        raise BatchError(f"{name}: truncated header")
    try:
        header = json.loads(head[len(MAGIC):end])
    except (ValueError, RecursionError):
        raise BatchError(f"{name}: header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != 1:
        raise BatchError(f"{name}: unsupported batch format {header.get('format') if isinstance(header, dict) else '?'}")
    _check_id(header.get("id"), name)
    return header, end + 1


def read_header_file(path: Any) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + MAX_HEADER)
    return read_header(head, name=str(path))[0]


def read_batch_file(path: str | os.PathLike[str], limit: int = MAX_BATCH_BYTES) -> bytes:
    """A batch file's bytes; refuses what is not a regular file or is over ``limit`` before reading it."""
    # O_NONBLOCK: a FIFO named like a batch must not hang the command
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BatchError(f"{os.fspath(path)}: not a regular file")
        if st.st_size > limit:
            raise BatchError(f"{os.fspath(path)}: {st.st_size} bytes, over the {limit} a batch can be")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BatchError(f"{os.fspath(path)}: over the {limit} bytes a batch can be")
    return data


def _check_meta(meta: Mapping[str, Any], name: str) -> None:
    """The sealed metadata fields `data open` prints and files by, with the types a device writes."""
    _check_id(meta.get("id"), name)
    for k in ("device", "endpoint", "model", "modelVersion", "campaign", "purpose"):
        if not isinstance(meta.get(k), str):
            raise BatchError(f"{name}: sealed metadata field {k!r} is not a string")
    for k in ("start", "end"):
        v = meta.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_TIME:
            raise BatchError(f"{name}: sealed metadata field {k!r} is not a time (seconds since 1970)")
    for k in ("records", "rows"):
        v = meta.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BatchError(f"{name}: sealed metadata field {k!r} is not a count")


_EOCD = struct.Struct("<4sHHHHIIH")
_CENTRAL = struct.Struct("<4s6H3I5HII")
_LOCAL = struct.Struct("<4s5H3I2H")
_DOS_DATE = 0x21  # 1980-01-01: no clock reading in the archive


def _npy_bytes(arr: np.ndarray) -> bytes:
    """What ``np.lib.format.write_array`` writes (format 1.0), at a fifth of its cost for a plain array."""
    if arr.flags.c_contiguous and not arr.dtype.hasobject and arr.dtype.fields is None:
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {arr.shape!r}, }}"
        text += " " * (63 - (len(text) + 10) % 64) + "\n"  # the data starts 64-byte aligned
        if len(text) < 65536:
            return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin-1") + arr.tobytes()
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``np.savez`` layout (a plain zip, stored, one ``<name>.npy`` member per array, never pickling) built
    in memory directly: ``zipfile`` costs a device's writer more per batch than sealing it."""
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for key, arr in arrays.items():
        data = _npy_bytes(np.asanyarray(arr))
        name = f"{key}.npy".encode("utf-8", "surrogatepass")
        flags = 0 if name.isascii() else 0x800
        crc = zlib.crc32(data)
        local += [_LOCAL.pack(b"PK\x03\x04", 20, flags, zipfile.ZIP_STORED, 0, _DOS_DATE, crc, len(data), len(data),
                              len(name), 0), name, data]
        central += [_CENTRAL.pack(b"PK\x01\x02", 20, 20, flags, zipfile.ZIP_STORED, 0, _DOS_DATE, crc, len(data),
                                  len(data), len(name), 0, 0, 0, 0, 0, offset), name]
        offset += _LOCAL.size + len(name) + len(data)
    cd = b"".join(central)
    return b"".join(local) + cd + _EOCD.pack(b"PK\x05\x06", 0, 0, len(arrays), len(arrays), len(cd), offset, 0)


def _valid_array_name(key: str) -> bool:
    # An output .npz is a zip: a member name that is a path could be unpacked outside a directory.
    parts = key.split("/")
    return (0 < len(key.encode("utf-8", "surrogatepass")) <= MAX_ARRAY_NAME and not key.startswith("/")
            and "\\" not in key and all(p not in ("", ".", "..") for p in parts)
            and all(c.isprintable() for c in key))


def _npz_members(npz: bytes, name: str) -> dict[str, int]:
    """Member name -> size from the zip's central directory, checked before zipfile parses it: one plain,
    uncompressed archive as ``np.savez`` writes it, at most MAX_MEMBERS ``<array>.npy`` members that fit."""
    n = len(npz)
    if n < _EOCD.size:
        raise BatchError(f"{name}: sealed arrays are not a .npz (too short)")
    sig, disk, cd_disk, here, count, cd_size, cd_offset, comment = _EOCD.unpack_from(npz, n - _EOCD.size)
    if (sig != b"PK\x05\x06" or comment or disk or cd_disk or here != count
            or cd_offset + cd_size != n - _EOCD.size):
        raise BatchError(f"{name}: sealed arrays are not a plain .npz (end of central directory)")
    if count > MAX_MEMBERS:
        raise BatchError(f"{name}: sealed arrays have {count} members, more than {MAX_MEMBERS}")
    members: dict[str, int] = {}
    total = 0
    pos = cd_offset
    for _ in range(count):
        if pos + _CENTRAL.size > cd_offset + cd_size:
            raise BatchError(f"{name}: sealed arrays: central directory truncated")
        (sig, _, _, flags, method, _, _, _, csize, usize, nlen, xlen, clen, _, _, _, offset) = \
            _CENTRAL.unpack_from(npz, pos)
        raw = npz[pos + _CENTRAL.size:pos + _CENTRAL.size + nlen]
        pos += _CENTRAL.size + nlen + xlen + clen
        member = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if sig != b"PK\x01\x02":
            raise BatchError(f"{name}: sealed arrays: central directory damaged")
        if method != zipfile.ZIP_STORED:
            raise BatchError(f"{name}: sealed array {member[:80]!r} is compressed (zip method {method}); "
                             "devices write uncompressed arrays")
        if flags & 0x1 or csize != usize or 0xFFFFFFFF in (csize, usize, offset):
            raise BatchError(f"{name}: sealed array {member[:80]!r} is encrypted, zip64 or inconsistent in size")
        total += usize
        if total > cd_offset or offset >= cd_offset:
            raise BatchError(f"{name}: sealed arrays claim more bytes than the archive holds")
        key = member.removesuffix(".npy")
        if key == member or not _valid_array_name(key):
            raise BatchError(f"{name}: sealed array name {member[:80]!r} is not '<name>.npy' with a plain name")
        if member in members:
            raise BatchError(f"{name}: sealed array {member[:80]!r} appears twice")
        members[member] = usize
    if pos != cd_offset + cd_size:
        raise BatchError(f"{name}: sealed arrays: central directory size does not match its entries")
    return members


def _read_arrays(npz: bytes, name: str) -> dict[str, np.ndarray]:
    members = _npz_members(npz, name)
    fmt = np.lib.format
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(npz)) as z:
        infos = z.infolist()
        if {i.filename: i.file_size for i in infos} != members or len(infos) != len(members):
            raise BatchError(f"{name}: sealed arrays: central directory read two ways differs")
        for info in infos:
            label = f"{name}: sealed array {info.filename[:80]!r}"
            with z.open(info) as fp:
                version = fmt.read_magic(fp)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(fp)
                else:
                    raise BatchError(f"{label}: .npy format {version} (1.0 and 2.0 only)")
                offset = fp.tell()
            if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None \
                    or dtype.itemsize == 0:
                raise BatchError(f"{label}: dtype {str(dtype)[:40]} is not a plain numeric or string type")
            if len(shape) > MAX_NDIM or any(d < 0 or d > MAX_DIM for d in shape):
                raise BatchError(f"{label}: shape {str(shape)[:80]} out of range")
            if math.prod(shape) * dtype.itemsize != info.file_size - offset:
                raise BatchError(f"{label}: shape {str(shape)[:80]} x {dtype.itemsize} bytes is not the "
                                 f"{info.file_size - offset} bytes the archive holds")
            with z.open(info) as fp:
                arrays[info.filename.removesuffix(".npy")] = fmt.read_array(fp, allow_pickle=False)
    return arrays


def write_npz(fh: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` layout (stored, one ``<name>.npy`` each) for any array name, never pickling."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as z:
        for key, arr in arrays.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def open_batch(data: bytes, private_key: bytes, *, name: str = "batch") -> OpenedBatch:
    """Verify and decrypt a batch; every mismatch is a BatchError naming what is wrong."""
    header, offset = read_header(data, name=name)
    payload = data[offset:]
    if len(payload) != header.get("payloadBytes"):
        raise BatchError(f"{name}: payload is {len(payload)} bytes, header says {header.get('payloadBytes')} "
                         "(truncated or padded)")
    if hashlib.sha256(payload).hexdigest() != header.get("payloadSha256"):
        raise BatchError(f"{name}: payload does not match its header hash (tampered)")
    key = PrivateKey(private_key)
    want = recipient_key_id(bytes(key.public_key))
    if header.get("keyId") != want:
        raise BatchError(f"{name}: sealed to key {header.get('keyId')}, this private key is {want}")
    try:
        inner = SealedBox(key).decrypt(payload)
    except CryptoError:
        raise BatchError(f"{name}: decryption failed (tampered payload or wrong key)") from None
    end = inner.find(b"\n")
    if end < 0:
        raise BatchError(f"{name}: sealed metadata has no end")
    try:
        meta = json.loads(inner[:end])
    except (ValueError, RecursionError):
        raise BatchError(f"{name}: sealed metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise BatchError(f"{name}: sealed metadata is not a JSON object")
    npz = inner[end + 1:]
    del inner
    for k in BOUND_FIELDS:
        if meta.get(k) != header.get(k):
            raise BatchError(f"{name}: header field {k!r} is {_short(header.get(k))} but the sealed metadata says "
                             f"{_short(meta.get(k))} (tampered header)")
    _check_meta(meta, name)
    try:
        arrays = _read_arrays(npz, name)
    except BatchError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchError(f"{name}: sealed arrays unreadable: {' '.join(str(exc).split())[:200]}") from None
    return OpenedBatch(meta, arrays)


def generate_keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair for a capture campaign — made by the data owner, never on a device."""
    sk = PrivateKey.generate()
    return bytes(sk), bytes(sk.public_key)
