"""The device-side capture service: observer on the request path, writer and uploader threads off it.

Request path (:class:`CaptureObserver`, called by the serving registry after each inference): look up the
endpoint's policy, draw a random number, maybe compute the lowest top score, and ``put_nowait`` references to
the request's arrays on a bounded queue — a full queue drops the record and counts it. Nothing else.

Writer thread: minimise (keep/redact), stack records into the endpoint's open batch, seal it to the campaign's
public key when it holds ``batch.records`` records, ``batch.interval`` passed, the record layout changes or the
memory bound is reached; then enforce retention, quota and retired keys, oldest first. Uploader thread: send
sealed batches to the destination when the policy allows (idle / window), delete only acknowledged ones, back
off with jitter on failure.

A destination URL the agent config does not allow (:func:`~reconciler.capture.upload.destination_refusal`) gets
no connection: the endpoint keeps capturing within its quota and retention, its batches wait, and
``problems`` names the refusal (``CaptureDestinationRefused``) until the Deployment points at an allowed origin.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from reconciler.capture.batch import new_batch_id, seal_batch, stack_records
from reconciler.capture.policy import (
    CapturePolicy,
    backoff_delay,
    capture_trigger,
    min_confidence,
    minimise,
    record_signature,
    select_purge,
    upload_allowed,
)
from reconciler.capture.spool import Spool, stored_batch
from reconciler.capture.upload import (
    DirectoryDestination,
    HttpDestination,
    UploadError,
    destination_refusal,
    origin_of,
)
from reconciler.core.logs import fields
from reconciler.core.reasons import CAPTURE_DESTINATION_REFUSED

log = logging.getLogger("reconciler.capture")

M_RECORDS = Counter("modelfleet_capture_records_total", "Records captured (before sealing).", ["endpoint", "trigger"])
M_DROPPED = Counter("modelfleet_capture_dropped_total", "Records dropped because the capture queue was full.",
                    ["endpoint"])
M_UPLOADED = Counter("modelfleet_capture_uploaded_batches_total", "Batches acknowledged by the destination.")
M_PURGED = Counter("modelfleet_capture_purged_batches_total", "Batches deleted unsent.", ["reason"])
M_PENDING = Gauge("modelfleet_capture_pending_bytes", "Bytes of sealed batches waiting for upload.")

QUEUE_MAX = 1024
QUEUE_MAX_BYTES = 64 * 1024 * 1024  # references to request arrays waiting for the writer
MAX_OPEN_BATCH_BYTES = 4 * 1024 * 1024
ENFORCE_EVERY = 5.0
POLL = 0.2


@dataclass
class _Open:
    """An endpoint's batch being filled (plaintext, in memory only, bounded)."""

    model: str
    version: str
    signature: tuple[Any, ...]
    start: float
    records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    nbytes: int = 0
    end: float = 0.0


class CaptureObserver:
    """One loaded model version's hook (the registry's observer protocol)."""

    __slots__ = ("service", "endpoint", "version", "model")

    def __init__(self, service: CaptureService, endpoint: str, version: str, model: str) -> None:
        self.service = service
        self.endpoint = endpoint
        self.version = version
        self.model = model

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        # request_id is not kept: a client-chosen id can identify a person, and retraining does not need it
        svc = self.service
        svc.last_request = time.monotonic()
        policy = svc.policies.get(self.endpoint)
        if policy is None:
            return
        conf = (min_confidence(outputs, policy.low_confidence_output)
                if policy.low_confidence_below is not None else None)
        trigger = capture_trigger(policy, svc.rand(), confidence=conf, drifting=self.endpoint in svc.drifting)
        if trigger is not None:
            svc.offer(self, trigger, feeds, outputs if policy.wants_outputs else {})

    def observe_error(self, seconds: float) -> None:
        self.service.last_request = time.monotonic()

    def observe_rejection(self) -> None:
        self.service.last_request = time.monotonic()

    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """The decoded inputs of a request that failed validation (the ``rejected`` trigger)."""
        svc = self.service
        policy = svc.policies.get(self.endpoint)
        if policy is not None and inputs and capture_trigger(policy, 1.0, rejected=True):
            svc.offer(self, "rejected", inputs, {})


class CaptureService:
    """Everything capture does on a device; ``configure`` follows the desired state's policies."""

    def __init__(self, state_dir: Path, device: str, *, clock: Callable[[], float] = time.time,
                 upload_token: str | None = None, upload_ca_file: str | None = None,
                 upload_allowed_origins: Iterable[str] = (),
                 window_open: Callable[[Mapping[str, Any] | None], bool] | None = None,
                 queue_max: int = QUEUE_MAX, background: bool = True) -> None:
        self.spool = Spool(state_dir)
        self._background = background  # False: the caller drives drain/flush/upload_once (tests, tools)
        self.device = device
        self.clock = clock
        self.policies: dict[str, CapturePolicy] = {}  # only enabled ones; read lock-free on the request path
        self.drifting: frozenset[str] = frozenset()
        self.last_request = 0.0
        self.rand = random.Random().random
        # A deque, not a queue.Queue: append/popleft need no lock and wake nobody, so the request path never
        # hands the GIL to the writer; the writer drains it every POLL seconds.
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.queue_max = queue_max
        self.queued_bytes = 0
        self.dropped: dict[str, int] = {}
        self.problems: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self._live_keys: set[str] | None = None
        self._upload_token = upload_token
        self._upload_ca = upload_ca_file
        self._allowed_origins = frozenset(origin_of(o) for o in upload_allowed_origins)
        self._refused: dict[str, str] = {}  # endpoint -> why its destination gets no upload
        self._window_open = window_open or (lambda w: True)
        self._open: dict[str, _Open] = {}
        self._dests: dict[str, Any] = {}
        self._stop = threading.Event()
        self._wake_upload = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_enforce = 0.0
        self._enforce_lock = threading.Lock()
        self.cpu_seconds = 0.0  # CPU the capture threads used (bench/bench_capture.py reports it)
        self.counts = {"captured": 0, "sealed": 0, "uploaded": 0, "purged": 0}
        self.last_upload: float | None = None
        self.last_error: str | None = None
        self.upload_failures = 0

    # -- configuration --------------------------------------------------------------------------------------

    def configure(self, policies: Mapping[str, CapturePolicy], problems: Mapping[str, str] | None = None,
                  models: Mapping[str, str] | None = None) -> None:
        """The enabled policies per endpoint from a validated desired state (retires every other campaign)."""
        enabled = {k: v for k, v in policies.items() if v.enabled}
        self.models = dict(models or {})
        if enabled:
            self.spool.ensure()
            if self._background and not self._threads and not self._stop.is_set():
                self.start()
        self._refused = {k: v for k, v in self._refused.items() if k in enabled}
        self._dests = {k: d for k, p in enabled.items() if (d := self._destination(k, p)) is not None}
        self.problems = {**(problems or {}), **self._refused}
        self.policies = enabled
        self._live_keys = {p.key_id for p in enabled.values()}
        if not enabled and self.spool.batches_dir.exists():
            self.enforce()  # capture turned off or campaign retired: its batches go now, not at the next start
        self._wake_upload.set()

    def restore(self, endpoint: str, policy: CapturePolicy, model: str) -> None:
        """One endpoint's last known policy at an offline boot; retires nothing (the desired state is unknown)."""
        if self._live_keys is not None or not policy.enabled:
            return
        self.spool.ensure()
        self.models[endpoint] = model
        dest = self._destination(endpoint, policy)
        if dest is not None:
            self._dests = {**self._dests, endpoint: dest}
        else:
            self.problems = {**self.problems, endpoint: self._refused[endpoint]}
        self.policies = {**self.policies, endpoint: policy}
        if self._background and not self._threads and not self._stop.is_set():
            self.start()

    def _destination(self, endpoint: str, p: CapturePolicy) -> Any:
        """The endpoint's destination, or None (and the reason in ``_refused``) when it must get no upload."""
        before = self._refused.pop(endpoint, None)
        if p.destination_url:
            why = destination_refusal(p.destination_url, token=bool(self._upload_token),
                                      allowed_origins=self._allowed_origins)
            if why is not None:
                problem = f"{CAPTURE_DESTINATION_REFUSED}: {why}"
                if problem != before:  # configure() runs every pass: warn on a change only
                    log.warning("capture destination refused", extra=fields(endpoint=endpoint, error=why))
                self._refused[endpoint] = problem
                return None
            return HttpDestination(p.destination_url, self.device, max_bytes_per_second=p.max_bytes_per_second,
                                   token=self._upload_token, ca_file=self._upload_ca)
        return DirectoryDestination(p.destination_dir or "", self.device, max_bytes_per_second=p.max_bytes_per_second)

    def set_drifting(self, endpoints: set[str]) -> None:
        """Endpoints whose drift alert is on (the ``drift`` trigger captures them while it lasts)."""
        self.drifting = frozenset(endpoints)

    def observer_for(self, endpoint: str, version: str) -> CaptureObserver:
        return CaptureObserver(self, endpoint, version, "")

    # -- request path ---------------------------------------------------------------------------------------

    def offer(self, obs: CaptureObserver, trigger: str, feeds: dict[str, np.ndarray],
              outputs: dict[str, np.ndarray]) -> None:
        size = sum(a.nbytes for a in feeds.values()) + sum(a.nbytes for a in outputs.values())
        if len(self.queue) >= self.queue_max or self.queued_bytes + size > QUEUE_MAX_BYTES:
            self.dropped[obs.endpoint] = self.dropped.get(obs.endpoint, 0) + 1
            return
        self.queued_bytes += size  # approximate under races; it only bounds memory
        self.queue.append((obs.endpoint, obs.version, obs.model, trigger, feeds, outputs, self.clock(), size))

    # -- threads --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.spool.clean_temp()
        for target, name in ((self._writer_loop, "capture-writer"), (self._upload_loop, "capture-upload")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 10.0) -> None:
        """Seal what is buffered (a clean stop loses nothing) and stop the threads."""
        self._stop.set()
        self._wake_upload.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self.drain()
        self.flush(force=True)

    def _writer_loop(self) -> None:
        while not self._stop.wait(POLL):
            t0 = time.thread_time()
            self._safe(self.drain)
            self._safe(self.flush)
            self.cpu_seconds += time.thread_time() - t0

    def _safe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a capture problem must never reach serving; it is reported in status
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("capture failed", extra={"error": self.last_error})

    def drain(self) -> None:
        """Process everything queued now (tests, shutdown)."""
        while True:
            try:
                item = self.queue.popleft()
            except IndexError:
                return
            self.queued_bytes = max(0, self.queued_bytes - item[-1])
            self._add(*item[:-1])

    def _add(self, endpoint: str, version: str, model: str, trigger: str, feeds: dict[str, np.ndarray],
             outputs: dict[str, np.ndarray], t: float) -> None:
        policy = self.policies.get(endpoint)
        if policy is None:
            return  # the policy went away while the record waited: it is not kept
        inputs, outs = minimise(policy, feeds, outputs)
        if not inputs and not outs:
            return
        sig = record_signature(inputs, outs)
        ob = self._open.get(endpoint)
        if ob is not None and (ob.signature != sig or ob.version != version):
            self._seal(endpoint, ob, policy)
            ob = None
        if ob is None:
            ob = self._open[endpoint] = _Open(model or self.models.get(endpoint, ""), version, sig, t)
        rows = int(next(iter(inputs.values())).shape[0]) if inputs and next(iter(inputs.values())).ndim else 1
        ob.records.append((inputs, outs))
        ob.meta.append({"time": round(t, 3), "trigger": trigger, "rows": rows})
        ob.nbytes += sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outs.values())
        ob.end = t
        self.counts["captured"] += 1
        M_RECORDS.labels(endpoint, trigger).inc()
        if len(ob.records) >= policy.batch_records or ob.nbytes >= min(MAX_OPEN_BATCH_BYTES, policy.max_bytes // 4 or 1):
            self._seal(endpoint, ob, policy)

    def flush(self, force: bool = False) -> None:
        """Seal batches that are due (or all of them), then enforce retention and quota."""
        now = self.clock()
        for endpoint, ob in list(self._open.items()):
            policy = self.policies.get(endpoint)
            if policy is None:
                self._open.pop(endpoint, None)  # policy retired: the plaintext is dropped, never sealed
                continue
            if force or now - ob.start >= policy.batch_interval:
                self._seal(endpoint, ob, policy)
        if force or now - self._last_enforce >= ENFORCE_EVERY:
            self.enforce(now)
        for endpoint, n in list(self.dropped.items()):
            if n:
                self.dropped[endpoint] = 0
                M_DROPPED.labels(endpoint).inc(n)
                self.spool.audit.write("dropped", now, endpoint=endpoint, count=n, reason="queue-full")

    def _seal(self, endpoint: str, ob: _Open, policy: CapturePolicy) -> None:
        self._open.pop(endpoint, None)
        if not ob.records:
            return
        now = self.clock()
        triggers: dict[str, int] = {}
        for m in ob.meta:
            triggers[m["trigger"]] = triggers.get(m["trigger"], 0) + 1
        meta = {
            "id": new_batch_id(now), "device": self.device, "endpoint": endpoint, "model": ob.model,
            "modelVersion": ob.version, "campaign": policy.campaign, "purpose": policy.purpose,
            "start": round(ob.start, 3), "end": round(ob.end, 3), "records": len(ob.records),
            "rows": sum(m["rows"] for m in ob.meta), "recordIndex": ob.meta, "triggers": triggers,
            "redactions": [{"input": r.input, "columns": list(r.columns), "action": r.action}
                           for r in policy.redactions],
        }
        header, data = seal_batch(meta, stack_records(ob.records), policy.recipient)
        ob.records.clear()
        self.spool.write(header, data)
        self.counts["sealed"] += 1
        self.spool.audit.write("sealed", now, batch=header["id"], endpoint=endpoint, modelVersion=ob.version,
                               records=header["records"], rows=header["rows"], bytes=len(data),
                               keyId=header["keyId"], campaign=policy.campaign)
        self._wake_upload.set()

    def enforce(self, now: float | None = None) -> list[tuple[str, str]]:
        """Retention, quota (per endpoint, oldest first) and retired campaign keys; returns (id, reason)."""
        with self._enforce_lock:  # the writer thread and the agent's pass may both enforce
            return self._enforce(self.clock() if now is None else now)

    def _enforce(self, now: float) -> list[tuple[str, str]]:
        self._last_enforce = now
        stored = self.spool.stored()
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

    def _upload_loop(self) -> None:
        while not self._stop.is_set():
            delay = 5.0
            t0 = time.thread_time()
            try:
                delay = self.upload_once()
            except Exception as exc:  # never let the thread die
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.cpu_seconds += time.thread_time() - t0
            self._wake_upload.wait(delay)
            self._wake_upload.clear()

    def upload_once(self) -> float:
        """Send what the policies allow now; returns how long to wait before the next try."""
        now = self.clock()
        idle = time.monotonic() - self.last_request
        for path, h in self.spool.list():
            if self._stop.is_set():
                return 0.0
            policy = self.policies.get(h["endpoint"])
            dest = self._dests.get(h["endpoint"])
            if policy is None or dest is None or h.get("keyId") != policy.key_id:
                continue  # retired (enforce() deletes it) or destination refused (kept within quota and retention)
            if not upload_allowed(policy, idle_seconds=idle, window_open=self._window_open(policy.window)):
                continue
            try:
                acked = dest.put(path)
            except FileNotFoundError:
                continue  # purged meanwhile
            except UploadError as exc:
                self.upload_failures += 1
                if self.upload_failures == 1:
                    self.spool.audit.write("upload-failed", now, batch=h["id"], endpoint=h["endpoint"],
                                           error=str(exc)[:300])
                self.last_error = str(exc)
                return backoff_delay(self.upload_failures, self.rand())
            if acked:
                self.spool.delete([stored_batch(h)], "uploaded", "acknowledged", now)
                self.counts["uploaded"] += 1
                self.upload_failures = 0
                self.last_upload = now
                self.last_error = None
                M_UPLOADED.inc()
        return 5.0

    # -- status ---------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stored = self.spool.stored() if self.spool.batches_dir.exists() else []
        doc: dict[str, Any] = {
            "endpoints": sorted(self.policies), "pendingBatches": len(stored),
            "pendingBytes": sum(b.size for b in stored), "capturedRecords": self.counts["captured"],
            "uploadedBatches": self.counts["uploaded"], "purgedBatches": self.counts["purged"],
        }
        if self.last_upload is not None:
            doc["lastUpload"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_upload))
        if self.last_error:
            doc["lastError"] = self.last_error[:512]
        if self.problems:
            doc["problems"] = dict(self.problems)
        return doc
