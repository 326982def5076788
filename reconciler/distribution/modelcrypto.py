"""AES-256-GCM encryption of model files.

The publisher encrypts a model with ``encrypt(plaintext, key)`` before signing it into the TUF repository
(``modelfleet repo add --encrypt-key``); the device decrypts the verified blob in memory with its provisioned
key (``decrypt``) and hands the plaintext to the runtime, so plaintext never touches the device's disk.

Blob format: ``MFENC1`` magic (6 bytes) | 12-byte random nonce | ciphertext | 16-byte GCM tag. The magic is
bound as associated data. Key files hold 32 raw bytes or 64 hex characters.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"MFENC1"
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32


class DecryptionError(Exception):
    """Wrong key, altered ciphertext or not an encrypted model."""


class KeyFileError(ValueError):
    """A key file that does not hold a 256-bit key."""


def generate_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def write_key_file(path: Path, key: bytes) -> None:
    from reconciler.core.fsutil import atomic_write_text

    if len(key) != KEY_LEN:
        raise KeyFileError("an AES-256 key is 32 bytes")
    atomic_write_text(path, key.hex() + "\n", mode=0o600)


def load_key_file(path: Path) -> bytes:
    """Read a key file: 64 hex characters (whitespace ignored) or exactly 32 raw bytes."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    text = raw.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == KEY_LEN:
        return raw
    raise KeyFileError(f"key file {path} must hold a 256-bit key (64 hex characters or 32 raw bytes)")


def is_encrypted(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC


def encrypt(plaintext: bytes, key: bytes) -> bytes:
    if len(key) != KEY_LEN:
        raise KeyFileError("an AES-256 key is 32 bytes")
    nonce = os.urandom(NONCE_LEN)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, MAGIC)


def decrypt(blob: bytes, key: bytes) -> bytes:
    """Plaintext of ``blob``; raises :class:`DecryptionError` with a clear reason."""
    if len(key) != KEY_LEN:
        raise DecryptionError("decryption key is not 256 bits")
    if not is_encrypted(blob):
        raise DecryptionError("not an encrypted model (missing MFENC1 header)")
    if len(blob) < len(MAGIC) + NONCE_LEN + TAG_LEN:
        raise DecryptionError("encrypted model is truncated")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_LEN]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_LEN :], MAGIC)
    except InvalidTag:
        raise DecryptionError("authentication failed: wrong decryption key or altered ciphertext") from None
