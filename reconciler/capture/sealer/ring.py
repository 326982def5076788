"""One stream's ring of rows in shared memory: the request path writes, the sealer process reads.

An anonymous shared file (``memfd``: gone when both processes close it, kill -9 included) holds a control word
pair — rows written (the agent's) and rows taken (the sealer's) — and ``capacity`` rows of the stream's
:class:`~reconciler.capture.sealer.rows.RowLayout`. :meth:`RowRing.put` checks the record against the layout
(each tensor's dtype and shape), copies its bytes into the next row and bumps the written count: no header to
build, no slot to claim, no object shared with another thread. The sealer takes every row written since it last
looked as one numpy array. Producers in the agent (request threads, the serving workers' uplink) serialise on
the ring's lock (with the C writer below: on the GIL, a put being one call that runs no Python code); the
sealer is the only consumer. A full ring drops the record (counted by the caller): the
request path never waits for the sealer.

The agent's end has two implementations of ``put`` and ``close``: this module's Python, and the same steps in C
(``_ringput.c``: a record costs well under 1 µs there against 3–7 µs of Python between requests), used when it
was built at install time (a C compiler was there) and imports. ``MODELFLEET_CAPTURE_NATIVE=0`` keeps the
Python path; :data:`NATIVE` says which one a new ring gets.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from reconciler.capture.sealer.rows import RowLayout

try:
    from reconciler.capture.sealer import _ringput  # type: ignore[attr-defined]
except ImportError:  # (no compiler at install time, or another interpreter's build: the Python path)
    _ringput = None

CTRL_BYTES = 64  # [0] rows written (agent), [1] rows taken (sealer), as uint64
#: Bytes of rows a stream's ring holds (at most :data:`MAX_ROWS` rows, at least :data:`MIN_ROWS`).
RING_BYTES = 8 * 1024 * 1024
MAX_ROWS, MIN_ROWS = 16384, 32
PUT, FULL, OTHER = 1, 0, -1  # put(): written; dropped (ring full); not this layout (or the ring is closed)
_pack_head = struct.Struct("<dB").pack_into
#: Whether new rings copy records with the C writer (built, importable, not turned off).
NATIVE = _ringput is not None and os.environ.get("MODELFLEET_CAPTURE_NATIVE", "1") != "0"


def capacity_for(layout: RowLayout) -> int:
    return max(MIN_ROWS, min(MAX_ROWS, RING_BYTES // layout.itemsize))


class RowRing:
    """A stream's shared rows: the agent's end (``put``) and the sealer's (``take``)."""

    def __init__(self, mm: mmap.mmap, layout: RowLayout, capacity: int, wake_fd: int | None = None) -> None:
        self.mm, self.layout, self.capacity = mm, layout, capacity
        self.size = layout.itemsize
        self.ctrl = memoryview(mm)[:CTRL_BYTES].cast("Q")
        self.rows = np.ndarray((capacity,), layout.dtype(), buffer=mm, offset=CTRL_BYTES)
        fields = layout.fields
        n_in = len(layout.inputs)
        self._ins = tuple((name[2:], dt, shape, at, at + n) for name, dt, shape, at, n in fields[:n_in])
        self._outs = tuple((name[2:], dt, shape, at, at + n) for name, dt, shape, at, n in fields[n_in:])
        self._base = CTRL_BYTES
        self._n_in, self._n_out = n_in, len(fields) - n_in
        self.lock = threading.Lock()
        self.closed = False
        self._wake_fd = wake_fd  # the agent's end: a byte here wakes the sealer
        self._wake_mask = (1 << max(0, (capacity // 4).bit_length() - 1)) - 1  # wake every 2^k rows, k: ~ a quarter
        self._writer = None  # the C writer, when put is its (see _go_native)

    @staticmethod
    def nbytes(layout: RowLayout, capacity: int) -> int:
        return CTRL_BYTES + capacity * layout.itemsize

    @classmethod
    def create(cls, layout: RowLayout, wake_fd: int | None = None,
               native: bool | None = None) -> tuple[RowRing, int]:
        """A new ring and its file descriptor (to pass to the sealer; the caller closes it); ``wake_fd``: written
        to (non-blocking) each time a quarter of the ring's rows more were written; ``native``: put with the C
        writer (default :data:`NATIVE`)."""
        capacity = capacity_for(layout)
        fd = os.memfd_create("modelfleet-capture", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, cls.nbytes(layout, capacity))
            mm = mmap.mmap(fd, cls.nbytes(layout, capacity))
        except OSError:
            os.close(fd)
            raise
        ring = cls(mm, layout, capacity, wake_fd)
        if NATIVE if native is None else native:
            ring._go_native()
        return ring, fd

    def _go_native(self) -> None:
        """put and close become the C writer's, on the same memory (the Python ones are not used after)."""
        if _ringput is None:
            raise RuntimeError("capture ring: the C writer (_ringput) is not built")
        def spans(fields: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]) -> list[tuple[Any, ...]]:
            return [(name, dt, shape, lo, hi - lo) for name, dt, shape, lo, hi in fields]  # (offset, bytes)

        writer = _ringput.Writer(self.mm, CTRL_BYTES, self.capacity, self.size, np.ndarray, spans(self._ins),
                                 spans(self._outs), -1 if self._wake_fd is None else self._wake_fd, self._wake_mask)
        self._writer = writer
        self.put = writer.put  # type: ignore[method-assign]

    @classmethod
    def attach(cls, fd: int, layout: RowLayout, capacity: int) -> RowRing:
        """The sealer's end of a ring the agent created (the descriptor is closed: the mapping stays)."""
        try:
            if os.fstat(fd).st_size < cls.nbytes(layout, capacity):
                raise ValueError("capture ring: the shared file is smaller than its geometry")
            mm = mmap.mmap(fd, cls.nbytes(layout, capacity))
        finally:
            os.close(fd)
        return cls(mm, layout, capacity)

    # -- the agent's end --------------------------------------------------------------------------------------

    def put(self, t: float, code: int, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
        """Copy one record into the next row: :data:`PUT`, :data:`FULL` or :data:`OTHER`."""
        # (lean on purpose: this runs on the request path, between inferences that evict its code from the caches)
        if len(inputs) != self._n_in or len(outputs) != self._n_out:
            return OTHER
        with self.lock:
            ctrl = self.ctrl
            h = ctrl[0]
            if h - ctrl[1] >= self.capacity or self.closed:
                return OTHER if self.closed else FULL
            o = self._base + (h % self.capacity) * self.size
            mm = self.mm
            try:
                for name, dt, shape, lo, hi in self._ins:
                    a = inputs[name]
                    if a.shape != shape or (a.dtype is not dt and a.dtype != dt):
                        return OTHER
                    mm[o + lo:o + hi] = a  # type: ignore[index]  # (BufferError: not contiguous)
                for name, dt, shape, lo, hi in self._outs:
                    a = outputs[name]
                    if a.shape != shape or (a.dtype is not dt and a.dtype != dt):
                        return OTHER
                    mm[o + lo:o + hi] = a  # type: ignore[index]
            except (KeyError, BufferError, TypeError, ValueError):
                return OTHER
            _pack_head(mm, o, t, code)
            ctrl[0] = h + 1  # published last: the sealer reads no row before its count says it is whole
            if not (h + 1) & self._wake_mask and self._wake_fd is not None:  # (under the lock: close() ends it)
                try:
                    os.write(self._wake_fd, b"w")
                except OSError:  # (full: the sealer has wake-ups waiting already; EPIPE: it is gone)
                    pass
        return PUT

    def close(self) -> int:
        """No more rows (under the lock: no put is half done after this); the rows not taken yet."""
        with self.lock:
            self.closed = True
            self._wake_fd = None
            if self._writer is not None:
                return int(self._writer.close())
            return int(self.ctrl[0] - self.ctrl[1])

    # -- the sealer's end -------------------------------------------------------------------------------------

    def take(self, limit: int | None = None) -> np.ndarray | None:
        """A copy of the rows written since the last take (up to the ring's wrap and ``limit``), or None."""
        if _ringput is not None:  # (acquire and release: ordered on ARM too; the Python path relies on x86's order)
            h, t = _ringput.load_acquire(self.mm, 0), int(self.ctrl[1])
        else:
            h, t = int(self.ctrl[0]), int(self.ctrl[1])
        if h <= t:
            return None
        if h - t > self.capacity:  # a count the agent never writes: the ring is not trusted further
            raise ValueError("capture ring: more rows written than it holds")
        i = t % self.capacity
        n = min(h - t, self.capacity - i, limit or self.capacity)
        rows = self.rows[i:i + n].copy()
        if _ringput is not None:
            _ringput.store_release(self.mm, 1, t + n)  # (the copy is done before the rows are handed back)
        else:
            self.ctrl[1] = t + n
        return rows

    def release(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer.release()  # (its hold on the mapping: close() below refuses while one is held)
        self.rows = None  # type: ignore[assignment]
        self.ctrl.release()
        self.mm.close()
