"""A sealed batch on its way to its destination: each destination's uploader (its thread, backoff and the
batches it holds in memory) and the sealed batch not yet in the spool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

#: Sealed batches an uploader holds in memory, waiting to be sent (past the one being sent), and their bytes:
#: the sealer hands over a burst at a time (every batch its last look at the rings filled), and a batch that
#: finds no room goes to the spool — written to flash and fsynced only to be read back and deleted a moment later.
HANDOFF_BATCHES = 16
HANDOFF_BYTES = 16 * 1024 * 1024


class _Uploader:
    """One destination's sender: its endpoints, its own thread and backoff."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.endpoints: frozenset[str] = frozenset()
        self.wake = threading.Event()
        self.lock = threading.Lock()  # one walk at a time (its thread, or upload_once from a caller)
        self.failures = 0
        self.next_try = 0.0  # time.monotonic() before which it does not try again
        self.last_error: str | None = None
        self.last_reason: str | None = None  # a named reason of the last failure (ClientCertificateRefused)
        self.retired = False
        self.thread: threading.Thread | None = None
        # A batch sealed while this destination was taking uploads goes to it straight from memory (the waiting
        # ones bounded by HANDOFF_BATCHES and HANDOFF_BYTES, one more being sent); it reaches the spool only if
        # the upload fails or the bound is reached.
        self.waiting: list[_Sealed] = []
        self.lock_waiting = threading.Lock()  # (the placing thread appends, this uploader takes them all)
        self.inflight: _Sealed | None = None

    def hand_over(self, sealed: _Sealed, now: float) -> bool:
        """Queue ``sealed`` to be sent from memory: False when backing off (``now``: time.monotonic()) or full.
        (Under the lock that :meth:`back_off` takes: a batch handed over as an upload fails waits in the spool.)"""
        with self.lock_waiting:
            waiting = self.waiting
            if self.next_try > now or (waiting and (len(waiting) >= HANDOFF_BATCHES or sum(
                    len(x.data) for x in waiting) + len(sealed.data) > HANDOFF_BYTES)):
                return False
            waiting.append(sealed)
        self.wake.set()
        return True

    def back_off(self, until: float) -> list[_Sealed]:
        """No hand-over before ``until`` (time.monotonic()); the batches waiting, to be moved to the spool (each
        :meth:`let_go` once there: until then status still counts it)."""
        with self.lock_waiting:
            self.next_try = until
            return list(self.waiting)

    def let_go(self, sealed: _Sealed) -> None:
        with self.lock_waiting:
            if sealed in self.waiting:
                self.waiting.remove(sealed)

    def take_waiting(self) -> list[_Sealed]:
        """The batches handed over and not sent yet, which the caller now holds (emptied)."""
        with self.lock_waiting:
            got, self.waiting = self.waiting, []
        return got

    def next_waiting(self) -> _Sealed | None:
        """The oldest batch waiting, now the one being sent (``inflight``), or None."""
        with self.lock_waiting:
            sealed = self.inflight = self.waiting.pop(0) if self.waiting else None
        return sealed

    def held(self) -> list[_Sealed]:
        """The batches in memory: waiting, and the one being sent."""
        with self.lock_waiting:
            return [*self.waiting, *([self.inflight] if self.inflight is not None else [])]


@dataclass(frozen=True)
class _Sealed:
    """A sealed batch not (yet) in the spool."""

    endpoint: str
    header: dict[str, Any]
    data: bytes
    key_id: str
