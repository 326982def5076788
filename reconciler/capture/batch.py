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
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from reconciler.capture.policy import recipient_key_id

MAGIC = b"MFCAP1\n"
SUFFIX = ".mfcap"
MAX_HEADER = 16 * 1024
# Fields the header and the sealed metadata must agree on.
BOUND_FIELDS = ("format", "id", "device", "endpoint", "model", "modelVersion", "campaign", "purpose", "keyId",
                "start", "end", "records", "rows")


class BatchError(ValueError):
    """A batch that is not what its header says (tampered, truncated, wrong key)."""


def new_batch_id(now: float) -> str:
    """Sortable and unique: UTC time of sealing (milliseconds) plus 64 random bits."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"cap-{stamp}{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class OpenedBatch:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


def stack_records(records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Arrays keyed by input/output name, records stacked along the first (batch) axis."""
    out: dict[str, np.ndarray] = {}
    if not records:
        return out
    names = list(records[0][0]) + [n for n in records[0][1] if n not in records[0][0]]
    for name in names:
        parts = [(r[0] if name in r[0] else r[1])[name] for r in records]
        parts = [p if p.ndim else p.reshape(1) for p in parts]
        out[name] = np.concatenate(parts, axis=0)
    return out


def seal_batch(meta: dict[str, Any], arrays: dict[str, np.ndarray], recipient: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the file bytes of a batch sealed to ``recipient`` (32-byte X25519 public key)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    meta = dict(meta, format=1, keyId=recipient_key_id(recipient))
    inner = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n" + buf.getvalue()
    payload = SealedBox(PublicKey(recipient)).encrypt(inner)
    header = {k: meta[k] for k in BOUND_FIELDS if k in meta}
    header["payloadSha256"] = hashlib.sha256(payload).hexdigest()
    header["payloadBytes"] = len(payload)
    line = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return header, MAGIC + line + b"\n" + payload


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
    except ValueError:
        raise BatchError(f"{name}: header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != 1:
        raise BatchError(f"{name}: unsupported batch format {header.get('format') if isinstance(header, dict) else '?'}")
    return header, end + 1


def read_header_file(path: Any) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + MAX_HEADER)
    return read_header(head, name=str(path))[0]


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
    line, _, npz = inner.partition(b"\n")
    try:
        meta = json.loads(line)
    except ValueError:
        raise BatchError(f"{name}: sealed metadata is not JSON") from None
    for k in BOUND_FIELDS:
        if meta.get(k) != header.get(k):
            raise BatchError(f"{name}: header field {k!r} is {header.get(k)!r} but the sealed metadata says "
                             f"{meta.get(k)!r} (tampered header)")
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise BatchError(f"{name}: sealed arrays unreadable: {exc}") from None
    return OpenedBatch(meta, arrays)


def generate_keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair for a capture campaign — made by the data owner, never on a device."""
    sk = PrivateKey.generate()
    return bytes(sk), bytes(sk.public_key)
