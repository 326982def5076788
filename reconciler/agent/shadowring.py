"""The shadow's shared-memory ring: live samples reach the candidate's process with no per-sample work in the agent
beyond one copy on the request path.

The agent creates an anonymous shared file (``memfd``: no name, gone when both processes close it, kill -9
included) and passes it to the candidate's process (:mod:`reconciler.agent.shadowproc`). It holds:

- a control page: the geometry, the child's ``done`` count (records it has freed: the agent bounds what is in
  flight by it), the snapshots' publish count and each snapshot buffer's sequence number and length;
- one state byte per slot (:data:`FREE`, :data:`WRITING`, :data:`FILLED`, :data:`USED` for a record's further
  slots, :data:`SKIP` for the ring's tail the agent jumped over);
- the snapshot area: the child's aggregates (:class:`~reconciler.shadow.stats.ShadowStats`, as JSON: data,
  never code, from the process that runs a model), read by the agent when it wants numbers — never per sample.
  Two buffers, each under a sequence lock (odd while written), the child writing the one the last publish did
  not: a child stopped mid-write (it runs at idle priority: a busy device may not run it for seconds) leaves
  the other, complete one to read;
- :data:`SLOTS` slots of :data:`SLOT_BYTES` (together :data:`~reconciler.shadow.spec.QUEUE_BYTES`). A record —
  one sample: a small header, per tensor a descriptor (dtype code, shape, name), then the input tensors and the
  live outputs, each 64-byte aligned — takes as many consecutive slots as it needs and never wraps.

:meth:`RingMirror.observe` (the request path, after the live answer is computed) draws the sample, claims the
slots under a lock held for a few comparisons, copies the tensors outside it (a memcpy of a small array's
buffer, ``numpy.copyto`` for a large or strided one: that releases the GIL), and marks the record filled. No free slot, too many records in flight (``queue``), a sample larger than half the ring or a
tensor the ring cannot carry (object dtypes): the sample is dropped and counted — it never waits. The child
takes records in ring order, validates each header (lengths inside its slots, known dtypes: a bug on this side
must not crash the child silently), runs the candidate, compares, keeps the aggregates and frees the slots. It
tells the agent over the control socket only when its verdict changes (failed, agreeing, …) — one thread in the
agent waits for that, and for the socket's end: a child that dies (a crash named by its signal) fails the
comparison. Single producer per record, single consumer: each record's state byte changes hands exactly twice.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from reconciler.shadow.gate import Verdict, device_verdict
from reconciler.shadow.spec import QUEUE_BYTES, ShadowSettings
from reconciler.shadow.stats import ShadowStats

MAGIC = 0x4D465348  # "MFSH"
CTRL_BYTES = 4096
STATES_AT = 512  # the slots' state bytes, inside the control page
SNAP_BYTES = 256 << 10
SLOT_BYTES = 64 << 10
SLOTS = QUEUE_BYTES // SLOT_BYTES
ALIGN = 64
# the control page's uint64 words: geometry, the child's freed records, the snapshots published, and per
# snapshot buffer its sequence (odd while written) and length
W_MAGIC, W_SLOTS, W_SLOT_BYTES, W_DONE, W_PUBLISHED, W_SEQ0, W_SEQ1, W_LEN0, W_LEN1 = range(9)
HALF = SNAP_BYTES // 2
FREE, WRITING, FILLED, USED, SKIP = 0, 1, 2, 3, 4
KIND_SAMPLE, KIND_VOID = 1, 0  # a void record: the agent failed to fill it; the child frees it unseen

#: The dtypes a record carries (the code is the index): numeric and bool tensors in native byte order.
DTYPES: tuple[np.dtype[Any], ...] = tuple(np.dtype(t) for t in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
    "float64"))
_CODES = {d: i for i, d in enumerate(DTYPES)}
MAX_NDIM = 8
MAX_TENSORS = 64

REC = struct.Struct("<IIQdHH4x")  # magic, kind, total bytes, live seconds, inputs, outputs
SECONDS = struct.Struct("<d")
SECONDS_AT = 16  # the live seconds' offset in REC: the one field of a record's header a layout does not fix
TENSOR = struct.Struct("<BBHQ")  # dtype code, ndim, name length, nbytes; then ndim int64, then the name


def _up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Ring:
    """The mapped shared file, as either side sees it (views over one ``mmap``)."""

    def __init__(self, fd: int, *, create: bool = False, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        if create:
            os.ftruncate(fd, CTRL_BYTES + SNAP_BYTES + slots * slot_bytes)
        self.size = os.fstat(fd).st_size
        self.mm = mmap.mmap(fd, self.size)
        # memoryviews, not numpy arrays: an element's read or write is ~40 ns, numpy's ~100 ns (the request path
        # reads and writes a few per sample)
        self.ctrl = memoryview(self.mm)[:CTRL_BYTES].cast("Q")
        if create:
            self.ctrl[W_MAGIC], self.ctrl[W_SLOTS], self.ctrl[W_SLOT_BYTES] = MAGIC, slots, slot_bytes
        if int(self.ctrl[W_MAGIC]) != MAGIC:
            raise ValueError("not a shadow ring")
        self.slots, self.slot_bytes = int(self.ctrl[W_SLOTS]), int(self.ctrl[W_SLOT_BYTES])
        if not 0 < self.slots <= CTRL_BYTES - STATES_AT or CTRL_BYTES + SNAP_BYTES + self.slots * self.slot_bytes \
                > self.size:
            raise ValueError("shadow ring geometry does not fit its file")
        self.states = memoryview(self.mm)[STATES_AT:STATES_AT + self.slots]
        self.snap = memoryview(self.mm)[CTRL_BYTES:CTRL_BYTES + SNAP_BYTES]
        self.area = np.ndarray((self.size,), np.uint8, buffer=self.mm)  # the whole file, for numpy's copies
        self.base = CTRL_BYTES + SNAP_BYTES

    @classmethod
    def create(cls) -> tuple[Ring, int]:
        """A new ring and its file descriptor (for the child; the caller closes it once passed)."""
        fd = os.memfd_create("modelfleet-shadow", os.MFD_CLOEXEC)
        try:
            return cls(fd, create=True), fd
        except BaseException:
            os.close(fd)
            raise

    def slot_at(self, index: int) -> int:
        return self.base + index * self.slot_bytes

    # -- the snapshot (the child writes, the agent reads) -----------------------------------------------------

    def publish(self, blob: bytes) -> bool:
        if len(blob) > HALF:
            return False
        n = self.ctrl[W_PUBLISHED] + 1
        b = n % 2
        self.ctrl[W_SEQ0 + b] += 1
        _fence()
        self.snap[b * HALF:b * HALF + len(blob)] = blob
        self.ctrl[W_LEN0 + b] = len(blob)
        _fence()
        self.ctrl[W_SEQ0 + b] += 1
        self.ctrl[W_PUBLISHED] = n
        return True

    def read(self, known: int) -> tuple[int, bytes | None]:
        """(publish count, the latest snapshot's bytes) — None when it is still publish ``known``, or when the
        child overwrote the buffer while it was read, a few times over."""
        for _ in range(5):
            n = self.ctrl[W_PUBLISHED]
            if n == known:
                return n, None
            b = n % 2
            seq = self.ctrl[W_SEQ0 + b]
            if not seq & 1:
                _fence()
                size = min(self.ctrl[W_LEN0 + b], HALF)
                blob = bytes(self.snap[b * HALF:b * HALF + size])
                _fence()
                if self.ctrl[W_SEQ0 + b] == seq:
                    return n, blob
        return known, None

    # -- the child's side -------------------------------------------------------------------------------------

    def take(self, tail: int) -> tuple[int, int, bool, Any] | None:
        """The record at ``tail``: (its slots, the next tail, whether the agent counted it as handed, then
        (live seconds, feeds, live outputs), or a problem text, or None for nothing to run); None when nothing
        is filled there yet. The caller frees the slots (:meth:`free`)."""
        with _BARRIER:
            state = int(self.states[tail])
        if state == SKIP:
            return 1, 0, False, None if tail else "a skip mark at slot 0"
        if state == USED:  # a record's inner slot where a record should start: out of step, step over it
            return 1, (tail + 1) % self.slots, False, f"slot {tail} is inside a record"
        if state != FILLED:
            return None
        _fence()
        at = self.slot_at(tail)
        magic, kind, total, live_s, n_in, n_out = REC.unpack_from(self.mm, at)
        slots = max(1, -(-total // self.slot_bytes))
        nxt = tail + slots
        if magic != MAGIC or nxt > self.slots or total < REC.size:
            return 1, (tail + 1) % self.slots, True, f"slot {tail}: bad record header ({magic:#x}, {total} bytes)"
        if kind == KIND_VOID:
            return slots, nxt % self.slots, True, None
        try:
            feeds, live = self._tensors(at, int(total), int(n_in), int(n_out))
        except ValueError as exc:
            return slots, nxt % self.slots, True, f"slot {tail}: {exc}"
        return slots, nxt % self.slots, True, (float(live_s), feeds, live)

    def _tensors(self, at: int, total: int, n_in: int, n_out: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if n_in + n_out > MAX_TENSORS:
            raise ValueError(f"{n_in + n_out} tensors")
        end = at + total
        pos = at + REC.size
        descs = []
        for _ in range(n_in + n_out):
            if pos + TENSOR.size > end:
                raise ValueError("descriptors run past the record")
            code, ndim, name_len, nbytes = TENSOR.unpack_from(self.mm, pos)
            pos += TENSOR.size
            if code >= len(DTYPES) or ndim > MAX_NDIM or pos + 8 * ndim + name_len > end:
                raise ValueError(f"bad tensor descriptor (dtype code {code}, {ndim} dimensions)")
            shape = struct.unpack_from(f"<{ndim}q", self.mm, pos)
            pos += 8 * ndim
            name = bytes(self.mm[pos:pos + name_len]).decode("utf-8", "replace")
            pos += name_len
            dtype = DTYPES[code]
            if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
                raise ValueError(f"tensor {name!r}: shape {list(shape)} is not {nbytes} bytes of {dtype}")
            descs.append((name, dtype, shape, int(nbytes)))
        pos = _up(pos - at) + at
        arrays = []
        for name, dtype, shape, nbytes in descs:
            if pos + nbytes > end:
                raise ValueError(f"tensor {name!r} runs past the record")
            arrays.append((name, np.ndarray(shape, dtype, buffer=self.mm, offset=pos)))
            pos = _up(pos + nbytes - at) + at
        return dict(arrays[:n_in]), dict(arrays[n_in:])

    def free(self, tail: int, slots: int, done: int) -> None:
        _fence()  # the record's bytes are read before the agent may see its slots free and write them again
        with _BARRIER:
            self.states[tail + 1:tail + slots] = bytes(slots - 1)
            self.states[tail] = FREE
        self.ctrl[W_DONE] = done


_BARRIER = threading.Lock()


def _fence() -> None:
    """A lock's acquire and release. Where a CPU reorders memory accesses (ARM), a state byte must not be seen
    before the bytes it announces: the writer fences, then stores the state inside the lock; the reader loads it
    inside the lock, then fences (a release followed by an acquire is ordered: RCsc). x86 keeps stores in
    order; there this costs ~100 ns."""
    with _BARRIER:
        pass


class RingMirror:
    """The agent's end of one endpoint's comparison: the request path's hand-off and the child's numbers.

    ``observe``, ``judge``, ``snapshot``, ``idle``, ``stop``; the candidate, the comparison and the aggregates
    live in the child ``proc``
    (:class:`~reconciler.agent.shadowproc.CandidateProcess`, which owns the ring and the control socket).
    """

    def __init__(self, endpoint: str, live_version: str, candidate_version: str, settings: ShadowSettings,
                 proc: Any, *, elapsed: Callable[[], float] = lambda: 0.0,
                 on_verdict: Callable[[Verdict], None] | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.endpoint, self.live_version, self.candidate_version = endpoint, live_version, candidate_version
        self.settings = settings
        self.priority: str | None = proc.priority
        self._proc, self._ring = proc, proc.ring
        self._elapsed, self._on_verdict, self._rand = elapsed, on_verdict, rand
        self._lock = threading.Lock()  # the producers' claim and counters: held for a few comparisons
        self.offered = self.sampled_out = self.dropped = self.handed = 0
        self._head = 0
        self._limit = min(settings.queue, self._ring.slots)
        self._max_slots = max(1, self._ring.slots // 2)
        self._final = self._stopped = False
        self._death: str | None = None  # the child ended by itself: why
        self._seq, self._child_done, self._child = -1, 0, ShadowStats().to_state()
        self._snap_lock = threading.Lock()
        self.verdict = Verdict("Comparing")
        self._notified = (self.verdict.state, self.verdict.reason, self.verdict.switch)
        with contextlib.suppress(OSError):  # a child already gone: the watcher reads the socket's end, and says so
            proc.conn.send(("mirror", settings))
        self._thread = threading.Thread(target=self._watch, name=f"modelfleet-shadow-{endpoint}", daemon=True)
        self._thread.start()

    # -- the request path -------------------------------------------------------------------------------------

    def observe(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        rate = self.settings.sample_rate
        drawn = rate >= 1.0 or self._rand() < rate
        ring = self._ring
        # no layout for a sample that will be dropped anyway (a candidate that cannot keep up: most of them)
        layout = (_layout(feeds, outputs) if drawn and not (self._final or self._stopped)
                  and self.handed - ring.ctrl[W_DONE] < self._limit else None)
        with self._lock:
            self.offered += 1
            if self._final or self._stopped:
                return
            if not drawn:
                self.sampled_out += 1
                return
            first = None
            if layout is not None and self.handed - ring.ctrl[W_DONE] < self._limit:
                slots = -(-layout[0] // ring.slot_bytes)
                if slots <= self._max_slots:
                    first = self._claim(slots)
            if first is None:
                self.dropped += 1
                return
            self.handed += 1
        at = ring.slot_at(first)
        kind = KIND_VOID
        try:
            _write(ring, at, layout, feeds, outputs, seconds)  # type: ignore[arg-type]
            kind = KIND_SAMPLE
        finally:
            if kind == KIND_VOID:
                REC.pack_into(ring.mm, at, MAGIC, KIND_VOID, layout[0], 0.0, 0, 0)  # type: ignore[index]
            _fence()
            with _BARRIER:
                ring.states[first] = FILLED

    def _claim(self, slots: int) -> int | None:
        """The first of ``slots`` consecutive free slots at the head (marked), or None; with the lock held."""
        states, head = self._ring.states, self._head
        if head + slots > len(states):
            if states[head] != FREE or any(states[:slots]):
                return None
            states[head] = SKIP  # the rest of this lap is left out: a record never wraps
            head = 0
        elif states[head] != FREE or (slots > 1 and any(states[head + 1:head + slots])):
            return None
        if slots > 1:
            states[head + 1:head + slots] = bytes([USED]) * (slots - 1)
        states[head] = WRITING
        self._head = (head + slots) % len(states)
        return head

    # -- the child's numbers ------------------------------------------------------------------------------------

    def _stats(self) -> ShadowStats:
        """The child's aggregates as last published, with the request path's counts."""
        with self._snap_lock:
            seq, blob = self._ring.read(self._seq)
            if blob is not None:
                with contextlib.suppress(ValueError, TypeError, KeyError):  # torn or bad: keep the last good one
                    doc = json.loads(blob)
                    self._child_done, self._child = int(doc["done"]), doc["stats"]
                    self._seq = seq
            stats = ShadowStats.from_state(self._child)
        with self._lock:
            stats.offered, stats.sampled_out, stats.dropped = self.offered, self.sampled_out, self.dropped
        if self._death is not None:
            stats.add_error(f"CandidateError: {self._death}", 0.0)
        return stats

    def judge(self) -> Verdict:
        """The verdict now (also re-checks ``maxDuration``, which passes without samples)."""
        verdict = device_verdict(self._stats(), self.settings, elapsed=self._elapsed())
        self.verdict = verdict
        if verdict.failed:
            with self._lock:
                self._final = True
        return verdict

    def snapshot(self) -> dict[str, Any]:
        snap = self._stats().snapshot()
        snap["queued"] = max(0, self.handed - self._ring.ctrl[W_DONE])
        if self.priority is not None:
            snap["priority"] = self.priority
        return snap

    def idle(self) -> bool:
        """Every handed sample compared and in the published numbers (tests and the bench wait for it)."""
        self._stats()
        return self._final or self._death is not None or self._child_done >= self.handed

    # -- the control socket ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Waits for the child's word: a verdict change, or the socket's end (the child died, or was stopped)."""
        conn = self._proc.conn
        while True:
            try:
                conn.recv()
            except (EOFError, OSError):
                if not self._stopped:
                    self._death = f"the shadow process ended ({self._proc.exit_description()})"
                    self._judged()
                return
            if self._stopped:
                return
            self._judged()

    def _judged(self) -> None:
        verdict = self.judge()
        key = (verdict.state, verdict.reason, verdict.switch)
        if key != self._notified:
            self._notified = key
            if self._on_verdict is not None:
                with contextlib.suppress(Exception):
                    self._on_verdict(verdict)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
        with contextlib.suppress(OSError, ValueError):
            self._proc.conn.send(("stop", None))
        if timeout and self._thread is not threading.current_thread():
            self._thread.join(timeout)


#: Records' layouts by their tensors' names, dtypes and shapes: a serving endpoint sees few distinct ones, and
#: the header is then built once, not per sample.
_LAYOUTS: dict[tuple[Any, ...], tuple[int, bytes, tuple[int, ...]] | None] = {}
_MAX_LAYOUTS = 256
_SMALL = 1 << 16  # a tensor up to this size is copied by a plain memcpy; a larger one by numpy (without the GIL)


def _layout(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
            ) -> tuple[int, bytes, tuple[int, ...]] | None:
    """(the record's bytes, its whole header but the live seconds, each tensor's offset), or None when a tensor cannot
    travel (an object dtype, too many dimensions or tensors)."""
    key = (*[(n, a.dtype, a.shape) for n, a in feeds.items()], len(feeds),
           *[(n, a.dtype, a.shape) for n, a in outputs.items()])
    got = _LAYOUTS.get(key, False)
    if got is not False:
        return got  # type: ignore[return-value]
    got = _build_layout(feeds, outputs)
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = got
    return got


def _build_layout(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
                  ) -> tuple[int, bytes, tuple[int, ...]] | None:
    if len(feeds) + len(outputs) > MAX_TENSORS:
        return None
    parts = []
    sizes = []
    for tensors in (feeds, outputs):
        for name, a in tensors.items():
            code = _CODES.get(a.dtype)
            if code is None or a.ndim > MAX_NDIM:
                return None
            nm = name.encode()
            parts += [TENSOR.pack(code, a.ndim, len(nm), a.nbytes), struct.pack(f"<{a.ndim}q", *a.shape), nm]
            sizes.append(a.nbytes)
    descs = b"".join(parts)
    pos = _up(REC.size + len(descs))
    offsets = []
    for n in sizes:
        offsets.append(pos)
        pos = _up(pos + n)
    return pos, REC.pack(MAGIC, KIND_SAMPLE, pos, 0.0, len(feeds), len(outputs)) + descs, tuple(offsets)


def _write(ring: Ring, at: int, layout: tuple[int, bytes, tuple[int, ...]], feeds: Mapping[str, np.ndarray],
           outputs: Mapping[str, np.ndarray], seconds: float) -> None:
    _total, head, offsets = layout
    mm = ring.mm
    mm[at:at + len(head)] = head
    SECONDS.pack_into(mm, at + SECONDS_AT, seconds)
    i = 0
    for tensors in (feeds, outputs):
        for a in tensors.values():
            off = at + offsets[i]
            i += 1
            n = a.nbytes
            if not n:
                continue
            if n <= _SMALL and a.flags.c_contiguous:
                mm[off:off + n] = a if a.ndim else a.tobytes()  # a plain memcpy of the array's buffer
            else:
                np.copyto(ring.area[off:off + n].view(a.dtype).reshape(a.shape), a, casting="no")
