"""The sealer process: takes each stream's rows, minimises and seals them, and hands the sealed batches back.

Started by :class:`~reconciler.capture.sealer.link.SealerProcess` as ``python -c "…main(fd)"`` over a socket
pair. The agent sends (pickled, over that socket: the agent is this process's only peer):

- ``("config", device, {endpoint: CapturePolicy})``: the enabled policies (an endpoint no longer in them: its
  rows are dropped, never sealed — as the agent drops an open batch of a retired policy);
- ``("stream", sid, endpoint, version, model, layout, capacity)`` followed by the ring's descriptor;
- ``("end", sid)``: the stream is not used any more (its rows so far are sealed first);
- ``("flush", token)``: seal every stream's rows now, then answer ``("flushed", token)``;
- ``("close",)``: the same, answer ``("closed",)`` and exit.

Woken by the agent (once a quarter of a ring's rows more were written), or after :func:`poll_seconds`, it takes
each ring's new rows; a stream seals a batch when it holds ``batch.records`` records, when the batch's bytes
(minimised, as the agent counts them) reach the open-batch bound, or when its first record would be older than
``batch.interval`` at the next look. What one look sealed goes back in one message, ``("sealed", [(endpoint,
header, data), …], {(endpoint, trigger): records taken})`` (several when the batches' bytes pass
:data:`MESSAGE_BYTES`): the agent's link thread wakes once per look, not once per batch, audits each batch and
hands it to its uploader or writes it to the spool within the quota. A batch that fails to seal is reported as
``("error", message)`` and the process goes on. The process ends when the socket closes: an agent that dies
takes it along.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import Any

import numpy as np

from reconciler.capture.batch import new_batch_id, seal_batch
from reconciler.capture.openbatch import MAX_OPEN_BATCH_BYTES, RECORD_META_BYTES, batch_meta
from reconciler.capture.policy import CapturePolicy, minimise
from reconciler.capture.sealer.ring import RowRing
from reconciler.capture.sealer.rows import TRIGGERS, RowLayout, merged, record_index, unpack

#: The longest the sealer sleeps when nothing wakes it sooner: the agent wakes it (a byte on a pipe) each time a
#: ring holds a quarter of its rows more. Every wake-up of another process on a busy device preempts a serving
#: thread and evicts its caches, and costs the agent's link and uploader threads a wake-up each: the sealer looks
#: every few seconds, or once per few thousand records, and a batch is sealed no later than ``batch.interval``
#: after its first record (see :func:`poll_seconds`).
POLL_MAX_S = 5.0
POLL_MIN_S = 0.05
#: Sealed bytes sent back in one message (a look that sealed more sends several).
MESSAGE_BYTES = 8 * 1024 * 1024


def poll_seconds(policies: Mapping[str, CapturePolicy]) -> float:
    """How long the sealer may sleep: a quarter of the shortest ``batch.interval``, within
    [:data:`POLL_MIN_S`, :data:`POLL_MAX_S`]."""
    shortest = min((p.batch_interval for p in policies.values()), default=POLL_MAX_S * 4)
    return max(POLL_MIN_S, min(POLL_MAX_S, shortest / 4))


@dataclass
class _Stream:
    endpoint: str
    version: str
    model: str
    ring: RowRing
    pending: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    start: float | None = None  # time of the oldest pending record
    record_bytes: int | None = None  # a minimised record's bytes plus its index entry (None: not known yet)
    kept: bool = True  # False: the policy keeps nothing of this stream's records


def _per_batch(policy: CapturePolicy, record_bytes: int) -> int:
    """Records in a batch: ``batch.records``, or fewer when their bytes reach the open-batch bound first (the
    agent's rule: a batch is sealed by the record that reaches the bound)."""
    limit = min(MAX_OPEN_BATCH_BYTES, policy.max_bytes // 4 or 1)
    return max(1, min(policy.batch_records, -(-limit // max(1, record_bytes))))


class Sealer:
    """The process's state: the policies, the streams and the socket to the agent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.device = ""
        self.policies: Mapping[str, CapturePolicy] = {}
        self.streams: dict[int, _Stream] = {}
        self.taken: Counter[tuple[str, str]] = Counter()  # records kept since the last report, by endpoint and trigger
        self.sealed: list[tuple[str, dict[str, Any], bytes]] = []  # (endpoint, header, data) not sent yet
        self.sealed_bytes = 0
        self.poll = poll_seconds({})

    def handle(self, msg: tuple[Any, ...]) -> bool:
        """One message from the agent; False when the process should end."""
        kind = msg[0]
        if kind == "config":
            self.device, self.policies = msg[1], msg[2]
            self.poll = poll_seconds(self.policies)
            for st in self.streams.values():
                if st.endpoint not in self.policies:
                    st.pending, st.count, st.start = [], 0, None  # retired: the plaintext is dropped
                st.record_bytes = None  # (the policy's minimisation may have changed)
                if st.pending:
                    self.learn(st, self.policies[st.endpoint], st.pending[0])
        elif kind == "stream":
            sid, endpoint, version, model, layout, capacity = msg[1:]
            fd = recv_handle(self.conn)
            assert isinstance(layout, RowLayout)
            self.streams[sid] = _Stream(endpoint, version, model, RowRing.attach(fd, layout, capacity))
        elif kind == "end":
            st = self.streams.pop(msg[1], None)
            if st is not None:
                self.take(st)
                self.seal_all(st)
                st.ring.release()
        elif kind in ("flush", "close"):
            for st in self.streams.values():
                self.take(st)
                self.seal_all(st)
            self.report()
            self.conn.send(("flushed", msg[1]) if kind == "flush" else ("closed",))
            return kind == "flush"
        return True

    def take(self, st: _Stream) -> None:
        while (rows := st.ring.take()) is not None:
            policy = self.policies.get(st.endpoint)
            if policy is None:
                continue  # no policy: not kept
            if st.record_bytes is None:
                self.learn(st, policy, rows)
            if not st.kept:
                continue  # the policy keeps nothing of these records
            codes = np.bincount(rows["trig"], minlength=len(TRIGGERS) + 1)
            for code in np.flatnonzero(codes[1:]).tolist():
                self.taken[(st.endpoint, TRIGGERS[code])] += int(codes[code + 1])
            st.pending.append(rows)
            st.count += len(rows)
            if st.start is None:
                st.start = float(rows["t"][0])

    @staticmethod
    def learn(st: _Stream, policy: CapturePolicy, rows: np.ndarray) -> None:
        """A record's bytes once minimised (every record of a stream has the same)."""
        one_in, one_out = minimise(policy, *unpack(rows[:1], st.ring.layout)[:2])
        st.record_bytes = sum(a.nbytes for a in (*one_in.values(), *one_out.values())) + RECORD_META_BYTES
        st.kept = bool(one_in or one_out)

    def report(self) -> None:
        """The batches sealed and the records taken (the agent's ``capturedRecords``) since the last report."""
        if self.taken or self.sealed:
            self.conn.send(("sealed", self.sealed, dict(self.taken)))
            self.taken.clear()
            self.sealed, self.sealed_bytes = [], 0

    def due(self, now: float) -> bool:
        """Take every ring's new rows and seal the batches due; whether any row came."""
        came = False
        for st in self.streams.values():
            before = st.count
            self.take(st)
            came = came or st.count != before
            policy = self.policies.get(st.endpoint)
            if policy is None or not st.count:
                continue
            per = _per_batch(policy, st.record_bytes or 1)
            while st.count >= per:
                self.seal(st, policy, per)
            if st.count and now + self.poll - (st.start or now) >= policy.batch_interval:  # (not later: at this look)
                self.seal(st, policy, st.count)
        return came

    def seal_all(self, st: _Stream) -> None:
        policy = self.policies.get(st.endpoint)
        while policy is not None and st.count:
            self.seal(st, policy, min(st.count, _per_batch(policy, st.record_bytes or 1)))

    def seal(self, st: _Stream, policy: CapturePolicy, n: int) -> None:
        """Seal the first ``n`` pending records."""
        rows = st.pending[0] if len(st.pending) == 1 else np.concatenate(st.pending)
        n = min(n, rows.shape[0])
        batch, rest = rows[:n], rows[n:]
        st.pending = [rest] if len(rest) else []
        st.count -= n
        st.start = float(rest["t"][0]) if len(rest) else None
        inputs, outputs, times, triggers = unpack(batch, st.ring.layout)
        inputs, outputs = minimise(policy, inputs, outputs)
        if not inputs and not outputs:
            return  # the policy keeps nothing of these records
        index = record_index(times, triggers, inputs)
        try:
            meta = batch_meta(batch_id=new_batch_id(time.time()), device=self.device, endpoint=st.endpoint,
                              model=st.model, version=st.version, policy=policy, index=index, triggers=triggers)
            header, data = seal_batch(meta, merged(inputs, outputs), policy.recipient, record_index=index)
        except Exception as exc:  # one batch that cannot be sealed is reported; the others go on
            self.conn.send(("error", f"sealing a batch of {st.endpoint}: {type(exc).__name__}: {exc}"))
            return
        self.sealed.append((st.endpoint, header, data))
        self.sealed_bytes += len(data)
        if self.sealed_bytes >= MESSAGE_BYTES:
            self.report()


def main(fd: int, wake_fd: int) -> None:
    conn = Connection(socket.socket(fileno=fd).detach())
    sealer = Sealer(conn)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            readable, _, _ = select.select([conn, wake_fd], [], [], sealer.poll)
            if wake_fd in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_fd, 4096)
            while conn.poll(0):
                if not sealer.handle(conn.recv()):
                    return
            sealer.due(time.time())
            sealer.report()
    except (EOFError, OSError):
        return  # the agent closed the socket, or died
