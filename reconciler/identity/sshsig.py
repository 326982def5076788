"""SSH signatures (OpenSSH's ``PROTOCOL.sshsig``) for Ed25519 keys, made and checked in-process.

Git signs commits with ``ssh-keygen -Y sign -n git``; verifying a thousand status commits that way would start a
thousand processes. The format is small: an armored blob holding the public key, a namespace, the hash
algorithm and an Ed25519 signature over ``"SSHSIG" || namespace || reserved || hash || H(message)``.
Pure functions of their inputs; anything malformed raises :class:`SignatureError`.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"SSHSIG"
VERSION = 1
KEY_TYPE = "ssh-ed25519"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
MAX_ARMORED_BYTES = 4096  # an Ed25519 signature armors to ~300 bytes


class SignatureError(ValueError):
    """A signature or key that cannot be parsed, or does not verify."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SignatureError("truncated SSH signature")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SignatureError("trailing bytes in SSH signature")


def public_key_blob(key: Ed25519PublicKey) -> bytes:
    """The SSH wire form of an Ed25519 public key (what ``authorized_keys`` base64-encodes)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return _string(KEY_TYPE.encode()) + _string(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def parse_public_key(line: str) -> bytes:
    """The key blob of an ``ssh-ed25519 AAAA… [comment]`` line; :class:`SignatureError` otherwise."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise SignatureError("not an SSH public key line (expected 'ssh-ed25519 AAAA…')")
    if parts[0] != KEY_TYPE:
        raise SignatureError(f"key type {parts[0][:40]!r} is not supported (status keys are {KEY_TYPE})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise SignatureError("the public key is not valid base64") from None
    r = _Reader(blob)
    if r.string() != KEY_TYPE.encode() or len(r.string()) != 32:
        raise SignatureError("malformed ssh-ed25519 public key")
    r.done()
    return blob


def fingerprint(blob: bytes) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _signed_data(namespace: str, message: bytes) -> bytes:
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
            + _string(hashlib.sha512(message).digest()))


def sign(message: bytes, key: Ed25519PrivateKey, namespace: str = "git") -> str:
    """An armored SSH signature of ``message`` (``ssh-keygen -Y sign -n <namespace>``'s output)."""
    sig = key.sign(_signed_data(namespace, message))
    body = (MAGIC + struct.pack(">I", VERSION) + _string(public_key_blob(key.public_key()))
            + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
            + _string(_string(KEY_TYPE.encode()) + _string(sig)))
    b64 = base64.b64encode(body).decode()
    return "\n".join([BEGIN, *(b64[i:i + 70] for i in range(0, len(b64), 70)), END]) + "\n"


def signer_blob(armored: str | bytes, namespace: str = "git") -> tuple[bytes, bytes, bytes]:
    """(public key blob, hash algorithm, raw signature) of an armored SSH signature, checked for shape only."""
    text = armored.decode("ascii", "replace") if isinstance(armored, bytes) else armored
    if len(text) > MAX_ARMORED_BYTES:
        raise SignatureError("SSH signature too large")
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise SignatureError("not an armored SSH signature")
    try:
        body = base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError:
        raise SignatureError("SSH signature is not valid base64") from None
    r = _Reader(body)
    if r.take(6) != MAGIC or r.uint32() != VERSION:
        raise SignatureError("not an SSHSIG v1 signature")
    key, ns, _reserved, hash_alg, sig = r.string(), r.string(), r.string(), r.string(), r.string()
    r.done()
    if ns != namespace.encode():
        raise SignatureError(f"signature namespace is {ns[:40]!r}, not {namespace!r}")
    if hash_alg not in (b"sha512", b"sha256"):
        raise SignatureError(f"unsupported hash algorithm {hash_alg[:20]!r}")
    s = _Reader(sig)
    if s.string() != KEY_TYPE.encode():
        raise SignatureError("only ssh-ed25519 signatures are supported")
    raw = s.string()
    s.done()
    if len(raw) != 64:
        raise SignatureError("malformed Ed25519 signature")
    return key, hash_alg, raw


def verify(message: bytes, armored: str | bytes, allowed: bytes, namespace: str = "git",
           parsed: tuple[bytes, bytes, bytes] | None = None) -> None:
    """Check that ``armored`` is a signature of ``message`` by the key ``allowed`` (a public key blob);
    ``parsed``: :func:`signer_blob`'s answer for it, when the caller has it already.

    Raises :class:`SignatureError` when it is malformed, made by another key, or does not verify."""
    key, hash_alg, raw = parsed or signer_blob(armored, namespace)
    if key != allowed:
        raise SignatureError(f"signed by another key ({fingerprint(key)})")
    r = _Reader(key)
    r.string()
    pub = Ed25519PublicKey.from_public_bytes(r.string())
    digest = (hashlib.sha512 if hash_alg == b"sha512" else hashlib.sha256)(message).digest()
    data = MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_alg) + _string(digest)
    try:
        pub.verify(raw, data)
    except InvalidSignature:
        raise SignatureError("the signature does not match the commit (bad signature)") from None
