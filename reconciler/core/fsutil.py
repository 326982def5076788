"""Crash-safe file writes: write to a temp file in the same directory, fsync, rename, fsync the directory.

A reader (or a process restarting after ``kill -9`` or power loss) sees the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably (``durable=False``: atomic only, no fsync — for a
    file rewritten from other state anyway)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (and durably unless ``durable=False``)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode, durable=durable)


def check_plain_target(dir_fd: int, name: str) -> None:
    """Raise unless ``name`` is a plain file name that is absent from the directory ``dir_fd`` or a regular
    file there (a symlink or anything else is refused, never followed)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise OSError(errno.EINVAL, "not a plain file name", name)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "exists as a symbolic link (not followed, not replaced)", name)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a regular file", name)


def atomic_write_in(dir_fd: int, name: str, write: Callable[[BinaryIO], None], mode: int = 0o600) -> None:
    """Create or replace the regular file ``name`` in the directory open as ``dir_fd``, atomically and durably:
    ``write`` fills a new temp file (O_EXCL, O_NOFOLLOW) that is renamed over ``name``. Only a plain name
    directly in that directory is written (see :func:`check_plain_target`), so a name from hostile input cannot
    reach outside it."""
    check_plain_target(dir_fd, name)
    tmp = f".{name[:100]}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        check_plain_target(dir_fd, name)
        # rename replaces a directory entry and never follows a symlink there, even one planted since the check
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)
