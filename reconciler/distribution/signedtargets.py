"""A local TUF repository's targets read as a device reads them: for ``validate --tuf-repo`` before a push.

:class:`SignedTargets` resolves a path as the device's TUF client does (top-level ``targets``, then the first
delegated role whose patterns match), verifies the targets roles' signatures, and checks a file's signed length
and hashes, raising the error a device would report for it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import DelegatedRole, Metadata, TargetFile

from reconciler.core.errors import UserError
from reconciler.distribution import tuferrors
from reconciler.distribution.tufrepo import _delegated_roles, _Repo, target_url_path


class SignedTargets:
    """The target files of a local repository checked as a device checks a download (``validate --tuf-repo``).

    A path resolves as the device's TUF client resolves it: signed by top-level ``targets``, else by the first
    delegated role whose patterns match it (a terminating role that does not sign it ends the search). The
    targets roles' signatures are verified against root and targets (a repository whose metadata devices
    would reject raises :class:`UserError`). :meth:`read` checks a file's signed length and hashes and raises
    the error a device reports for it (``TargetHashMismatch``, ``LengthExceeded``, ``RepositoryUnavailable``
    for a missing or short file, ``TargetNotFound`` for a path no role signs).
    """

    def __init__(self, repo_dir: Path) -> None:
        self.repo = _Repo(repo_dir)
        targets = self.repo.load("targets")
        _verify_signed(self.repo.root, "targets", targets)
        self._top = targets.signed.targets
        self._delegated: list[tuple[DelegatedRole, dict[str, TargetFile]]] = []
        for spec in _delegated_roles(targets):
            md = self.repo.load(spec.name)
            _verify_signed(targets, spec.name, md)
            self._delegated.append((spec, md.signed.targets))

    def lookup(self, path: str) -> TargetFile | None:
        if path in self._top:
            return self._top[path]
        for spec, signed in self._delegated:
            if spec.is_delegated_path(path):
                if path in signed:
                    return signed[path]
                if spec.terminating:
                    return None
        return None

    def paths(self) -> set[str]:
        """Every path a device can resolve."""
        candidates = set(self._top).union(*(signed for _, signed in self._delegated))
        return {p for p in candidates if self.lookup(p) is not None}

    def encrypted(self, path: str) -> bool:
        tf = self.lookup(path)
        return bool(tf is not None and isinstance(tf.custom, dict) and tf.custom.get("encrypted"))

    def read(self, path: str, max_bytes: int) -> bytes | None:
        """The file's bytes once they match the signed length and hashes; ``None`` (checked, not kept) when the
        signed length is over ``max_bytes``. Never reads more than the signed length plus one byte into memory."""
        tf = self.lookup(path)
        if tf is None:
            raise tuferrors.TargetNotFound(f"target {path!r} is not signed by any role for that path")
        if not tf.hashes or not all(_HEX.fullmatch(h) for h in tf.hashes.values()):
            raise tuferrors.BadMetadata(f"target {path!r}: a signed hash is not hexadecimal")
        digest = tf.hashes.get("sha256") or next(iter(tf.hashes.values()))
        where = self.repo.targets_dir / target_url_path(path, digest)
        shown = f"targets/{target_url_path(path, digest)}"
        base = self.repo.targets_dir.resolve()
        try:
            real = where.resolve()
            if not real.is_relative_to(base):
                raise tuferrors.TargetNotFound(f"target {path!r}: {shown} is outside the repository's targets/")
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise tuferrors.RepositoryUnavailable(
                f"target {path!r}: {shown} is missing (devices get HTTP 404 and keep retrying)") from None
        except OSError as exc:
            raise tuferrors.RepositoryUnavailable(f"target {path!r}: cannot read {shown}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise tuferrors.RepositoryUnavailable(f"target {path!r}: {shown} is not a regular file")
            if st.st_size > tf.length:
                raise tuferrors.LengthExceeded(
                    f"target {path!r}: {shown} has {st.st_size} bytes, more than the signed length of {tf.length}")
            if st.st_size < tf.length:
                raise tuferrors.RepositoryUnavailable(
                    f"target {path!r}: {shown} has {st.st_size} of the {tf.length} signed bytes (devices take it "
                    "for an interrupted transfer and keep retrying)")
            data: bytes | None = fh.read(tf.length + 1) if tf.length <= max_bytes else None
            try:
                tf.verify_length_and_hashes(data if data is not None else fh)
            except LengthOrHashMismatchError as exc:
                raise tuferrors.TargetHashMismatch(
                    f"target {path!r}: {shown} does not match its signed metadata (replaced or corrupt?): {exc}"
                ) from None
        return data


_HEX = re.compile(r"[0-9a-f]{32,128}")


def _verify_signed(delegator: Metadata[Any], role: str, md: Metadata[Any]) -> None:
    try:
        delegator.verify_delegate(role, md)
    except UnsignedMetadataError as exc:
        raise UserError(f"metadata of role {role!r} is not signed by its keys: {exc} (see `modelfleet repo verify`)"
                        ) from None
