"""The capture spool on the device: sealed batch files, their purge, and the audit log.

``<state>/capture/batches/<id>.mfcap`` are batches not yet acknowledged by the destination (written with temp +
fsync + rename, mode 0600); ``<state>/capture/audit.log`` is an append-only JSON-lines record of what was
captured, sealed, uploaded, exported, dropped and purged — ids and counts, never content. The audit log is
bounded (rotated once at :data:`AUDIT_MAX_BYTES`).

The spool keeps an index of the batches it holds (id → :class:`StoredBatch`), rebuilt by every full scan
(:meth:`Spool.list`) and updated by every write and delete of this process, so the quota is checked before each
write without listing the directory. Only this process adds batches; another process (``modelfleet data``) only
deletes, so the index can overstate what is on disk until the next scan, never understate it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.capture.batch import SUFFIX, BatchError, read_header_file
from reconciler.capture.policy import StoredBatch
from reconciler.core.fsutil import fsync_dir

AUDIT_MAX_BYTES = 1024 * 1024


def capture_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "capture"


class AuditLog:
    """JSON lines: ``{"time", "event", ...ids and counts}``; callers never pass content."""

    ALLOWED = {"batch", "endpoint", "modelVersion", "records", "rows", "bytes", "reason", "trigger", "count",
               "destination", "keyId", "campaign", "dropped", "error"}

    def __init__(self, path: Path, max_bytes: int = AUDIT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None  # kept open: a line is one write(2)
        self._size = 0
        self.unsynced = 0  # lines written with durable=False since the last sync()

    def write(self, event: str, now: float | None = None, *, durable: bool = True, **fields: Any) -> None:
        """Append one line. ``durable=False`` leaves the fsync to the next :meth:`sync` (the capture service's
        writer calls it at least every second): the line is in the file at once (a process killed at any
        point loses nothing), only a power loss can lose the last second of such lines."""
        unknown = set(fields) - self.ALLOWED
        if unknown:  # the audit log must never become a side channel for content
            raise ValueError(f"audit fields not allowed: {sorted(unknown)}")
        doc = {"time": round(now if now is not None else time.time(), 3), "event": event, **fields}
        line = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._open_for(len(line))
            os.write(fd, line)
            self._size += len(line)
            if durable:
                os.fsync(fd)
                self.unsynced = 0
            else:
                self.unsynced += 1

    def _open_for(self, incoming: int) -> int:
        """The log's descriptor, rotated first when ``incoming`` more bytes would pass ``max_bytes``."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
        if self._size and self._size + incoming > self.max_bytes:
            if self.unsynced:
                os.fsync(self._fd)
                self.unsynced = 0
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._close()
            return self._open_for(incoming)
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sync(self) -> None:
        """fsync the lines written with ``durable=False``; and follow a rotation another process made (its
        ``modelfleet data`` command writes to the same log)."""
        with self._lock:
            if self._fd is None:
                return
            if self.unsynced:
                os.fsync(self._fd)
                self.unsynced = 0
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
            except FileNotFoundError:
                moved = True
            if moved:
                self._close()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self.unsynced:
                os.fsync(self._fd)
                self.unsynced = 0
            self._close()

    def read(self) -> list[dict[str, Any]]:
        out = []
        for p in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                text = p.read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line after power loss
        return out


class Spool:
    """The batch directory. Thread-safe enough for one agent plus a ``modelfleet data`` command: every change
    is a rename or an unlink, and a batch that vanished meanwhile is simply skipped."""

    def __init__(self, state_dir: Path) -> None:
        self.root = capture_dir(state_dir)
        self.batches_dir = self.root / "batches"
        self.audit = AuditLog(self.root / "audit.log")
        self._headers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._index: dict[str, StoredBatch] | None = None  # None until the first scan
        self._scans = 0  # full scans under way
        self._during_scan: dict[str, StoredBatch] = {}  # written while a scan ran: kept even if it missed them

    def ensure(self) -> None:
        self.batches_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_of(self, batch_id: str) -> Path:
        return self.batches_dir / f"{batch_id}{SUFFIX}"

    def write(self, header: dict[str, Any], data: bytes) -> Path:
        """Write a sealed batch: a new temp file (0600), fsync, rename, fsync of the directory."""
        path = self.path_of(header["id"])
        tmp = path.with_name(f".{path.name}.tmp")  # a unique name: the id is; clean_temp() removes leftovers
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            self.ensure()
            fd = os.open(tmp, flags, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.batches_dir)
        b = StoredBatch(id=header["id"], created=float(header.get("start", 0.0)), size=len(data),
                        endpoint=str(header.get("endpoint", "")), key_id=str(header.get("keyId", "")))
        with self._lock:
            if self._scans:
                self._during_scan[b.id] = b
            if self._index is not None:
                self._index[b.id] = b
        return path

    def header(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        hit = self._headers.get(path.name)
        if hit is not None and hit[0] == st.st_mtime:
            return hit[1]
        try:
            h = read_header_file(path)
        except (BatchError, OSError):
            return None
        h = dict(h, size=st.st_size)
        self._headers[path.name] = (st.st_mtime, h)
        return h

    def list(self) -> list[tuple[Path, dict[str, Any]]]:
        """Complete batches, oldest first (temp files of an interrupted write are not batches); a full scan of
        the directory, which also rebuilds the index."""
        with self._lock:
            self._scans += 1
        index: dict[str, StoredBatch] | None = None
        out: list[tuple[Path, dict[str, Any]]] = []
        try:
            try:
                names = sorted(p for p in self.batches_dir.iterdir()
                               if p.name.endswith(SUFFIX) and not p.name.startswith("."))
            except FileNotFoundError:
                names = []
            for p in names:
                h = self.header(p)
                if h is not None:
                    out.append((p, h))
            live = {p.name for p, _ in out}
            self._headers = {k: v for k, v in self._headers.items() if k in live}
            out.sort(key=lambda x: (x[1].get("start", 0), x[1]["id"]))
            index = {h["id"]: stored_batch(h) for _, h in out}
        finally:
            with self._lock:
                if index is not None:
                    for bid, b in self._during_scan.items():  # written while the scan ran: maybe not seen
                        index.setdefault(bid, b)
                    self._index = index
                self._scans -= 1
                if not self._scans:
                    self._during_scan.clear()
        return out

    def batches(self, endpoint: str | None = None) -> list[StoredBatch]:
        """The batches this process knows of (of ``endpoint``), oldest first, from the index (no directory scan
        after the first)."""
        with self._lock:
            index = self._index
        if index is None:
            self.list()
        with self._lock:
            out = [b for b in (self._index or {}).values() if endpoint is None or b.endpoint == endpoint]
        out.sort(key=lambda b: (b.created, b.id))
        return out

    def holds(self, endpoints: Iterable[str]) -> bool:
        """Whether any batch of these endpoints waits (from the index, no directory scan after the first)."""
        wanted = set(endpoints)
        if self._index is None:
            self.list()
        with self._lock:
            return any(b.endpoint in wanted for b in (self._index or {}).values())

    def stored(self) -> list[StoredBatch]:
        return [stored_batch(h) for _, h in self.list()]

    def clean_temp(self) -> int:
        """Remove temp files left by a crash during a write (they were never batches)."""
        n = 0
        try:
            for p in self.batches_dir.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        except FileNotFoundError:
            pass
        return n

    def delete(self, batches: Iterable[StoredBatch], event: str, reason: str, now: float | None = None, *,
               durable: bool = True) -> list[str]:
        """Unlink the batches and audit each. ``durable=False`` skips the directory fsync and leaves the audit
        lines to the next sync: for deletes a reappearing file does not harm (an acknowledged upload is sent
        and verified again; a quota eviction is followed by the write whose directory fsync covers it).
        Erasure requests and sweeps are durable."""
        removed = []
        for b in batches:
            path = self.path_of(b.id)
            try:
                path.unlink()
            except FileNotFoundError:
                self.forget(b.id)
                continue
            self.forget(b.id)
            removed.append(b.id)
            self.audit.write(event, now, durable=durable, batch=b.id, endpoint=b.endpoint, bytes=b.size, reason=reason)
        if removed and durable:
            fsync_dir(self.batches_dir)
        return removed

    def forget(self, batch_id: str) -> None:
        """Drop a batch that is gone from the index."""
        with self._lock:
            if self._index is not None:
                self._index.pop(batch_id, None)
            self._during_scan.pop(batch_id, None)

    def total_bytes(self) -> int:
        return sum(h["size"] for _, h in self.list())


def stored_batch(h: dict[str, Any]) -> StoredBatch:
    return StoredBatch(id=h["id"], created=float(h.get("start", 0.0)), size=int(h.get("size", 0)),
                       endpoint=str(h.get("endpoint", "")), key_id=str(h.get("keyId", "")))
