"""Each destination's upload walk: the batch handed over in memory first, then the destination's endpoints'
batches in the spool, oldest first, stopping at the first failure (that destination's own backoff, with jitter,
so a dead or hanging destination holds back only itself). A batch is deleted only once the destination showed
the stored object is the batch (:mod:`~.upload`); one that fails from memory goes to the spool. A failure with
a named reason (a refused client certificate) is the ``problems`` entry of the destination's endpoints until an
upload to it succeeds.

:class:`UploadWalks` is a part of :class:`~.service.CaptureService` (its base class), split off along this
seam: it reads the service's policies, destinations, spool and clock, and stores a failed batch through the
service's ``_store`` (which makes room within the quota first).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

from reconciler.capture.batch import SUFFIX
from reconciler.capture.handoff import _Sealed, _Uploader
from reconciler.capture.policy import CapturePolicy, backoff_delay, upload_allowed
from reconciler.capture.spool import Spool
from reconciler.capture.upload import UploadError
from reconciler.core.logs import fields

log = logging.getLogger("reconciler.capture")

M_UPLOADED = Counter("modelfleet_capture_uploaded_batches_total", "Batches acknowledged by the destination.")

UPLOAD_IDLE = 5.0  # an uploader with nothing to send (or not allowed to) looks again after this long


class UploadWalks(abc.ABC):
    """The upload side of the capture service: one thread per destination, each running :meth:`_upload_loop`."""

    # The service's state these walks read and update (set in CaptureService.__init__).
    spool: Spool
    policies: dict[str, CapturePolicy]
    clock: Callable[[], float]
    rand: Callable[[], float]
    counts: dict[str, int]
    last_request: float
    last_upload: float | None
    last_error: str | None
    _dests: dict[str, Any]
    _uploaders: dict[str, _Uploader]
    _uploaders_lock: threading.Lock
    _stop: threading.Event
    _cpu: dict[str, float]
    _window_open: Callable[[Mapping[str, Any] | None], bool]

    @abc.abstractmethod
    def _store(self, sealed: _Sealed, now: float) -> bool:
        """Make room within the quota, then write ``sealed`` to the spool (CaptureService's); False: dropped."""

    def _wake_uploader(self, endpoint: str) -> None:
        dest = self._dests.get(endpoint)
        u = self._uploaders.get(dest.describe()) if dest is not None else None
        if u is not None:
            u.wake.set()  # it still waits out its backoff

    def retry_uploads(self) -> None:
        """Forget every destination's backoff and try now (a destination known to be back; tests)."""
        with self._uploaders_lock:
            for u in self._uploaders.values():
                u.next_try = 0.0
                u.wake.set()

    def _upload_loop(self, u: _Uploader) -> None:
        name = threading.current_thread().name
        while not self._stop.is_set() and not u.retired:
            delay = UPLOAD_IDLE
            t0 = time.thread_time()
            try:
                delay = self._upload_destination(u)
            except Exception as exc:  # never let the thread die
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._cpu[name] = self._cpu.get(name, 0.0) + time.thread_time() - t0
            u.wake.wait(delay)
            u.wake.clear()

    def upload_once(self) -> float:
        """Send what the policies allow now, every destination in turn; returns how long to wait before the
        next try (the shortest of the destinations' waits)."""
        with self._uploaders_lock:
            uploaders = list(self._uploaders.values())
        return min((self._upload_destination(u) for u in uploaders), default=UPLOAD_IDLE)

    def _upload_destination(self, u: _Uploader) -> float:
        """One walk over the destination's batches, oldest first; stops at its first failure (backoff)."""
        with u.lock:
            wait = u.next_try - time.monotonic()
            if wait > 0:
                return wait
            now = self.clock()
            while (sealed := u.next_waiting()) is not None:  # (status() sees it all along, waiting then inflight)
                try:
                    delay = self._send_sealed(u, sealed, now)  # (failing: it and those waiting go to the spool)
                finally:
                    u.inflight = None
                if delay is not None:
                    return delay
            idle = time.monotonic() - self.last_request
            for b in self.spool.batches():
                if b.endpoint not in u.endpoints:
                    continue
                if self._stop.is_set() or u.retired:
                    return 0.0
                policy = self.policies.get(b.endpoint)
                dest = self._dests.get(b.endpoint)
                if policy is None or dest is None or b.key_id != policy.key_id or dest.describe() != u.key:
                    continue  # retired (enforce() deletes it) or moved to another destination
                if not upload_allowed(policy, idle_seconds=idle, window_open=self._window_open(policy.window)):
                    continue
                try:
                    acked = dest.put(self.spool.path_of(b.id))
                except FileNotFoundError:
                    self.spool.forget(b.id)
                    continue  # purged meanwhile
                except UploadError as exc:
                    return self._failed(u, b.id, b.endpoint, exc, now)
                if acked:
                    self.spool.delete([b], "uploaded", "acknowledged", now, durable=False)
                    self._acknowledged(u, now)
            return UPLOAD_IDLE

    def _send_sealed(self, u: _Uploader, sealed: _Sealed, now: float) -> float | None:
        """Upload a batch handed over from memory; on failure it goes to the spool. None, or the backoff."""
        policy = self.policies.get(sealed.endpoint)
        dest = self._dests.get(sealed.endpoint)
        if policy is None or policy.key_id != sealed.key_id or dest is None or dest.describe() != u.key:
            self._store(sealed, now)  # moved or refused meanwhile: it waits in the spool; a retired
            return None  # campaign's batch is dropped there (audited), never sent
        batch_id = sealed.header["id"]
        try:
            dest.put_bytes(f"{batch_id}{SUFFIX}", sealed.data)
        except UploadError as exc:
            self._store(sealed, now)
            return self._failed(u, batch_id, sealed.endpoint, exc, now)
        self.spool.audit.write("uploaded", now, durable=False, batch=batch_id, endpoint=sealed.endpoint,
                               bytes=len(sealed.data), reason="acknowledged")
        self._acknowledged(u, now)
        return None

    def _failed(self, u: _Uploader, batch_id: str, endpoint: str, exc: UploadError, now: float) -> float:
        u.failures += 1
        error = f"{exc.reason}: {exc}" if exc.reason else str(exc)
        if u.failures == 1 or exc.reason != u.last_reason:
            self.spool.audit.write("upload-failed", now, durable=False, batch=batch_id, endpoint=endpoint,
                                   destination=u.key, error=error[:300])
            named = {"reason": exc.reason} if exc.reason else {}
            log.warning("capture upload failed", extra=fields(endpoint=endpoint, **named, error=str(exc)[:300]))
        u.last_error = self.last_error = error
        u.last_reason = exc.reason
        delay = backoff_delay(u.failures, self.rand())
        for waiting in u.back_off(time.monotonic() + delay):  # handed over meanwhile: they wait it out in the spool
            self._store(waiting, now)
            u.let_go(waiting)
        return delay

    def _acknowledged(self, u: _Uploader, now: float) -> None:
        self.counts["uploaded"] += 1
        if u.failures:
            u.failures = 0
            u.last_error = u.last_reason = None
            self.last_error = next((v.last_error for v in list(self._uploaders.values())
                                    if v.failures and v.last_error), None)
        self.last_upload = now
        M_UPLOADED.inc()
