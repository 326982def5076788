"""One stream's ring of rows in shared memory: the request path writes, the sealer process reads.

An anonymous shared file (``memfd``: gone when both processes close it, kill -9 included) holds a control word
pair — rows written (the agent's) and rows taken (the sealer's) — and ``capacity`` rows of the stream's
:class:`~reconciler.capture.sealer.rows.RowLayout`.

:meth:`RowRing.put` only appends the record (its time, trigger code, the request's arrays and where it came
from) to the ring's pending list: a record sampled once in ten requests finds this code and its objects out of
the caches, and every Python step it takes costs the serving thread a cache miss or more (measured over HTTP:
copying each record into its row on the request path cost the serving thread ~10 µs per record, where the same
copy costs 1 µs in a loop). Once :attr:`RowRing.batch` records wait (fewer for large records: at most
:data:`PENDING_BYTES` of them are held), the put that reached the count :meth:`commits <RowRing.commit>` them:
each tensor of all of them checked against the layout and copied into consecutive rows in one numpy call, then
the written count bumped once. The agent's writer commits what waits at each of its passes (every second at
most), and so do ``close``, ``flush`` and ``wake``. A record that does not match the layout (another shape,
dtype or name) is handed to ``on_refused`` (the capture service puts it in the stream of its own layout, or in
the agent's queue); records that find the ring full are dropped and counted through ``on_dropped``: the request
path never waits for the sealer. Producers in the agent (request threads, the serving workers' uplink) append
without a lock (``list.append`` is atomic) and commit under the ring's lock; the sealer is the only consumer and
takes every row written since it last looked as one numpy array.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import numpy as np

from reconciler.capture.sealer.rows import RowLayout

CTRL_BYTES = 64  # [0] rows written (agent), [1] rows taken (sealer), as uint64
#: Bytes of rows a stream's ring holds (at most :data:`MAX_ROWS` rows, at least :data:`MIN_ROWS`).
RING_BYTES = 8 * 1024 * 1024
MAX_ROWS, MIN_ROWS = 16384, 32
#: Records a ring holds on the agent's side before they are copied into rows together, and their bytes at most.
PENDING_RECORDS, PENDING_BYTES = 64, 64 * 1024
PUT, OTHER = 1, -1  # put(): taken; the ring is closed (the caller takes the agent's queue)

# A pending record: (time, trigger code, inputs, outputs, origin: whatever the caller needs to place it again)
Pending = tuple[float, int, Mapping[str, np.ndarray], Mapping[str, np.ndarray], Any]
_TIME, _CODE, _INPUTS, _OUTPUTS = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(3)


def capacity_for(layout: RowLayout) -> int:
    return max(MIN_ROWS, min(MAX_ROWS, RING_BYTES // layout.itemsize))


class RowRing:
    """A stream's shared rows: the agent's end (``put``) and the sealer's (``take``)."""

    def __init__(self, mm: mmap.mmap, layout: RowLayout, capacity: int, wake_fd: int | None = None) -> None:
        self.mm, self.layout, self.capacity = mm, layout, capacity
        self.size = layout.itemsize
        self.ctrl = memoryview(mm)[:CTRL_BYTES].cast("Q")
        self.rows = np.ndarray((capacity,), layout.dtype(), buffer=mm, offset=CTRL_BYTES)
        n_in = len(layout.inputs)
        # (row field, where a pending record holds its side: 2 inputs or 3 outputs, tensor name, dtype, shape)
        self._fields = tuple((field, 2 if k < n_in else 3, field[2:], dt, shape)
                             for k, (field, dt, shape, _at, _n) in enumerate(layout.fields))
        self._n_in, self._n_out = n_in, len(layout.fields) - n_in
        self.lock = threading.Lock()
        self.closed = False
        self.pending: list[Pending] = []  # the agent's end: records put and not committed yet
        self.batch = max(1, min(PENDING_RECORDS, PENDING_BYTES // layout.itemsize))
        self.on_dropped: Callable[[int], None] | None = None  # records the full ring had no row for
        self.on_refused: Callable[[RowRing, list[Pending]], None] | None = None  # records of another layout
        self._wake_fd = wake_fd  # the agent's end: a byte here wakes the sealer
        self._wake_every = 1 << max(0, (capacity // 4).bit_length() - 1)  # rows: ~ a quarter of the ring

    @staticmethod
    def nbytes(layout: RowLayout, capacity: int) -> int:
        return CTRL_BYTES + capacity * layout.itemsize

    @classmethod
    def create(cls, layout: RowLayout, wake_fd: int | None = None) -> tuple[RowRing, int]:
        """A new ring and its file descriptor (to pass to the sealer; the caller closes it); ``wake_fd``: written
        to (non-blocking) each time a quarter of the ring's rows more were written."""
        capacity = capacity_for(layout)
        fd = os.memfd_create("modelfleet-capture", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, cls.nbytes(layout, capacity))
            mm = mmap.mmap(fd, cls.nbytes(layout, capacity))
        except OSError:
            os.close(fd)
            raise
        return cls(mm, layout, capacity, wake_fd), fd

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

    def put(self, t: float, code: int, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
            origin: Any = None) -> int:
        """Take one record (copied into a row at the next commit): :data:`PUT`, or :data:`OTHER` once closed."""
        # (lean on purpose: this runs on the request path, between inferences that evict its code from the caches)
        if self.closed:
            return OTHER
        pending = self.pending
        pending.append((t, code, inputs, outputs, origin))
        if len(pending) >= self.batch:
            self.commit()
        return PUT

    def commit(self) -> None:
        """Copy the pending records into rows, in the order they came, and publish them to the sealer."""
        with self.lock:
            dropped, refused = self._commit()
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)
        if refused and self.on_refused is not None:
            self.on_refused(self, refused)

    def _commit(self) -> tuple[int, list[Pending]]:
        """(under the lock) the records dropped (no room) and the ones of another layout."""
        pending = self.pending
        n = len(pending)
        if not n:
            return 0, []
        records = pending[:n]
        del pending[:n]  # (a put meanwhile appends after them: each of the two steps is atomic)
        if self.closed:  # put after close: nobody takes these rows any more
            return n, []
        refused: list[Pending] = []
        ctrl = self.ctrl
        h = ctrl[0]
        room = self.capacity - (h - ctrl[1])
        written = self._place(records, h, room)
        if written < 0:  # some record of another layout: each one checked, the others copied
            kept: list[Pending] = []
            for r in records:
                (kept if self.matches(r[2], r[3]) else refused).append(r)
            records = kept
            written = self._place(records, h, room)
            if written < 0:  # (cannot be: every one matches) none is written twice, none is lost
                refused += records
                records, written = [], 0
        ctrl[0] = h + written  # published last: the sealer reads no row before its count says it is whole
        if (h + written) // self._wake_every != h // self._wake_every and self._wake_fd is not None:
            try:
                os.write(self._wake_fd, b"w")
            except OSError:  # (full: the sealer has wake-ups waiting already; EPIPE: it is gone)
                pass
        return len(records) - written, refused

    def _place(self, records: list[Pending], h: int, room: int) -> int:
        """Copy as many of ``records`` as there is ``room`` for into the rows from count ``h`` on (wrapping at
        the ring's end); how many, or -1 when one does not match the layout."""
        taken = records[:room]
        at = h % self.capacity
        first = min(len(taken), self.capacity - at)
        if not (self._copy(taken[:first], at) and self._copy(taken[first:], 0)):
            return -1
        return len(taken)

    def _copy(self, records: list[Pending], at: int) -> bool:
        """Each tensor of ``records`` stacked and copied into rows ``at``… in one step; False (rows not
        published, so as good as untouched) when any record does not match the layout."""
        if not records:
            return True
        if {*map(len, map(_INPUTS, records))} != {self._n_in} or {*map(len, map(_OUTPUTS, records))} != {self._n_out}:
            return False  # (a tensor more than the layout's: it would not be kept)
        rows = self.rows[at:at + len(records)]
        want = len(records)
        for field, side, name, dt, shape in self._fields:
            try:
                stacked = np.array(list(map(itemgetter(name), map(_INPUTS if side == 2 else _OUTPUTS, records))))
            except (KeyError, ValueError, TypeError):  # a name missing; shapes that do not stack
                return False
            if stacked.dtype != dt or stacked.shape != (want, *shape):
                return False
            rows[field] = stacked
        rows["t"] = list(map(_TIME, records))
        rows["trig"] = list(map(_CODE, records))
        return True

    def matches(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bool:
        """Whether a record has this ring's layout: each tensor's name, dtype and shape."""
        if len(inputs) != self._n_in or len(outputs) != self._n_out:
            return False
        for _field, side, name, dt, shape in self._fields:
            a = (inputs if side == 2 else outputs).get(name)
            if not isinstance(a, np.ndarray) or a.dtype != dt or a.shape != shape:
                return False
        return True

    @property
    def waiting(self) -> int:
        """Records put and not taken by the sealer yet (pending and in rows)."""
        return len(self.pending) + int(self.ctrl[0] - self.ctrl[1])

    def close(self) -> int:
        """No more records (what is pending is committed first: no put is half done after this); the records
        not taken yet."""
        with self.lock:
            dropped, refused = self._commit()
            self.closed = True
            self._wake_fd = None
            left = int(self.ctrl[0] - self.ctrl[1])
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)
        if refused and self.on_refused is not None:
            self.on_refused(self, refused)
        return left

    # -- the sealer's end -------------------------------------------------------------------------------------

    def take(self, limit: int | None = None) -> np.ndarray | None:
        """A copy of the rows written since the last take (up to the ring's wrap and ``limit``), or None."""
        h, t = int(self.ctrl[0]), int(self.ctrl[1])
        if h <= t:
            return None
        if h - t > self.capacity:  # a count the agent never writes: the ring is not trusted further
            raise ValueError("capture ring: more rows written than it holds")
        i = t % self.capacity
        n = min(h - t, self.capacity - i, limit or self.capacity)
        rows = self.rows[i:i + n].copy()
        self.ctrl[1] = t + n
        return rows

    def release(self) -> None:
        self.rows = None  # type: ignore[assignment]
        self.ctrl.release()
        self.mm.close()
