"""The device-side capture service: observer on the request path, writer and uploader threads off it.

Request path (:class:`CaptureObserver`, called by the serving registry after each inference): look up the
endpoint's sampling plan and draw a random number; only for a request that is captured (or whose policy has a
``lowConfidence`` or ``drift`` trigger) anything more happens: references to the request's arrays go on a
bounded queue (a lock-protected count and size; a full queue drops the record and counts it). Nothing is
copied, written, encrypted or sent on the request path.

Writer thread: minimise (keep/redact; nothing to do for a policy that keeps everything), append the queued
records to the endpoint's open batch as they are (:mod:`~.openbatch`), seal it to the campaign's public key when
it holds ``batch.records`` records, ``batch.interval`` passed or the memory bound is reached (records whose
layout changed within a batch are sealed as batches of one layout each). **Before** a sealed batch is written,
the endpoint's oldest batches are deleted until it fits in ``maxBytes`` (a batch larger than ``maxBytes`` on its
own is dropped and counted), so the spool is within the quota at every write, not at the next sweep; retention
and retired keys are swept every :data:`ENFORCE_EVERY` seconds.

Uploaders (:mod:`~.uploads`): one thread per destination, each walking its own endpoints' batches oldest first,
with its own exponential backoff and jitter, so a dead or hanging destination holds back only itself. While a
destination takes uploads, the writer hands it a sealed batch in memory (at most two per destination: one being
sent, one next) instead of writing it to the spool; it reaches the spool only if that upload fails (or on
close). A batch is deleted only after the destination showed the stored object is the batch (:mod:`~.upload`).

A destination URL the agent config does not allow (:func:`~reconciler.capture.upload.destination_refusal`) gets
no connection: the endpoint keeps capturing within its quota and retention, its batches wait, and
``problems`` names the refusal (``CaptureDestinationRefused``) until the Deployment points at an allowed origin.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from reconciler.capture.batch import new_batch_id, seal_batch
from reconciler.capture.handoff import _Sealed, _Uploader
from reconciler.capture.openbatch import (
    MAX_OPEN_BATCH_BYTES,
    RECORD_META_BYTES,
    SIZE,
    TRIGGER,
    Entry,
    OpenBatch,
    batch_meta,
    stack_runs,
)
from reconciler.capture.policy import (
    CapturePolicy,
    minimise,
    upload_allowed,
)
from reconciler.capture.requestpath import CaptureObserver, _Plan
from reconciler.capture.retention import Retention
from reconciler.capture.sealer.ring import FULL, NATIVE, PUT
from reconciler.capture.sealer.rows import TRIGGER_CODE
from reconciler.capture.sealing import SealerSide
from reconciler.capture.spool import Spool
from reconciler.capture.upload import (
    DirectoryDestination,
    HttpDestination,
    destination_refusal,
    origin_of,
)
from reconciler.capture.uploads import UploadWalks
from reconciler.core.credentials import Credentials
from reconciler.core.logs import fields
from reconciler.core.reasons import CAPTURE_DESTINATION_REFUSED

log = logging.getLogger("reconciler.capture")

M_RECORDS = Counter("modelfleet_capture_records_total", "Records captured (before sealing).", ["endpoint", "trigger"])
M_DROPPED = Counter("modelfleet_capture_dropped_total", "Records dropped because the capture queue was full.",
                    ["endpoint"])
QUEUE_MAX = 1024
QUEUE_MAX_BYTES = 64 * 1024 * 1024  # references to request arrays waiting for the writer
ENFORCE_EVERY = 5.0  # retention and retired keys; the quota is checked at every write
AUDIT_SYNC_EVERY = 1.0  # fsync of the audit lines written since (see AuditLog.write)
POLL = 1.0  # the writer's longest sleep; the request path wakes it sooner, once a quarter of the queue's count waits
DRAIN_CHUNK = 64  # records the writer takes off the queue per lock
_EMPTY: dict[str, np.ndarray] = {}
_OBSERVER = itemgetter(0)


def _minimised(policy: CapturePolicy, entry: Entry) -> Entry | None:
    """A queued record with only what the policy keeps (None: nothing), its size counting what is kept."""
    obs, trigger, feeds, outputs, t, size = entry
    inputs, outs = minimise(policy, feeds, outputs)
    if not inputs and not outs:
        return None
    if inputs is not feeds or outs is not outputs:
        size = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outs.values())
    return (obs, trigger, inputs, outs, t, size)


class CaptureService(Retention, UploadWalks, SealerSide):
    """Everything capture does on a device; ``configure`` follows the desired state's policies."""

    def __init__(self, state_dir: Path, device: str, *, clock: Callable[[], float] = time.time,
                 upload_token: str | None = None, upload_ca_file: str | None = None,
                 upload_tls: Credentials | None = None,
                 upload_allowed_origins: Iterable[str] = (),
                 window_open: Callable[[Mapping[str, Any] | None], bool] | None = None,
                 queue_max: int = QUEUE_MAX, background: bool = True, sealer: str = "process") -> None:
        self.spool = Spool(state_dir)
        self._background = background  # False: the caller drives drain/flush/upload_once (tests, tools)
        self._init_sealer(sealer, background)  # ("process" | "thread"; see SealerSide)
        self._place_lock = threading.Lock()  # a sealed batch placed by the writer or the sealer's link thread
        self.device = device
        self.clock = clock
        self.policies: dict[str, CapturePolicy] = {}  # only enabled ones
        self.plans: dict[str, _Plan] = {}  # the same, for the request path (read lock-free there)
        self.drifting: frozenset[str] = frozenset()
        self.last_request = 0.0
        self.rand = random.Random().random
        # Records waiting for the writer. append/popleft need no lock; the count and size bounds do, and hold
        # at every append (the writer drains it every POLL seconds, or as soon as _wake_at records wait: few
        # wake-ups, each a larger chunk of work, interrupt the serving thread less).
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.queue_max = queue_max
        self._wake_at = max(1, queue_max // 4)  # (three quarters left for a writer slow to get the CPU)
        self._wake_writer = threading.Event()
        self.queued_bytes = 0
        self._queue_lock = threading.Lock()
        self.dropped: dict[str, int] = {}
        self.problems: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self._live_keys: set[str] | None = None
        self._upload_token = upload_token
        # The capture block's proxy, CA files and client certificate (upload_ca_file alone: a CA).
        self._upload_tls = upload_tls or Credentials(ca_file=Path(upload_ca_file) if upload_ca_file else None)
        self._allowed_origins = frozenset(origin_of(o) for o in upload_allowed_origins)
        self._refused: dict[str, str] = {}  # endpoint -> why its destination gets no upload
        self._window_open = window_open or (lambda w: True)
        self._open: dict[str, OpenBatch] = {}
        self._dests: dict[str, Any] = {}
        self._uploaders: dict[str, _Uploader] = {}  # destination (describe()) -> its sender
        self._uploaders_lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._threads: list[threading.Thread] = []
        self._last_enforce = 0.0
        self._last_audit_sync = 0.0
        self._enforce_lock = threading.Lock()  # enforce() and the make-room-then-write of a batch
        self._cpu: dict[str, float] = {}  # thread name -> CPU seconds (bench/bench_capture.py reports the sum)
        self.counts = {"captured": 0, "sealed": 0, "uploaded": 0, "purged": 0}
        self.last_upload: float | None = None
        self.last_error: str | None = None

    @property
    def cpu_seconds(self) -> float:
        """CPU time the capture threads (the sealer's link thread too) and the sealer process used."""
        sealer = self._sealer
        return sum(self._cpu.values()) + self.sealer_cpu_seconds + (sealer.link_cpu if sealer is not None else 0.0)

    @property
    def upload_failures(self) -> int:
        """Consecutive failed uploads, summed over the destinations."""
        return sum(u.failures for u in list(self._uploaders.values()))

    # -- configuration --------------------------------------------------------------------------------------

    def configure(self, policies: Mapping[str, CapturePolicy], problems: Mapping[str, str] | None = None,
                  models: Mapping[str, str] | None = None) -> None:
        """The enabled policies per endpoint from a validated desired state (retires every other campaign)."""
        enabled = {k: v for k, v in policies.items() if v.enabled}
        self.models = dict(models or {})
        if enabled:
            self.spool.ensure()
            if self._background and not self._started and not self._stop.is_set():
                self.start()
        self._refused = {k: v for k, v in self._refused.items() if k in enabled}
        self._dests = {k: d for k, p in enabled.items() if (d := self._destination(k, p)) is not None}
        self.problems = {**(problems or {}), **self._refused}
        self.policies = enabled
        self.plans = {k: _Plan(v) for k, v in enabled.items()}
        self._live_keys = {p.key_id for p in enabled.values()}
        self._ensure_sealer()
        self._sync_uploaders()
        if not enabled and self.spool.batches_dir.exists():
            self.enforce()  # capture turned off or campaign retired: its batches go now, not at the next start

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
        self.plans = {**self.plans, endpoint: _Plan(policy)}
        if self._background and not self._started and not self._stop.is_set():
            self.start()
        self._ensure_sealer()
        self._sync_uploaders()

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
                                   token=self._upload_token, tls=self._upload_tls)
        return DirectoryDestination(p.destination_dir or "", self.device, max_bytes_per_second=p.max_bytes_per_second)

    def _sync_uploaders(self) -> None:
        """One uploader per destination the endpoints use now (endpoints sharing a destination share its
        uploader and backoff); an uploader whose destination is no longer used stops."""
        wanted: dict[str, set[str]] = {}
        for endpoint, dest in self._dests.items():
            wanted.setdefault(dest.describe(), set()).add(endpoint)
        orphans = []
        with self._uploaders_lock:
            for key in [k for k in self._uploaders if k not in wanted]:
                u = self._uploaders.pop(key)
                u.retired = True
                u.wake.set()
                orphans += u.take_waiting()  # handed over, not sent yet: they wait in the spool instead
            for key, endpoints in wanted.items():
                u = self._uploaders.get(key)
                if u is None:
                    u = self._uploaders[key] = _Uploader(key)
                u.endpoints = frozenset(endpoints)
                if self._started and u.thread is None and not self._stop.is_set():
                    self._start_uploader(u)
                u.wake.set()
        for sealed in orphans:
            self._store(sealed, self.clock())

    def set_drifting(self, endpoints: set[str]) -> None:
        """Endpoints whose drift alert is on (the ``drift`` trigger captures them while it lasts)."""
        self.drifting = frozenset(endpoints)

    def observer_for(self, endpoint: str, version: str) -> CaptureObserver:
        return CaptureObserver(self, endpoint, version, "")

    # -- request path ---------------------------------------------------------------------------------------

    def offer(self, obs: CaptureObserver, trigger: str, feeds: dict[str, np.ndarray],
              outputs: dict[str, np.ndarray]) -> None:
        ring = obs.stream  # the sealer's ring the observer's last record went to
        for _ in range(2):  # that ring, then the one for this record's layout (another layout, or it closed)
            if ring is None and (ring := self._stream_for(obs, feeds, outputs)) is None:
                break
            got = ring.put(self.clock(), TRIGGER_CODE.get(trigger, 1), feeds, outputs)
            if got == PUT:
                obs.stream = ring
                return
            if got == FULL:
                self._count_drop(obs.endpoint)
                return
            obs.stream = ring = None
        self._enqueue(obs, trigger, feeds, outputs)

    def _count_drop(self, endpoint: str) -> None:
        with self._queue_lock:
            self.dropped[endpoint] = self.dropped.get(endpoint, 0) + 1

    def _enqueue(self, obs: CaptureObserver, trigger: str, feeds: dict[str, np.ndarray],
                 outputs: dict[str, np.ndarray]) -> None:
        """The agent's own queue (``sealer: thread``, and records the sealer process cannot take)."""
        if not feeds and not outputs:
            return  # nothing to keep (checked here, where the mappings are in hand, not in the writer)
        size = 0
        for a in feeds.values():
            size += a.nbytes
        for a in outputs.values():
            size += a.nbytes
        t = self.clock()
        with self._queue_lock:
            if len(self.queue) >= self.queue_max or self.queued_bytes + size > QUEUE_MAX_BYTES:
                self.dropped[obs.endpoint] = self.dropped.get(obs.endpoint, 0) + 1
                return
            self.queued_bytes += size
            self.queue.append((obs, trigger, feeds, outputs, t, size))
            wake = len(self.queue) == self._wake_at
        if wake:  # once per _wake_at records at most
            self._wake_writer.set()

    # -- threads --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.spool.clean_temp()
        self._started = True
        t = threading.Thread(target=self._writer_loop, name="capture-writer", daemon=True)
        t.start()
        self._threads.append(t)
        with self._uploaders_lock:
            for u in self._uploaders.values():
                if u.thread is None:
                    self._start_uploader(u)

    def _start_uploader(self, u: _Uploader) -> None:
        u.thread = threading.Thread(target=self._upload_loop, args=(u,), name=f"capture-upload-{len(self._threads)}",
                                    daemon=True)
        u.thread.start()
        self._threads.append(u.thread)

    def close(self, timeout: float = 10.0) -> None:
        """Seal what is buffered (a clean stop loses nothing) and stop the threads."""
        self._stop.set()
        self._wake_writer.set()
        with self._uploaders_lock:
            for u in self._uploaders.values():
                u.wake.set()
        deadline = time.monotonic() + timeout
        with self._sealer_lock:
            sealer, self._sealer = self._sealer, None
        if sealer is not None:  # its rings' records are sealed and placed (in the spool: uploads have stopped)
            sealer.close(timeout)
            self._retire_sealer(sealer)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        now = self.clock()
        with self._uploaders_lock:
            held = [x for u in self._uploaders.values() for x in u.held()]
            for u in self._uploaders.values():
                u.take_waiting()
                u.inflight = None
        for sealed in held:  # not acknowledged yet: to the spool (a duplicate of one acknowledged meanwhile is
            self._store(sealed, now)  # sent and verified again at the next start)
        self.drain()
        self.flush(force=True)
        self.spool.audit.close()

    def _writer_loop(self) -> None:
        name = threading.current_thread().name
        while not self._stop.is_set():
            self._wake_writer.wait(POLL)
            self._wake_writer.clear()
            if self._stop.is_set():
                break
            t0 = time.thread_time()
            self._safe(self.drain)
            self._safe(self.flush)
            if self.sealer_mode == "process" and (self._sealer is None) == bool(self.policies):
                # (after a crash, once its back-off has passed; or capture has been off a while: it ends)
                self._safe(self._ensure_sealer, False)
            self._cpu[name] = self._cpu.get(name, 0.0) + time.thread_time() - t0

    def _safe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a capture problem must never reach serving; it is reported in status
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("capture failed", extra={"error": self.last_error})

    def drain(self) -> None:
        """Process everything queued now (tests, shutdown)."""
        counted: collections.Counter[tuple[str, str]] = collections.Counter()
        lock, queue = self._queue_lock, self.queue
        try:
            while queue:
                with lock:  # a few at a time: the count and size bounds stay exact for the request path
                    items = [queue.popleft() for _ in range(min(len(queue), DRAIN_CHUNK))]
                    self.queued_bytes -= sum(map(SIZE, items))
                for obs, group in itertools.groupby(items, _OBSERVER):  # (a chunk is mostly one observer's)
                    for trigger, n in collections.Counter(map(TRIGGER, self._add(obs, list(group)))).items():
                        counted[(obs.endpoint, trigger)] += n
        finally:
            for (endpoint, trigger), n in counted.items():
                M_RECORDS.labels(endpoint, trigger).inc(n)

    def _add(self, obs: CaptureObserver, entries: list[Entry]) -> list[Entry]:
        """Append one observer's records to its endpoint's open batch (minimised first if the policy says so),
        sealing it whenever full; returns the records kept."""
        endpoint = obs.endpoint
        policy = self.policies.get(endpoint)
        if policy is None:
            return []  # the policy went away while the records waited: they are not kept
        if not policy.keeps_everything:
            entries = [e for e in map(functools.partial(_minimised, policy), entries) if e is not None]
        ob = self._open.get(endpoint)
        if ob is not None and ob.version != obs.version:
            self._seal(endpoint, ob, policy)
            ob = None
        i = 0
        while i < len(entries):
            if ob is None:
                ob = self._open[endpoint] = OpenBatch(obs.model or self.models.get(endpoint, ""), obs.version,
                                                      entries[i][4], limit=min(MAX_OPEN_BATCH_BYTES,
                                                                               policy.max_bytes // 4 or 1))
            take = entries[i:i + max(1, policy.batch_records - len(ob.entries))]  # (>= 1: batch.records may drop)
            added = sum(map(SIZE, take)) + RECORD_META_BYTES * len(take)
            if ob.nbytes + added >= ob.limit:  # the byte bound falls inside this chunk: record by record
                take, added = take[:1], take[0][5] + RECORD_META_BYTES
            ob.entries += take
            ob.nbytes += added
            i += len(take)
            if len(ob.entries) >= policy.batch_records or ob.nbytes >= ob.limit:
                self._seal(endpoint, ob, policy)
                ob = None
        self.counts["captured"] += len(entries)
        return entries

    def flush(self, force: bool = False) -> None:
        """Seal batches that are due (or all of them), then enforce retention and retired keys."""
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
                self.spool.audit.write("dropped", now, durable=False, endpoint=endpoint, count=n, reason="queue-full")
        mono = time.monotonic()
        if force or mono - self._last_audit_sync >= AUDIT_SYNC_EVERY:
            self._last_audit_sync = mono
            self.spool.audit.sync()

    def _seal(self, endpoint: str, ob: OpenBatch, policy: CapturePolicy) -> None:
        self._open.pop(endpoint, None)
        if not ob.entries:
            return
        for run in stack_runs(ob.entries):  # one run, unless the records' layout changed in the batch
            now = self.clock()
            meta = batch_meta(batch_id=new_batch_id(now), device=self.device, endpoint=endpoint, model=ob.model,
                              version=ob.version, policy=policy, index=run.index, triggers=list(map(TRIGGER, run.entries)))
            header, data = seal_batch(meta, run.arrays, policy.recipient, record_index=run.index)
            self._place(endpoint, policy, header, data, now)
        ob.entries.clear()

    def _place(self, endpoint: str, policy: CapturePolicy, header: dict[str, Any], data: bytes, now: float) -> None:
        """A batch just sealed (here or by the sealer process): to its uploader, or the spool within the quota."""
        with self._place_lock:
            self._place_locked(endpoint, policy, header, data, now)

    def _place_locked(self, endpoint: str, policy: CapturePolicy, header: dict[str, Any], data: bytes,
                      now: float) -> None:
        if len(data) > policy.max_bytes:
            self._drop_over_quota(endpoint, policy, header, data, now)
            return
        self.spool.audit.write("sealed", now, durable=False, batch=header["id"], endpoint=endpoint,
                               modelVersion=header["modelVersion"], records=header["records"],
                               rows=header["rows"], bytes=len(data), keyId=header["keyId"],
                               campaign=policy.campaign)
        sealed = _Sealed(endpoint, header, data, str(header["keyId"]))  # (the key it was sealed to)
        if self._hand_off(sealed, policy) or self._store(sealed, now):
            self.counts["sealed"] += 1  # once in the spool or with its uploader (status counts both)

    def _count_captured(self, endpoint: str, trigger: str, n: int) -> None:
        self.counts["captured"] += n
        M_RECORDS.labels(endpoint, trigger).inc(n)

    def _hand_off(self, sealed: _Sealed, policy: CapturePolicy) -> bool:
        """Give the batch to its destination's uploader to send from memory, when uploads are allowed now, none
        of its endpoints' batches wait in the spool (oldest first holds), and the uploader is not backing off and
        has room (:data:`~.handoff.HANDOFF_BATCHES`, :data:`~.handoff.HANDOFF_BYTES`; both checked by
        :meth:`~.handoff._Uploader.hand_over`, under the lock its back-off takes). Writing a batch to flash only
        to delete it a moment later costs CPU and wear."""
        dest = self._dests.get(sealed.endpoint)
        if dest is None or not self._started or self._stop.is_set():
            return False
        u = self._uploaders.get(dest.describe())
        if u is None:
            return False
        if not upload_allowed(policy, idle_seconds=time.monotonic() - self.last_request,
                              window_open=self._window_open(policy.window)):
            return False
        if self.spool.holds(u.endpoints):
            return False
        return u.hand_over(sealed, time.monotonic())

    # -- status ---------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stored = self.spool.stored() if self.spool.batches_dir.exists() else []
        ids = {b.id for b in stored}
        held = {x.header["id"]: x for u in list(self._uploaders.values()) for x in u.held()
                if x.header["id"] not in ids}.values()
        doc: dict[str, Any] = {
            "endpoints": sorted(self.policies), "pendingBatches": len(stored) + len(held),
            "pendingBytes": sum(b.size for b in stored) + sum(len(x.data) for x in held),
            "capturedRecords": self.counts["captured"],
            "uploadedBatches": self.counts["uploaded"], "purgedBatches": self.counts["purged"],
        }
        if self.last_upload is not None:
            doc["lastUpload"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_upload))
        if self.last_error:
            doc["lastError"] = self.last_error[:512]
        if self.policies:
            doc["sealer"] = self.sealer_state()[:512]
            if self.sealer_mode == "process":  # (the request path's copy into the sealer's rings: C, or Python)
                doc["ringWriter"] = "c" if NATIVE else "python"
        if self._sealer_exits:
            doc["sealerExits"] = self._sealer_exits
        problems = {**{e: u.last_error for u in list(self._uploaders.values()) if u.last_reason and u.last_error
                       for e in u.endpoints}, **self.problems}
        if problems:
            doc["problems"] = problems
        return doc
