"""The agent's side of shadow evaluation (:mod:`reconciler.shadow`): download, load, mirror, judge, report.

Once per pass (:func:`shadow_pass`, after the apply step, before the status is written) the
:class:`ShadowSupervisor` brings every endpoint whose desired state has a ``shadow`` part to its comparison:

1. **Download** the candidate's targets and probe through TUF into the store (its own step: a candidate that
   cannot be downloaded never holds back the serving version). The journal names their digests, so the store's
   garbage collection keeps them while the comparison lasts.
2. **Room.** The candidate's memory is estimated from its size (:mod:`reconciler.shadow.memory`) and checked
   against ``MemAvailable``, the agent's cgroup limit and the agent config's ``shadow.reserveMB`` /
   ``shadow.maxMemoryMB``: no room → ``Refused`` (``ShadowNoMemory``), the device keeps serving.
3. **Load and check** it in a process of its own (:mod:`reconciler.agent.shadowproc`), with one intra-op
   thread, then the deployment's health check on the candidate's own probe; that process then runs at idle CPU
   priority and its RSS is the candidate's ``memoryMB``. A failure goes into the failure memory (the candidate
   never serves) and is reported ``Failed``.
4. **Mirror.** The registry's observer of every loaded version includes a :class:`ShadowTap`; the tap of the
   serving version hands each request to the endpoint's :class:`~reconciler.agent.shadowring.RingMirror`:
   sampled, copied into a shared-memory ring the candidate's process reads (bounded: a full ring drops and
   counts, never waits); the candidate's run, the comparison and the aggregates are that process's work. With
   ``serving.workers`` the samples arrive over the workers' uplink, which drift monitoring already uses.
5. **Judge** on every pass (idle ones too), from the aggregates the child last published (and at once when the
   child says its verdict changed, or its process ends): a failed candidate (raised, NaN) goes into the failure memory and
   is unloaded; after ``maxDuration`` it is unloaded with its numbers kept; under ``switch: onAgreement`` an
   agreeing device records the agreement in its journal and runs a full pass at once, whose desired state then
   serves the candidate (``shadow.state: Switched``).

The status document gets the endpoint's ``shadow`` section (numbers refreshed at most every
:data:`REPORT_INTERVAL`, a state change at once) and ``/metrics`` the ``modelfleet_shadow_*`` series.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from reconciler.agent.journal import TargetRecord, blocking_failure, record_failure
from reconciler.agent.shadowproc import CandidateProcess
from reconciler.agent.shadowring import RingMirror
from reconciler.core import conditions as C, reasons as R
from reconciler.core.logs import fields
from reconciler.shadow import gate as G
from reconciler.shadow.memory import Room, estimate_mb, refusal
from reconciler.shadow.spec import ShadowSettings

log = logging.getLogger("reconciler.agent")

#: The shadow section's numbers in the status document are refreshed at most this often (a state change at once),
#: so a comparison in progress does not rewrite the status branch on every pass.
REPORT_INTERVAL = 60.0


class ShadowTap:
    """Member of every loaded version's observer fan-out: forwards the serving version's requests to its
    endpoint's mirror, if a comparison runs (a dict lookup otherwise). Never touches the answer."""

    __slots__ = ("_sup", "name", "version")

    def __init__(self, sup: ShadowSupervisor, name: str, version: str) -> None:
        self._sup, self.name, self.version = sup, name, version

    def observe(self, feeds: Any, outputs: Any, seconds: float, request_id: str | None = None) -> None:
        m = self._sup.mirrors.get(self.name)
        if m is not None and m.live_version == self.version:
            m.observe(feeds, outputs, seconds, request_id)

    def observe_error(self, seconds: float) -> None:
        pass

    def observe_rejection(self) -> None:
        pass


@dataclass
class _Run:
    key: list[Any]
    mirror: RingMirror
    backend: CandidateProcess
    settings: ShadowSettings
    memory_mb: float | None
    estimated_mb: float | None


@dataclass
class _Report:
    section: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


def read_room(reserve_mb: float, max_memory_mb: float | None) -> Room:
    """The memory figures of this system and the agent's cgroup (Linux; None where unreadable)."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024.0
    limit = used = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        rel = next(ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                   if ln.startswith("0::"))
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        raw = (base / "memory.max").read_text().strip()
        if raw != "max":
            limit = int(raw) / (1 << 20)
            used = int((base / "memory.current").read_text().strip()) / (1 << 20)
    return Room(available, limit, used, reserve_mb, max_memory_mb)


class ShadowSupervisor:
    """Every endpoint's shadow comparison on this device (see the module docstring)."""

    def __init__(self, *, cache_dir: Path | None = None, enabled: bool = True, reserve_mb: float = 64.0,
                 max_memory_mb: float | None = None) -> None:
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.reserve_mb, self.max_memory_mb = reserve_mb, max_memory_mb
        self.mirrors: dict[str, RingMirror] = {}  # read on the request path: replaced, never mutated in place
        self.runs: dict[str, _Run] = {}
        self.wanted: dict[str, tuple[Any, str]] = {}  # endpoint → (desired shadow part, serving version)
        self.reports: dict[str, _Report] = {}
        self._lock = threading.Lock()
        self._wake: Any = None
        _LIVE.add(self)

    def observer_for(self, spec: Any) -> ShadowTap:
        return ShadowTap(self, spec.name, spec.version)

    # -- one pass ----------------------------------------------------------------------------------------------

    def sync(self, agent: Any, p: Any, endpoints: list[dict[str, Any]]) -> None:
        now = agent.clock()
        self._wake = agent.request_reconcile
        journal = agent.journal
        dirty = False
        if not p.skip_rest and p.desired is not None:
            self.wanted = {name: (ep.shadow, ep.version) for name, ep in p.desired.endpoints.items()
                           if ep.shadow is not None and not ep.suspend}
            for name in [n for n in journal.shadows if n not in self.wanted]:
                del journal.shadows[name]
                dirty = True
        for name in [n for n in self.runs if n not in self.wanted]:
            self._stop(name)
        by_name = {e["name"]: e for e in endpoints}
        for name, (part, live_version) in sorted(self.wanted.items()):
            section, changed = self._one(agent, p, name, part, live_version, now)
            dirty = dirty or changed
            e = by_name.get(name)
            if e is not None and section is not None:
                e["shadow"] = self._reported(name, section)
        for name in [n for n in self.reports if n not in self.wanted]:
            del self.reports[name]
        if dirty:
            journal.save(agent.config.state_dir)

    def _one(self, agent: Any, p: Any, name: str, part: dict[str, Any], live_version: str,
             now: _dt.datetime) -> tuple[dict[str, Any] | None, bool]:
        """The endpoint's section, and whether the journal changed."""
        journal = agent.journal
        rec = journal.shadows.get(name)
        key = [part["deployment"], part["version"], part.get("step", 0), part.get("from")]
        changed = False
        if rec is None or rec.get("key") != key:
            if name in self.runs:
                self._stop(name)
            rec = journal.shadows[name] = {"key": key, "deployment": part["deployment"], "version": part["version"],
                                          "startedAt": C.isoformat(now)}
            changed = True
        base = {"deployment": part["deployment"], "version": part["version"], "variant": part.get("variant"),
                "runtime": part.get("runtime"), "step": int(part.get("step", 0)), "startedAt": rec["startedAt"]}
        try:
            settings = ShadowSettings.from_section(part.get("settings"))
        except ValueError as exc:
            return {**base, "state": G.REFUSED, "reason": R.INVALID_SPEC, "message": str(exc)}, changed
        base.update(switch=settings.switch, minSamples=settings.min_samples, minAgreement=settings.min_agreement)
        if part.get("switched"):
            self._stop(name)
            return {**base, **(rec.get("final") or {}), "state": G.SWITCHED, "reason": "",
                    "message": f"agreed in shadow: serving {part['version']} (switch: onAgreement)"}, changed
        if part.get("problem"):
            reason, _, message = str(part["problem"]).partition(": ")
            return {**base, "state": G.REFUSED, "reason": reason, "message": message}, changed
        if not self.enabled:
            return {**base, "state": G.REFUSED, "reason": "", "message": "shadow.enabled is false in the agent config"
                    }, changed
        elapsed = (now - C.parse_time(rec["startedAt"])).total_seconds()
        final = rec.get("final")
        if final is not None:
            if final.get("state") != G.FAILED and not rec.get("agreed") and elapsed < settings.max_duration:
                rec.pop("final")  # maxDuration was raised: compare again
                changed = True
            else:
                return {**base, **final}, changed
        run = self.runs.get(name)
        if run is None:
            if p.skip_rest:  # idle pass: loading waits for the next full one
                return {**base, "state": G.LOADING, "reason": "", "message": "waiting for a reconcile pass"}, changed
            loaded = self._start(agent, p, name, part, live_version, settings, rec, base)
            if isinstance(loaded, dict):
                return loaded, True
            run = loaded
        verdict = run.mirror.judge()
        snap = run.mirror.snapshot()
        section = {**base, **snap, "state": verdict.state, "reason": verdict.reason, "message": verdict.message[:1024],
                   "stopped": verdict.stopped, "memoryMB": run.memory_mb, "estimatedMemoryMB": run.estimated_mb}
        if verdict.failed:
            digest = rec.get("digest", "")
            journal.failures = record_failure(journal.failures, p.commit, name, digest, part["version"],
                                              f"{verdict.reason}: {verdict.message}", now)
            log.warning("shadow candidate failed", extra=fields(endpoint=name, version=part["version"],
                                                                reason=verdict.reason, message=verdict.message))
            rec["final"] = {k: v for k, v in section.items() if k not in base}
            self._stop(name)
            return section, True
        if verdict.switch:
            rec["agreed"] = True
            rec["final"] = {k: v for k, v in section.items() if k not in base}
            self._stop(name)
            log.info("shadow agreement: switching", extra=fields(endpoint=name, version=part["version"],
                                                                 message=verdict.message))
            agent._settled_commit = None  # the next pass is a full one: its desired state serves the candidate
            agent.request_reconcile()
            return section, True
        if verdict.stopped:
            rec["final"] = {k: v for k, v in section.items() if k not in base}
            self._stop(name)
            log.info("shadow stopped after maxDuration", extra=fields(endpoint=name, version=part["version"]))
            return section, True
        return section, changed

    def _start(self, agent: Any, p: Any, name: str, part: dict[str, Any], live_version: str,
               settings: ShadowSettings, rec: dict[str, Any], base: dict[str, Any]) -> _Run | dict[str, Any]:
        """Download, room check, load and health check; the run, or the section saying why not."""
        from reconciler.agent.metrics import M_BYTES

        c = agent.c
        paths = list(part["targets"]) + ([part["probe_target"]] if part.get("probe_target") else [])
        try:
            fetched, downloaded = c.tuf_fetch(paths)
        except Exception as exc:
            reason = getattr(exc, "reason", "") or R.TUF_ERROR
            return {**base, "state": G.REFUSED, "reason": reason, "message": f"candidate download: {exc}"[:1024]}
        M_BYTES.inc(downloaded)
        targets = [TargetRecord(t, fetched[t].digest, int(fetched[t].length), bool(getattr(fetched[t], "encrypted",
                                                                                            False)))
                   for t in part["targets"]]
        probe = fetched.get(part["probe_target"]) if part.get("probe_target") else None
        digest = targets[0].digest if targets else ""
        rec["digest"] = digest
        rec["digests"] = [t.digest for t in targets] + ([probe.digest] if probe is not None else [])
        now = agent.clock()
        blocker = blocking_failure(agent.journal.failures, p.commit, name, digest, now)
        if blocker is not None:
            return {**base, "state": G.FAILED, "reason": R.reason_of(blocker.reason) or R.HEALTH_CHECK_FAILED,
                    "message": f"{blocker.reason} (held back until {blocker.retry_after})"[:1024]}
        estimate = round(estimate_mb(sum(t.length for t in targets), str(part.get("runtime"))), 1)
        room = read_room(self.reserve_mb, self.max_memory_mb)
        why = refusal(estimate, room)
        if why is not None:
            log.warning("shadow candidate refused", extra=fields(endpoint=name, version=part["version"], reason=why))
            return {**base, "state": G.REFUSED, "reason": R.SHADOW_NO_MEMORY, "message": why,
                    "estimatedMemoryMB": estimate}
        spec = (agent.journal.endpoints.get(name).active.spec if agent.journal.endpoints.get(name) is not None
                and agent.journal.endpoints[name].active is not None else {})
        try:
            blobs = [c._blob(t) for t in targets]
            probe_doc = None
            if probe is not None:
                import json

                probe_doc = json.loads(c._blob(TargetRecord(part["probe_target"], probe.digest, int(probe.length))))
        except Exception as exc:
            return {**base, "state": G.REFUSED, "reason": R.ARTIFACT_UNREADABLE, "message": str(exc)[:1024]}
        backend, reason, message = CandidateProcess.start(part, blobs, probe_doc, spec, self.cache_dir)
        if backend is None:
            agent.journal.failures = record_failure(agent.journal.failures, p.commit, name, digest, part["version"],
                                                    f"{reason}: {message}", now)
            rec["final"] = {"state": G.FAILED, "reason": reason, "message": message[:1024]}
            log.warning("shadow candidate failed its check", extra=fields(endpoint=name, version=part["version"],
                                                                          reason=reason, message=message))
            return {**base, **rec["final"]}
        memory = backend.memory_mb
        after = refusal(memory, room, measured=True)
        if after is not None:
            backend.close()
            return {**base, "state": G.REFUSED, "reason": R.SHADOW_NO_MEMORY, "message": after,
                    "estimatedMemoryMB": estimate, "memoryMB": memory}
        started = C.parse_time(rec["startedAt"])
        clock = agent.clock
        # the request path only copies samples into the ring: running and comparing are the idle process's
        mirror = RingMirror(name, live_version, part["version"], settings, backend,
                            elapsed=lambda: (clock() - started).total_seconds(), on_verdict=lambda _v: self._poke())
        run = _Run(list(rec["key"]), mirror, backend, settings, memory, estimate)
        self.runs[name] = run
        self.mirrors = {**self.mirrors, name: mirror}
        log.info("shadow comparison started", extra=fields(endpoint=name, version=part["version"],
                                                           live=live_version, memory_mb=memory))
        return run

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake()

    def _reported(self, name: str, section: dict[str, Any]) -> dict[str, Any]:
        """The section as the status shows it: numbers refreshed at most every REPORT_INTERVAL."""
        rep = self.reports.get(name)
        mono = time.monotonic()
        head = ("version", "state", "reason", "stopped", "step")
        if rep is None or any(rep.section.get(k) != section.get(k) for k in head) or mono - rep.at >= REPORT_INTERVAL:
            rep = self.reports[name] = _Report(section, mono)
        return rep.section

    def _stop(self, name: str) -> None:
        run = self.runs.pop(name, None)
        if name in self.mirrors:
            self.mirrors = {k: v for k, v in self.mirrors.items() if k != name}
        if run is not None:
            run.mirror.stop(timeout=0)  # its watcher waits for the socket's end: closing the process ends it
            with contextlib.suppress(Exception):
                run.backend.close()

    def close(self) -> None:
        for name in list(self.runs):
            self._stop(name)
        _LIVE.discard(self)


def shadow_pass(agent: Any, p: Any, endpoints: list[dict[str, Any]]) -> None:
    """The agent's shadow step, once per pass (see the module docstring); a no-op without a supervisor."""
    sup = getattr(agent.c, "shadow", None)
    if sup is None:
        return
    try:
        sup.sync(agent, p, endpoints)
    except Exception:  # shadow evaluation must never break the pass that keeps the device serving
        log.exception("shadow pass failed")


def shadow_digests(journal: Any) -> set[tuple[str, str]]:
    """(endpoint, candidate digest) pairs whose failures the failure memory keeps while the shadow lasts."""
    return {(name, str(r["digest"])) for name, r in journal.shadows.items() if r.get("digest")}


# -- /metrics ----------------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[ShadowSupervisor] = weakref.WeakSet()


class _Collector:
    """``modelfleet_shadow_*``: read from the running comparisons at scrape time (nothing per request)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        labels = ["endpoint", "candidate"]
        counters = {k: CounterMetricFamily(f"modelfleet_shadow_{n}", h, labels=labels) for k, n, h in (
            ("samples", "samples", "Rows the shadow candidate's answers were compared on."),
            ("agreed", "agreed_samples", "Compared rows on which the shadow candidate agreed."),
            ("requests", "requests", "Mirrored requests the shadow candidate ran."),
            ("offered", "offered_requests", "Live requests the shadow mirror saw (requests / offered: the share "
                                            "the candidate ran)."),
            ("dropped", "dropped_requests", "Sampled requests dropped because the shadow queue was full."),
            ("errors", "errors", "Mirrored requests on which the shadow candidate raised."),
            ("nanOutputs", "nan_outputs", "Rows where the shadow candidate returned NaN/Inf and the serving "
                                          "version did not."))}
        agreement = GaugeMetricFamily("modelfleet_shadow_agreement_ratio",
                                      "Share of compared rows on which the shadow candidate agreed.", labels=labels)
        latency = GaugeMetricFamily("modelfleet_shadow_latency_seconds", "Inference latency percentiles of the last "
                                    "1024 mirrored requests: the candidate's and the serving version's.",
                                    labels=[*labels, "model", "quantile"])
        memory = GaugeMetricFamily("modelfleet_shadow_memory_bytes", "Measured memory of the shadow candidate: "
                                   "the RSS of its own process.", labels=labels)
        state = GaugeMetricFamily("modelfleet_shadow_state", "1 for the shadow comparison's current state.",
                                  labels=[*labels, "state"])
        for sup in list(_LIVE):
            for name, run in list(sup.runs.items()):
                cand = run.mirror.candidate_version
                snap = run.mirror.snapshot()
                for key, fam in counters.items():
                    fam.add_metric([name, cand], float(snap.get(key) or 0))
                if snap.get("agreement") is not None:
                    agreement.add_metric([name, cand], float(snap["agreement"]) / 100.0)
                lat = snap.get("latencyMs") or {}
                for which, q, k in (("candidate", "0.5", "p50"), ("candidate", "0.99", "p99"),
                                    ("live", "0.5", "liveP50"), ("live", "0.99", "liveP99")):
                    if lat.get(k) is not None:
                        latency.add_metric([name, cand, which, q], float(lat[k]) / 1000.0)
                if run.memory_mb is not None:
                    memory.add_metric([name, cand], run.memory_mb * (1 << 20))
                state.add_metric([name, cand, run.mirror.verdict.state], 1.0)
        yield from counters.values()
        yield from (agreement, latency, memory, state)


with contextlib.suppress(ValueError):  # registered once per process
    REGISTRY.register(_Collector())  # type: ignore[arg-type]
