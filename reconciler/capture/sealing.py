"""The capture service's side of the sealer process (:mod:`~.sealer`): when it runs, the stream a record goes
to, the batches and counts it sends back, its crashes and restarts, and what status says of it.

:class:`SealerSide` is a part of :class:`~.service.CaptureService` (its base class), split off along this seam:
it reads the service's policies, device, clock and counts, places a batch the process sealed through the
service's ``_place`` (the writer's own audit → uploader or spool within the quota step) and one whose policy went
meanwhile through ``_store`` (which purges it).
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import Counter

from reconciler.capture.handoff import _Sealed
from reconciler.capture.policy import CapturePolicy, backoff_delay
from reconciler.capture.requestpath import CaptureObserver
from reconciler.capture.sealer.link import SealerProcess
from reconciler.capture.sealer.ring import RowRing
from reconciler.capture.sealer.rows import layout_of

log = logging.getLogger("reconciler.capture")

M_SEALER_ENDED = Counter("modelfleet_capture_sealer_exits_total",
                         "Times the capture sealer process ended on its own (crashed, killed); it is started again.")

SEALERS = ("process", "thread")  # where records are sealed: a process of their own, or the agent's writer thread
SEALER_READY_WAIT = 10.0  # a start from configure() waits this long at most for the process to take records
SEALER_IDLE_STOP_S = 60.0  # capture off this long: the sealer process ends
SEALER_RESTART_S = (5.0, 600.0)  # a sealer process that ended is started again after 5 s, doubling up to 10 min


class SealerSide(abc.ABC):
    """The sealer process as the capture service runs it."""

    # The service's state this side reads and updates (set in CaptureService.__init__).
    device: str
    policies: dict[str, CapturePolicy]
    models: dict[str, str]
    queue: Any
    clock: Callable[[], float]
    last_error: str | None
    _background: bool
    _started: bool
    _stop: threading.Event
    _cpu: dict[str, float]

    @abc.abstractmethod
    def _place(self, endpoint: str, policy: CapturePolicy, header: dict[str, Any], data: bytes, now: float) -> None:
        """Audit a sealed batch, then hand it to its uploader or store it within the quota (CaptureService's)."""

    @abc.abstractmethod
    def _store(self, sealed: _Sealed, now: float) -> bool:
        """Write ``sealed`` to the spool within the quota, or purge it (its policy went); CaptureService's."""

    @abc.abstractmethod
    def _count_captured(self, endpoint: str, trigger: str, n: int) -> None:
        """``n`` records kept (``capturedRecords`` and the records metric); CaptureService's."""

    @abc.abstractmethod
    def drain(self) -> None: ...

    @abc.abstractmethod
    def flush(self, force: bool = False) -> None: ...

    def _init_sealer(self, sealer: str, background: bool) -> None:
        if sealer not in SEALERS:
            raise ValueError(f"sealer must be one of {', '.join(SEALERS)}, not {sealer!r}")
        # "process": records go to the sealer process's rings (the agent's queue when a record cannot: another
        # layout, no stream left, the process not running); "thread": all through the agent's queue and writer.
        self.sealer_mode = sealer if background else "thread"
        if self.sealer_mode == "process" and not (hasattr(os, "memfd_create") and hasattr(os, "pipe2")):
            self.sealer_mode = "thread"  # (not Linux: no anonymous shared files to put the rows in)
        self._sealer: SealerProcess | None = None
        self._sealer_restart_at = 0.0  # time.monotonic() from which an ended sealer process is started again
        self._sealer_failures = 0
        self._sealer_started = 0.0
        self._sealer_exits = 0
        self._sealer_why = ""  # why records are sealed in the agent now (the process ended, or did not start)
        self._sealer_lock = threading.Lock()  # starting, configuring and stopping the sealer process
        self._sealer_cpu = 0.0  # CPU seconds of sealer processes that ended
        self._sealer_unused_since: float | None = None  # time.monotonic() since which no policy is enabled

    @property
    def sealer_cpu_seconds(self) -> float:
        """CPU time of the sealer processes (another process's: not in this one's ``getrusage``)."""
        sealer = self._sealer
        return self._sealer_cpu + (sealer.cpu_seconds if sealer is not None else 0.0)

    def _stream_for(self, obs: CaptureObserver, feeds: dict[str, np.ndarray],
                    outputs: dict[str, np.ndarray]) -> RowRing | None:
        sealer = self._sealer
        if sealer is None or not sealer.ready.is_set():
            return None
        layout = layout_of(feeds, outputs)
        if layout is None:
            return None
        return sealer.stream_for(obs.endpoint, obs.version, obs.model or self.models.get(obs.endpoint, ""), layout)

    def _ensure_sealer(self, wait: bool = True) -> None:
        """The sealer process runs while a policy is enabled (started again after a crash once its back-off
        passed), and ends once capture has been off for :data:`SEALER_IDLE_STOP_S`: an agent with capture off
        carries no second interpreter, and a policy switched off and on again does not restart it."""
        if self.sealer_mode != "process" or not self._started:
            return
        with self._sealer_lock:
            sealer = self._sealer
            if sealer is not None:
                sealer.configure(self.device, self.policies)  # (an endpoint no longer enabled: its rows dropped)
                now = time.monotonic()
                if self.policies:
                    self._sealer_unused_since = None
                elif self._sealer_unused_since is None:
                    self._sealer_unused_since = now
                if self._stop.is_set() or (self._sealer_unused_since is not None
                                           and now - self._sealer_unused_since >= SEALER_IDLE_STOP_S):
                    self._sealer = None
                    sealer.close()
                    self._retire_sealer(sealer)
                return
            if not self.policies or self._stop.is_set() or time.monotonic() < self._sealer_restart_at:
                return
            sealer = SealerProcess(on_sealed=self._sealed_by_child, on_taken=self._taken_by_child,
                                   on_error=self._sealer_error, on_exit=self._sealer_ended)
            self._sealer_started = time.monotonic()
            why = sealer.start()
            if why is not None:
                self._sealer_ended(why, 0)
                return
            sealer.configure(self.device, self.policies)
            self._sealer = sealer
        # From a configure: the first records go to its rings, not into a batch the agent would fill until
        # batch.interval. (After a crash the writer thread starts it and does not wait: records keep flowing.)
        if wait:
            sealer.ready.wait(SEALER_READY_WAIT)

    def _sealed_by_child(self, endpoint: str, header: dict[str, Any], data: bytes) -> None:
        now = self.clock()
        policy = self.policies.get(endpoint)
        if policy is None or policy.key_id != header.get("keyId"):  # retired while it was sealed: not kept
            self._store(_Sealed(endpoint, header, data, str(header.get("keyId"))), now)
            return
        self._place(endpoint, policy, header, data, now)

    def _taken_by_child(self, taken: dict[tuple[str, str], int]) -> None:
        for (endpoint, trigger), n in taken.items():
            self._count_captured(endpoint, trigger, n)

    def sealer_state(self) -> str:
        """``process``, ``thread`` or ``agent (why)``: where records are sealed now."""
        if self.sealer_mode == "thread":
            return "thread"
        if self._sealer is not None:
            return "process"
        return f"agent ({self._sealer_why})" if self._sealer_why else "agent"

    def _retire_sealer(self, sealer: SealerProcess) -> None:
        self._sealer_cpu += sealer.cpu_seconds
        self._cpu["capture-sealer-link"] = self._cpu.get("capture-sealer-link", 0.0) + sealer.link_cpu

    def _sealer_error(self, message: str) -> None:
        self.last_error = f"capture: {message}"
        log.warning("capture sealing failed", extra={"error": self.last_error})

    def _sealer_ended(self, description: str, lost: int) -> None:
        """The sealer process ended on its own (crashed, killed): records go through the agent's queue until
        it is started again."""
        sealer, self._sealer = self._sealer, None
        if sealer is not None:
            self._retire_sealer(sealer)
        if time.monotonic() - self._sealer_started >= SEALER_RESTART_S[1]:
            self._sealer_failures = 0  # it ran for a long while: start again soon, as after a first crash
        M_SEALER_ENDED.inc()
        self._sealer_failures += 1
        delay = backoff_delay(self._sealer_failures, 1.0, base=SEALER_RESTART_S[0], cap=SEALER_RESTART_S[1])
        self._sealer_restart_at = time.monotonic() + delay
        self._sealer_exits += 1
        self._sealer_why = f"the sealer process ended: {description}; it starts again in {delay:.0f}s"
        self.last_error = (f"capture sealer process ended ({description}); {lost} records in its rings were lost; "
                           f"capture goes on in the agent, the process starts again in {delay:.0f}s")
        log.warning("capture sealer process ended", extra={"error": self.last_error})

    @property
    def backlog(self) -> int:
        """Records offered but not taken yet: in the agent's queue, or in the sealer's rings."""
        sealer = self._sealer
        return len(self.queue) + (sealer.backlog if sealer is not None else 0)

    def wake_sealer(self) -> None:
        """Have the sealer process take its rings' rows now (tests, the bench: ``backlog`` then drops soon)."""
        sealer = self._sealer
        if sealer is not None:
            sealer.wake()

    def seal_now(self, timeout: float = 10.0) -> bool:
        """Seal every record the sealer process holds now and place its batches (tests, tools); with no
        background threads, the agent's queue and open batches too."""
        sealer = self._sealer
        done = sealer.flush(timeout) if sealer is not None else True
        if not self._background:
            self.drain()
            self.flush(force=True)
        return done
