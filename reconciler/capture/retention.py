"""The capture spool's bounds: the quota at every write, retention and retired campaign keys at every sweep.

:class:`Retention` is a part of :class:`~.service.CaptureService` (its base class), split off along this seam: a
sealed batch reaches the spool only through :meth:`Retention._store`, which makes room for it first (the
endpoint's oldest batches go, :func:`~.policy.select_room`), so the endpoint's batches on disk never exceed
``maxBytes``; :meth:`Retention.enforce` applies TTL, quota and retired keys to what is stored
(:func:`~.policy.select_purge`). Every batch deleted or not written is counted, audited and named by its reason.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge

from reconciler.capture.handoff import _Sealed
from reconciler.capture.policy import CapturePolicy, StoredBatch, select_purge, select_room
from reconciler.capture.spool import Spool, stored_batch
from reconciler.core.logs import fields

log = logging.getLogger("reconciler.capture")

M_PURGED = Counter("modelfleet_capture_purged_batches_total",
                   "Batches deleted unsent, or not written because alone they exceed maxBytes (over-quota).",
                   ["reason"])
M_PENDING = Gauge("modelfleet_capture_pending_bytes", "Bytes of sealed batches waiting for upload.")


class Retention(abc.ABC):
    """The spool's quota, retention and retired keys, as the capture service keeps them."""

    # The service's state this side reads and updates (set in CaptureService.__init__).
    spool: Spool
    policies: dict[str, CapturePolicy]
    counts: dict[str, int]
    clock: Callable[[], float]
    last_error: str | None
    _live_keys: set[str] | None
    _last_enforce: float
    _enforce_lock: threading.Lock
    _wake_uploader: Callable[[str], None]  # a batch of this endpoint waits in the spool (UploadWalks')

    def _drop_over_quota(self, endpoint: str, policy: CapturePolicy, header: dict[str, Any], data: bytes,
                         now: float) -> None:
        """A batch larger than ``maxBytes`` on its own is never written: dropped and counted."""
        self.counts["purged"] += 1
        M_PURGED.labels("over-quota").inc()
        self.spool.audit.write("dropped", now, durable=False, batch=header["id"], endpoint=endpoint,
                               records=header["records"], bytes=len(data), reason="over-quota")
        self.last_error = (f"capture: a sealed batch of {endpoint} ({len(data)} bytes) is larger than its "
                           f"maxBytes ({policy.max_bytes}) and was dropped")
        log.warning("capture batch over quota dropped", extra=fields(endpoint=endpoint, error=self.last_error))

    def _store(self, sealed: _Sealed, now: float) -> bool:
        """Make room for the batch (the endpoint's oldest first) and write it to the spool: the endpoint's
        batches on disk never exceed ``maxBytes``, the one being written included."""
        with self._enforce_lock:
            current = self.policies.get(sealed.endpoint)
            if current is None or current.key_id != sealed.key_id:  # retired meanwhile: not kept
                return self._not_kept(sealed, "policy-removed", now)  # (configure() sweeps under this lock)
            policy = current
            evict = select_room(self.spool.batches(sealed.endpoint), len(sealed.data), policy.max_bytes,
                                incoming_key=(stored_batch(sealed.header).created, sealed.header["id"]))
            if evict is None and len(sealed.data) > policy.max_bytes:  # (only if maxBytes changed meanwhile)
                self._drop_over_quota(sealed.endpoint, policy, sealed.header, sealed.data, now)
                return False
            if evict is None:  # older than every batch the quota would evict for it: it is the one that goes
                return self._not_kept(sealed, "quota", now)
            self._purge(evict, "quota", now)
            self.spool.write(sealed.header, sealed.data)
        self._wake_uploader(sealed.endpoint)
        return True

    def _not_kept(self, sealed: _Sealed, reason: str, now: float) -> bool:
        """A sealed batch purged before it reached the spool (counted and audited as a purge); False."""
        self.counts["purged"] += 1
        M_PURGED.labels(reason).inc()
        self.spool.audit.write("purged", now, batch=sealed.header["id"], endpoint=sealed.endpoint,
                               bytes=len(sealed.data), reason=reason)
        return False

    def _purge(self, doomed: Iterable[StoredBatch], reason: str, now: float) -> list[str]:
        removed = self.spool.delete(doomed, "purged", reason, now, durable=False)
        if removed:
            self.counts["purged"] += len(removed)
            M_PURGED.labels(reason).inc(len(removed))
        return removed

    def enforce(self, now: float | None = None) -> list[tuple[str, str]]:
        """Retention, quota (per endpoint, oldest first) and retired campaign keys; returns (id, reason)."""
        with self._enforce_lock:  # the writer thread and the agent's pass may both enforce
            return self._enforce(self.clock() if now is None else now)

    def _enforce(self, now: float) -> list[tuple[str, str]]:
        self._last_enforce = now
        stored = self.spool.stored()  # a full scan: also resynchronises the spool's index
        doomed = []
        if self._live_keys is not None:
            orphans = [b for b in stored if b.endpoint not in self.policies]
            doomed += [(b, "policy-removed") for b in orphans]
        for endpoint, policy in self.policies.items():
            mine = [b for b in stored if b.endpoint == endpoint]
            doomed += select_purge(mine, now, retention=policy.retention, max_bytes=policy.max_bytes,
                                   live_key_ids={policy.key_id})
        out = []
        for b, reason in doomed:
            if self.spool.delete([b], "purged", reason, now):
                out.append((b.id, reason))
                self.counts["purged"] += 1
                M_PURGED.labels(reason).inc()
        M_PENDING.set(sum(b.size for b in stored) - sum(b.size for b, _ in doomed))
        return out
