"""A sealed batch on its way to its destination: each destination's uploader (its thread, backoff and the
batches it holds in memory) and the sealed batch not yet in the spool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


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
        # A batch sealed while this destination was taking uploads goes to it straight from memory (the writer
        # hands over only into an empty slot: one being sent, one next); it reaches the spool only if the
        # upload fails.
        self.slot: _Sealed | None = None
        self.inflight: _Sealed | None = None


@dataclass(frozen=True)
class _Sealed:
    """A sealed batch not (yet) in the spool."""

    endpoint: str
    header: dict[str, Any]
    data: bytes
    key_id: str
