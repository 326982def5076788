"""The device agent: serve the last good models, then reconcile the fleet's desired state, forever.

Workflow (``Agent.run``):

1. **Boot, offline first.** Take the state-dir lock, load the journal, start the inference server and load every
   endpoint's last good version from the local store (blobs re-hashed before load; a corrupt one is quarantined
   and the previous version used) — all before any network access. Then ``READY=1`` to systemd.
2. **Reconcile passes**, each a fixed sequence of named steps that record a condition instead of throwing:
   ``source`` (poll + verify the Git commit) → ``manifests`` (load, validate) → ``desired`` (this device's
   endpoints) → ``artifacts`` (TUF download into the store) → ``apply`` (health-checked swap, rollback,
   maintenance windows, pruning) → ``report`` (journal, local status, status branch, metrics). A failed step
   skips the steps after it (``report`` always runs), so the device keeps its last good state; a step that
   failed for some endpoints only (``StepFailed(partial=True)``) lets the others go on.
   A target that fails verification and a version that fails its health check go into the failure memory
   (:mod:`reconciler.agent.journal`): not downloaded or loaded again before a new desired state or the backoff;
   while only such failures are pending, passes are idle and the status does not change.
3. **Scheduling.** The poll interval (agent config, else Fleet defaults, else 30 s) with ±10 % jitter;
   exponential backoff on errors; an immediate pass on SIGHUP (``modelfleet agent reconcile``) or when a git
   bundle lands. SIGTERM/SIGINT stop cleanly.

The journal is saved atomically after every change, so ``kill -9`` at any point restarts into a complete,
verified model (the old or the new one) and converges again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.agent.config import DEFAULT_POLL_INTERVAL, AgentConfig
from reconciler.agent.journal import (
    EndpointRecord,
    Journal,
    JournalError,
    TargetRecord,
    blocking_failure,
    clear_failures,
    prune_failures,
    record_failure,
)
from reconciler.agent.metrics import (
    M_APPLIED,
    M_BYTES,
    M_LAST_SUCCESS,
    M_PASS_SECONDS,
    M_PASSES,
    M_POLLS,
    M_ROLLBACKS,
    M_STEPS,
    record_identity,
    record_pass,
)
from reconciler.agent.passes import (
    EndpointOutcome,
    PassResult,
    PassState,
    StepFailed,
    applied_reason,
    held_message,
)
from reconciler.agent.schedule import longest_delay, merged_labels, next_delay, summarize, window_open
from reconciler.agent.shadowing import shadow_digests, shadow_pass
from reconciler.agent.status import StatusMixin
from reconciler.agent.wiring import Components, monitor_pass
from reconciler.core import conditions as C, reasons as R
from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.logs import fields
from reconciler.drift.settings import pin_reason

log = logging.getLogger("reconciler.agent")

STEPS = ("source", "manifests", "desired", "artifacts", "apply", "report")

# --- the agent ----------------------------------------------------------------------------------------------


class Agent(StatusMixin):
    """One device's agent. ``components`` overrides the real source/TUF/runtime parts (see ``Components``)."""

    def __init__(self, config: AgentConfig, components: Components | None = None,
                 clock: Callable[[], _dt.datetime] = C.utcnow) -> None:
        from reconciler.agent.sdnotify import Notifier

        self.config = config
        self.clock = clock
        self.c = components or Components.real(config)
        self.notifier = Notifier()
        self.conditions = C.ConditionSet(clock=clock)
        self.journal = Journal()
        self.facts: dict[str, Any] = {}
        self.poll_interval = config.poll_interval or DEFAULT_POLL_INTERVAL
        self.errors = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._settled_commit: str | None = None  # last commit whose pass left nothing to retry before a deadline
        self._bad_commit: tuple[str, str, str, str] | None = None
        self._pending_bundle: Any = None
        self._outcomes: dict[str, EndpointOutcome] = {}
        self._issues: list[Any] = []
        self._last_progress = time.monotonic()
        self._rand = random.Random()
        self.last_result: PassResult | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def boot(self) -> None:
        """Lock the state dir, load the journal and serve the last good models; no network access."""
        sd = self.config.state_dir
        try:
            sd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create state dir {sd}: {exc}") from None
        self._lock_fd = os.open(sd / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise UserError(f"another agent is running on state dir {sd}") from None
        try:
            self.journal = Journal.load(sd)
        except JournalError as exc:
            # Cannot happen through our atomic writes; keep the file for inspection and start empty.
            bad = Journal.path_in(sd).with_suffix(".corrupt")
            os.replace(Journal.path_in(sd), bad)
            log.error("journal unreadable, moved aside", extra=fields(path=str(bad), error=str(exc)))
            self.journal = Journal()
        if self.journal.conditions:
            self.conditions = C.ConditionSet.from_list(self.journal.conditions, self.clock)
        record_identity(self.config.device_id, __version__)
        self.c.start_runtime()
        log.info("serving", extra=fields(url=self.c.url))
        restored = self._restore_last_good()
        self.conditions.set(C.RECONCILING, True, "Starting", "serving last good models; reconciling")
        status = f"serving {restored} endpoint(s) from the local store"
        log.info("booted", extra=fields(endpoints=restored, commit=self.journal.applied_commit or "-"))
        self.notifier.ready(status)
        self.facts = self.c.detect_facts()  # local only; after READY so serving never waits for it
        self.c.release_memory()

    def _restore_last_good(self) -> int:
        n = 0
        for name, st in sorted(self.journal.endpoints.items()):
            for rec, which in ((st.active, "active"), (st.previous, "previous")):
                if rec is None:
                    continue
                ok, reason, message = self.c.load_endpoint(rec, self.config, boot=True)
                if ok:
                    if which == "previous":
                        st.active, st.previous = st.previous, None
                        self.journal.save(self.config.state_dir)
                    log.info("restored", extra=fields(endpoint=name, version=rec.version, which=which))
                    self._set_endpoint_metric(rec)
                    n += 1
                    break
                log.warning("cannot restore", extra=fields(endpoint=name, version=rec.version, reason=reason,
                                                           message=message))
        return n

    def close(self) -> None:
        self.notifier.stopping()
        with contextlib.suppress(Exception):
            self.c.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self.config.pid_file.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def request_reconcile(self) -> None:
        """Wake the loop for an immediate pass (thread and signal safe)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, install_signals: bool = True) -> None:
        """Boot, then reconcile until stopped."""
        if install_signals:  # before boot: a SIGTERM while models load still stops cleanly
            signal.signal(signal.SIGHUP, lambda *_: self.request_reconcile())
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        self.boot()
        atomic_write_text(self.config.pid_file, f"{os.getpid()}\n")
        self.c.watch_bundles(self._on_bundle)
        pinger = threading.Thread(target=self._watchdog_loop, name="watchdog", daemon=True)
        pinger.start()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                result = self.reconcile_once()
                del result
                self._wake.wait(next_delay(self.poll_interval, self.errors, self._rand.random()))
        finally:
            log.info("stopping")
            self.close()

    def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not self._stop.wait(interval):
            if self.alive():
                self.notifier.watchdog()

    def alive(self) -> bool:
        """Whether the loop made progress recently; a pass stuck past the stall limit stops the watchdog pings
        and systemd restarts us. Long downloads make progress at every target, and a TUF request in flight
        counts until its deadline (it ends by then whatever the server does): a slow mirror is reported
        as ``SlowRetrieval``, not answered by restarting into the same download."""
        stall_limit = max(600.0, 4 * (self.config.tuf_timeout + self.config.source_timeout))
        busy = self.c.tuf_busy_until()
        return time.monotonic() - max(self._last_progress, busy or 0.0) < stall_limit

    def _on_bundle(self, path: Path) -> None:
        """A git bundle landed (air-gapped update): its verified head drives the next pass."""
        try:
            res = self.c.import_bundle(path, self.journal.attempted_commit)
        except Exception as exc:  # a bad bundle is reported, never fatal
            log.warning("bundle rejected", extra=fields(path=str(path), error=str(exc)))
            return
        log.info("bundle imported", extra=fields(path=str(path), commit=getattr(res, "commit", None) or "-",
                                                 reason=getattr(res, "reason", "")))
        self._pending_bundle = res
        self.request_reconcile()

    # -- one pass ---------------------------------------------------------------------------------------------

    def reconcile_once(self, force: bool = False) -> PassResult:
        t0 = time.monotonic()
        p = PassState(force=force)
        failed: tuple[str, str] | None = None
        stop = False
        all_held = True
        for step in STEPS:
            self._last_progress = time.monotonic()
            if step != "report" and (stop or p.skip_rest):
                continue
            try:
                getattr(self, f"_step_{step}")(p)
                M_STEPS.labels(step, "ok").inc()
            except StepFailed as exc:
                M_STEPS.labels(step, "failed").inc()
                self.conditions.set(exc.condition, False, exc.reason, exc.message, p.commit)
                failed = failed or (step, f"{exc.reason}: {exc.message}")
                stop, all_held = stop or not exc.partial, all_held and exc.held
                log.warning("step failed", extra=fields(step=step, reason=exc.reason, message=exc.message))
            except Exception as exc:
                M_STEPS.labels(step, "failed").inc()
                log.exception("step crashed", extra=fields(step=step))
                cond = {"source": C.SOURCE_AVAILABLE, "manifests": C.MANIFESTS_VALID,
                        "artifacts": C.ARTIFACTS_READY}.get(step, C.APPLIED)
                self.conditions.set(cond, False, R.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", p.commit)
                failed, stop, all_held = failed or (step, f"{R.INTERNAL_ERROR}: {exc}"), True, False
        duration = time.monotonic() - t0
        endpoints = self._status_endpoints(p)
        monitor_pass(self, p.commit, endpoints)  # drift + operational signals, DriftDetected/Degraded, drift rollback
        converged = failed is None and self._is_converged(endpoints)
        if not p.skip_rest:  # an idle pass changes nothing: errors, conditions and status stay as they were
            self.errors = 0 if failed is None else self.errors + 1
            self._finish_conditions(p, failed, converged)
            self._settled_commit = p.commit if all_held else None
        if converged:
            M_LAST_SUCCESS.set(time.time())
        result = PassResult(p.commit, converged, failed[0] if failed else None, failed[1] if failed else "",
                            p.changed, duration, endpoints)
        if not p.skip_rest or failed:
            self._record_attempt(p, failed, duration)
        shadow_pass(self, p, endpoints)  # candidates beside the serving versions (reconciler.agent.shadowing)
        self._report(p, endpoints)
        M_PASSES.labels("converged" if converged else ("failed" if failed else "pending")).inc()
        M_PASS_SECONDS.observe(duration)
        record_pass(converged, time.time(), longest_delay(self.poll_interval))
        self.notifier.status(summarize(endpoints, failed[0] if failed else None))
        self.last_result = result
        if not p.skip_rest:
            self.c.release_memory()
        return result

    # -- steps ------------------------------------------------------------------------------------------------

    def _step_source(self, p: PassState) -> None:
        last = self.journal.attempted_commit
        bundle, self._pending_bundle = self._pending_bundle, None
        try:
            poll = bundle if bundle is not None else self.c.poll(last)
        except Exception as exc:
            M_POLLS.labels("error").inc()
            raise StepFailed(C.SOURCE_AVAILABLE, R.SOURCE_UNAVAILABLE, str(exc)) from None
        p.poll = poll
        conds = {}
        for cond in getattr(poll, "conditions", None) or []:
            d = cond.to_dict() if hasattr(cond, "to_dict") else dict(cond)
            conds[d["type"]] = d
            self.conditions.set(d["type"], d["status"], d.get("reason", ""), d.get("message", ""),
                                d.get("observedCommit") or poll.commit)
        # A refused or unreachable head leaves the device on the last commit it accepted (poll.commit is then
        # that commit): the step fails and nothing after it runs.
        for ctype in (C.SOURCE_AVAILABLE, C.SOURCE_VERIFIED):
            d = conds.get(ctype)
            if d is not None and d["status"] == "False":
                M_POLLS.labels("failed").inc()
                raise StepFailed(ctype, d.get("reason") or R.SOURCE_UNAVAILABLE, d.get("message") or poll.message)
        if poll.commit is None:
            M_POLLS.labels("failed").inc()
            raise StepFailed(C.SOURCE_AVAILABLE, getattr(poll, "reason", "") or R.SOURCE_UNAVAILABLE,
                             getattr(poll, "message", "") or "no commit available from the fleet repository")
        M_POLLS.labels("changed" if poll.changed else "unchanged").inc()
        p.commit = poll.commit
        p.changed = poll.commit != last
        if self._bad_commit is not None and self._bad_commit[0] == p.commit and not p.force:
            _, cond, reason, message = self._bad_commit
            raise StepFailed(cond, reason, message)  # the same invalid commit: no need to read it again
        if not p.changed and not p.force and self._settled_commit == poll.commit and not self._due_retry():
            p.skip_rest = True  # idle: nothing new, nothing pending, failures held back

    def _due_retry(self) -> bool:
        """Something pending may progress now (a failure's backoff ran out, a window opened)."""
        now = self.clock()
        return any(o.state in ("Waiting", "Pending", "Downloading") or (o.state == "Failed" and (
            o.held_until is None or now >= C.parse_time(o.held_until))) for o in self._outcomes.values())

    def _step_manifests(self, p: PassState) -> None:
        assert p.commit is not None
        try:
            p.load = self.c.load_manifests(p.commit)
        except Exception as exc:
            raise StepFailed(C.MANIFESTS_VALID, R.READ_FAILED, f"cannot read commit {p.commit[:12]}: {exc}") from None
        if not p.load.ok:
            errs = p.load.errors
            msg = "; ".join(f"{d.file}:{d.line}: {d.message}" for d in errs[:3])
            if len(errs) > 3:
                msg += f" (and {len(errs) - 3} more)"
            self._bad_commit = (p.commit, C.MANIFESTS_VALID, R.VALIDATION_FAILED, msg)
            raise StepFailed(C.MANIFESTS_VALID, R.VALIDATION_FAILED, msg)
        self._bad_commit = None
        warns = p.load.warnings
        for d in warns[:20]:
            log.warning("manifest warning", extra=fields(file=d.file, line=d.line, message=d.message))
        note = "; ".join(f"{d.file}:{d.line}: warning: {d.message}" for d in warns[:3])
        self.conditions.set(C.MANIFESTS_VALID, True, "Valid", f"{p.load.files} manifest file(s) valid"
                            + (f"; {len(warns)} warning(s): {note}" if warns else ""), p.commit)

    def _step_desired(self, p: PassState) -> None:
        from reconciler.fleet.desired import DeviceIdentity, desired_state

        fleet = p.load.fleet
        dev = fleet.devices.get(self.config.device_id)
        labels = merged_labels(dev.labels if dev is not None else {}, self.config.labels)
        p.desired = desired_state(fleet, DeviceIdentity(self.config.device_id, labels), self.facts,
                                  agreed=self.journal.shadow_agreed())
        self._labels = labels
        defaults = fleet.fleet_spec.get("defaults") or {}
        if self.config.poll_interval is None and defaults.get("pollInterval"):
            from reconciler.core.units import parse_duration

            self.poll_interval = parse_duration(defaults["pollInterval"])
        self.c.configure_status(
            self.config.status_branch_prefix or (fleet.fleet_spec.get("status") or {}).get("branchPrefix") or "status/",
            self.config.heartbeat_interval or _duration_or(defaults.get("heartbeatInterval"), 300.0))
        self._issues = list(p.desired.issues)
        for issue in p.desired.issues:
            p.outcomes[issue.endpoint] = EndpointOutcome(issue.endpoint, "Failed", f"{issue.reason}: {issue.message}")

    def _step_artifacts(self, p: PassState) -> None:
        fleet_tuf = p.load.fleet.fleet_spec.get("tuf") or {}
        try:
            self.c.tuf_refresh(self.config.tuf_metadata_url or fleet_tuf.get("metadataUrl", ""),
                               self.config.tuf_targets_url or fleet_tuf.get("targetsUrl", ""))
        except Exception as exc:
            raise StepFailed(C.ARTIFACTS_READY, getattr(exc, "reason", "") or R.TUF_ERROR, str(exc)) from None
        now = self.clock()
        for name, ep in sorted(p.desired.endpoints.items()):
            if ep.suspend:
                continue
            paths = list(ep.targets) + [t for t in (ep.probe_target, ep.drift_target) if t]
            # What the signed metadata says these targets are: a changed target (or a commit) is retried at once.
            key = p.artifact_keys[name] = self.c.tuf_fingerprint(paths)
            blocker = blocking_failure(self.journal.failures, p.commit, name, key, now)
            if blocker is not None:
                p.artifact_failed[name] = R.reason_of(blocker.reason) or R.TUF_ERROR
                p.outcomes[name] = EndpointOutcome(name, "Failed", held_message(ep.version, blocker.reason,
                                                   blocker.retry_after), ep.version, blocker.retry_after)
                continue
            try:
                fetched, downloaded = self.c.tuf_fetch(paths)
            except Exception as exc:
                reason = getattr(exc, "reason", "") or R.TUF_ERROR
                held = None
                if reason in R.HELD_BACK_ARTIFACT_REASONS:  # the server serves bad bytes: do not fetch them again
                    self.journal.failures = record_failure(self.journal.failures, p.commit, name, key, ep.version,
                                                           f"{reason}: {exc}", now)
                    held = self.journal.failures[0].retry_after
                msg = held_message(ep.version, f"{reason}: {exc}", held) if held else f"{reason}: {exc}"
                p.artifact_failed[name] = reason
                p.outcomes[name] = EndpointOutcome(name, "Failed", msg[:1024], ep.version, held)
                continue
            M_BYTES.inc(downloaded)
            p.fetched[name] = fetched
            self._last_progress = time.monotonic()
        if p.artifact_failed:
            first = sorted(p.artifact_failed)[0]
            msgs = [f"{n}: {p.outcomes[n].message}" for n in sorted(p.artifact_failed)]
            raise StepFailed(C.ARTIFACTS_READY, p.artifact_failed[first], "; ".join(msgs)[:2048], partial=True,
                             held=all(p.outcomes[n].held_until for n in p.artifact_failed))
        note = self.c.tuf_note()
        self.conditions.set(C.ARTIFACTS_READY, True, "Downloaded",
                            "all targets verified in the store" + (f", {note}" if note else ""), p.commit)

    def _record_for(self, p: PassState, ep: Any) -> EndpointRecord:
        fetched = p.fetched[ep.name]

        def rec(path: str) -> TargetRecord:
            t = fetched[path]
            return TargetRecord(path, t.digest, int(t.length), bool(getattr(t, "encrypted", False)))

        return EndpointRecord(
            name=ep.name, deployment=ep.deployment, model=ep.model, version=ep.version, variant=ep.variant,
            runtime=ep.runtime, targets=[rec(x) for x in ep.targets], commit=p.commit,
            probe=rec(ep.probe_target) if ep.probe_target else None,
            spec={k: v for k, v in ep.to_dict().items() if k not in ("targets", "reason")}
            | ({"driftBaselineTarget": rec(ep.drift_target).__dict__} if ep.drift_target else {}),
        )

    def _step_apply(self, p: PassState) -> None:
        now = self.clock()
        desired = p.desired
        held = desired.held_endpoints()
        dirty = False
        failures: dict[str, tuple[str, bool]] = {}  # endpoint → (Applied reason, held back)
        # the serving versions' drift verdicts, from the last pass's status (drift.action: pin)
        last_seen = {e["name"]: e for e in (self.last_result.endpoints if self.last_result else [])}
        for name, ep in sorted(desired.endpoints.items()):
            st = self.journal.endpoints.get(name)
            active = st.active if st else None
            if ep.suspend:
                p.outcomes[name] = EndpointOutcome(name, "Suspended", "deployment suspended: no change", ep.version)
                continue
            if name not in p.fetched:
                continue  # artifacts failed: outcome already recorded, last good stays
            rec = self._record_for(p, ep)
            if active is not None and self._same_build(active, rec):
                if active.commit != p.commit or active.spec != rec.spec:
                    active.commit, active.spec = p.commit, rec.spec
                    dirty = True
                p.outcomes[name] = EndpointOutcome(name, "Serving", "", ep.version)
                continue
            blocker = blocking_failure(self.journal.failures, p.commit, name, rec.digest, now)
            if blocker is not None:
                p.outcomes[name] = EndpointOutcome(name, "Failed", held_message(
                    ep.version, blocker.reason, blocker.retry_after), ep.version, blocker.retry_after)
                failures[name] = (applied_reason(R.reason_of(blocker.reason)), True)
                continue
            pinned = pin_reason(last_seen.get(name) if active is not None else None, ep.drift.get("action"))
            if pinned is not None and last_seen[name].get("version") == active.version:
                p.outcomes[name] = EndpointOutcome(name, "Waiting", pinned[:1024], ep.version)
                continue
            if not window_open(ep.maintenance_window, now):
                p.outcomes[name] = EndpointOutcome(
                    name, "Waiting", f"version {ep.version} downloaded; waiting for the maintenance window",
                    ep.version)
                continue
            self._last_progress = time.monotonic()
            ok, reason, message = self.c.load_endpoint(rec, self.config, boot=False)
            if ok:
                self.journal.record_active(rec)
                self.journal.failures = clear_failures(self.journal.failures, name)
                self.journal.save(self.config.state_dir)  # the swap is durable before we report it
                self._set_endpoint_metric(rec)
                log.info("applied", extra=fields(endpoint=name, version=ep.version, variant=ep.variant,
                                                 commit=(p.commit or "")[:12]))
                p.outcomes[name] = EndpointOutcome(name, "Serving", "", ep.version)
            else:
                M_ROLLBACKS.labels(name).inc()
                held = None
                if reason != R.STORE_CORRUPTION:  # a corrupt blob is fetched again, not held back
                    self.journal.failures = record_failure(self.journal.failures, p.commit, name, rec.digest,
                                                           ep.version, f"{reason}: {message}", now)
                    held = self.journal.failures[0].retry_after
                dirty = True
                failures[name] = (applied_reason(reason), held is not None)
                log.warning("apply failed, kept last good", extra=fields(endpoint=name, version=ep.version,
                                                                        reason=reason, message=message))
                msg = held_message(ep.version, f"{reason}: {message}", held) if held else f"{reason}: {message}"
                p.outcomes[name] = EndpointOutcome(name, "Failed", msg[:1024], ep.version, held)
        # Pruning: only endpoints that the (fully validated) desired state no longer mentions at all.
        for name in sorted(set(self.journal.endpoints) | set(self.c.serving_endpoints())):
            if name in desired.endpoints or name in held:
                continue
            self.c.remove_endpoint(name)
            self.journal.endpoints.pop(name, None)
            self._clear_endpoint_metric(name, pruned=True)
            dirty = True
            log.info("pruned", extra=fields(endpoint=name))
            p.outcomes[name] = EndpointOutcome(name, "Removed", "no deployment gives this endpoint any more")
        desired_digests = dict(p.artifact_keys)  # a failed download is remembered under its targets' fingerprint
        desired_digests.update({n: self._record_for(p, e).digest for n, e in desired.endpoints.items()
                                if n in p.fetched})
        kept = prune_failures(self.journal.failures, desired_digests, shadow_digests(self.journal))
        if kept != self.journal.failures:
            self.journal.failures, dirty = kept, True
        self.journal.attempted_commit = p.commit
        if all(o.state in ("Serving", "Suspended", "Removed") for o in p.outcomes.values()) and not held:
            if self.journal.applied_commit != p.commit:
                self.journal.applied_commit = p.commit
                M_APPLIED.clear()
                M_APPLIED.labels(p.commit or "").set(1)
        self.journal.save(self.config.state_dir)
        del dirty
        self.c.gc(self.journal.referenced_digests() | self._fetched_digests(p))
        if failures:
            msgs = [f"{n}: {p.outcomes[n].message}" for n in sorted(failures)]
            raise StepFailed(C.APPLIED, failures[sorted(failures)[0]][0], "; ".join(msgs)[:2048], partial=True,
                             held=all(h for _, h in failures.values()))
        if p.artifact_failed:  # reported by the artifacts step; Applied says it is not applied, and why
            first = sorted(p.artifact_failed)[0]
            self.conditions.set(C.APPLIED, False, p.artifact_failed[first],
                                f"{', '.join(sorted(p.artifact_failed))}: not applied (artifacts not ready)", p.commit)
            return
        self.conditions.set(C.APPLIED, True, "Applied", f"desired state of {(p.commit or '')[:12]} applied", p.commit)

    @staticmethod
    def _same_build(a: EndpointRecord, b: EndpointRecord) -> bool:
        """Same files, runtime, precision and batching: nothing to apply (a precision change recompiles; a
        batching change is applied to the loaded version by the registry, which checks it against the model)."""
        return [t.digest for t in a.targets] == [t.digest for t in b.targets] and (
            (a.probe.digest if a.probe else None) == (b.probe.digest if b.probe else None)) and (
            a.runtime == b.runtime and (a.spec.get("precision") or "fp32") == (b.spec.get("precision") or "fp32")
            and (a.spec.get("batching") or None) == (b.spec.get("batching") or None))

    @staticmethod
    def _fetched_digests(p: PassState) -> set[str]:
        return {t.digest for f in p.fetched.values() for t in f.values()}

    def _step_report(self, p: PassState) -> None:
        """Runs in ``reconcile_once`` after the conditions are final (see ``_report``)."""


def _duration_or(text: str | None, default: float) -> float:
    from reconciler.core.units import parse_duration

    try:
        return parse_duration(text) if text else default
    except ValueError:
        return default
