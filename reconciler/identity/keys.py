"""A device's own status signing key on disk: made once at provisioning, read at start.

The private key is an OpenSSH-format Ed25519 key (so ``ssh-keygen -y -f`` prints its public half and git can
sign with it too), written 0600 with temp + fsync + rename, and refused when group- or world-readable like
every other secret (:func:`reconciler.core.credentials.check_private_file`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)

from reconciler.core.credentials import CredentialError, check_private_file
from reconciler.core.fsutil import atomic_write_bytes

MAX_KEY_BYTES = 16 * 1024


class KeyError_(CredentialError):
    """The device key is missing, unreadable or not an Ed25519 key."""


def public_line(key: Ed25519PrivateKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA… comment``: what goes into the Device manifest's ``spec.statusKeys``."""
    text = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{text} {comment}".strip()


def generate(path: Path, *, overwrite: bool = False) -> Ed25519PrivateKey:
    """Create a new key at ``path`` (0600); refuses to replace an existing one unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise KeyError_(f"{path} exists already (keep it, or pass --rotate to make a new key)")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()), mode=0o600)
    return key


def load(path: Path) -> Ed25519PrivateKey:
    """The device key at ``path`` after the private-file check."""
    check_private_file(path)
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise KeyError_(f"cannot read the status signing key {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise KeyError_(f"status signing key {path} is larger than {MAX_KEY_BYTES} bytes")
    try:
        key = load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"status signing key {path} is not an unencrypted OpenSSH private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"status signing key {path} is not an Ed25519 key (make one with `modelfleet agent keygen`)")
    return key
