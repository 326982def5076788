"""The publisher's signing keys on disk: one PKCS#8 PEM file per key, ``<KEYDIR>/<role>-<keyid>.pem`` (0600).

Root keys live in a sibling directory (``<KEYDIR>-root``) meant to be moved offline; a rotated-away key is moved
to ``retired/``, never deleted, so an audit can still tell which key signed an old version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer

from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_bytes


def default_root_keys_dir(keys_dir: Path) -> Path:
    return keys_dir.parent / f"{keys_dir.name}-root"


def generate_key(keys_dir: Path, role: str) -> CryptoSigner:
    """A new ed25519 key for ``role``, written to ``keys_dir/<role>-<keyid>.pem`` (0600)."""
    signer = CryptoSigner.generate_ed25519()
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    atomic_write_bytes(keys_dir / f"{role}-{signer.public_key.keyid}.pem", signer.private_bytes, mode=0o600)
    return signer


def find_signer(key_dirs: Sequence[Path], keyid: str) -> Signer | None:
    """The signer for ``keyid`` from the first key file that holds it, or None."""
    for d in key_dirs:
        for path in sorted(Path(d).glob(f"*-{keyid}.pem")):
            try:
                priv = load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot load key file {path}: {exc}") from exc
            signer = CryptoSigner(priv)  # type: ignore[arg-type]
            if signer.public_key.keyid != keyid:
                raise UserError(f"key file {path} does not hold key {keyid[:12]}…")
            return signer
    return None


def retire_key_file(key_dirs: Sequence[Path], keyid: str) -> None:
    """Move the key files of ``keyid`` to ``retired/`` next to them (kept for audits, no longer used)."""
    for d in key_dirs:
        for path in Path(d).glob(f"*-{keyid}.pem"):
            retired = path.parent / "retired"
            retired.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, retired / path.name)
