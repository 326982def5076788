"""TUF metadata verified once per process for N simulated devices (the simulator's only TUF sharing).

Each simulated device runs the whole TUF client workflow itself: a fresh ``Updater`` from its own trusted root,
its own metadata directory, its own requests to the TUF server (root, timestamp; snapshot and targets when
they changed), the version, expiry and snapshot-hash checks, and its own verified downloads into its own
store. What N devices with the same trusted root would compute bit-identically is the parsing and signature
check of the same metadata bytes: a refresh loads five documents (the device's local timestamp, snapshot and
targets, the server's timestamp, ...) and checks a signature over each, 1,000 times per step for 1,000 devices.

:class:`VerifiedMetadata` keeps the outcome of a successful parse and signature check, keyed by the document's
bytes (sha256), its role and the delegating role's keys and threshold for it; a different key set, other bytes
or a failed check is never served from it (a failure is not kept: each device fails on its own).
:class:`SharedTufClient` is the real :class:`~reconciler.distribution.tufclient.TufClient` whose trusted set
loads documents through it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from tuf.ngclient._internal.trusted_metadata_set import _load_from_metadata

from reconciler.distribution.tufclient import TufClient

Loaded = tuple[Any, bytes, dict[str, Any]]  # (signed payload, signed bytes, signatures), as python-tuf returns


def delegation_key(delegator: Any, role_name: str) -> tuple[Any, ...] | None:
    """What verifying ``role_name`` with ``delegator`` depends on: its threshold and public keys (None when the
    delegator does not delegate ``role_name``: python-tuf reports that itself)."""
    try:
        role = delegator.get_delegated_role(role_name)
    except ValueError:
        return None
    keys = []
    for keyid in sorted(role.keyids):
        try:
            key = delegator.get_key(keyid)
        except ValueError:
            keys.append((keyid, None))
            continue
        keys.append((keyid, key.keytype, key.scheme, tuple(sorted(key.keyval.items()))))
    return (role.threshold, tuple(keys))


class VerifiedMetadata:
    """Metadata documents that passed their signature check in this process; bounded, thread safe."""

    MAX_ENTRIES = 256

    def __init__(self) -> None:
        self._loaded: dict[tuple[Any, ...], Loaded] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def load(self, role: type[Any], data: bytes, delegator: Any = None, role_name: str | None = None) -> Loaded:
        """``_load_from_metadata`` of python-tuf (parse ``data`` as ``role``, check the signatures of
        ``delegator`` over it), done once per distinct input."""
        dkey = delegation_key(delegator, role_name or role.type) if delegator is not None else None
        if dkey is None:  # nothing to verify (or nothing that verifies): python-tuf decides, every time
            return _load_from_metadata(role, data, delegator, role_name)
        key = (role.type, role_name or role.type, hashlib.sha256(data).digest(), dkey)
        with self._lock:
            hit = self._loaded.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        loaded = _load_from_metadata(role, data, delegator, role_name)  # raises when the check fails
        with self._lock:
            self.misses += 1
            if len(self._loaded) >= self.MAX_ENTRIES:
                self._loaded.clear()
            self._loaded[key] = loaded
        return loaded


class SharedTufClient(TufClient):
    """A :class:`TufClient` whose metadata loads go through a shared :class:`VerifiedMetadata`."""

    def __init__(self, *args: Any, verified: VerifiedMetadata, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.verified = verified

    def _new_updater(self) -> Any:
        updater = super()._new_updater()
        trusted = updater._trusted_set
        if getattr(trusted, "_load_data", None) is _load_from_metadata:  # the envelope this code knows
            trusted._load_data = self.verified.load
        return updater
