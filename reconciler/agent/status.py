"""The agent's status side: per-endpoint status, the final conditions, the attempt history, the
DeviceStatus document (schemas/devicestatus.schema.json) and the endpoint metrics.

A mixin of :class:`reconciler.agent.loop.Agent` (moved out of ``loop.py`` to keep it small); it reads the
agent's journal, conditions, outcomes and components and writes nothing but the status file, the journal and
the status submission.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
from collections.abc import Callable
from typing import Any

from reconciler import __version__
from reconciler.agent.config import AgentConfig
from reconciler.agent.journal import EndpointRecord, Journal
from reconciler.agent.metrics import M_ENDPOINT, M_ROLLBACKS, label_sets, track_endpoint
from reconciler.agent.passes import EndpointOutcome, PassResult, PassState
from reconciler.core import conditions as C
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.logs import fields
from reconciler.core.redact import redact_tree
from reconciler.gitops.statuswriter import reporting_block, reporting_condition

log = logging.getLogger("reconciler.agent")


class StatusMixin:
    """Status building for :class:`~reconciler.agent.loop.Agent` (the attributes below are the agent's)."""

    config: AgentConfig
    clock: Callable[[], _dt.datetime]
    c: Any
    conditions: C.ConditionSet
    journal: Journal
    facts: dict[str, Any]
    errors: int
    last_result: PassResult | None
    _outcomes: dict[str, EndpointOutcome]

    # -- status -----------------------------------------------------------------------------------------------

    def _status_endpoints(self, p: PassState) -> list[dict[str, Any]]:
        if not p.skip_rest:
            # Outcomes of this pass; endpoints it did not reach keep their last outcome.
            merged = dict(self._outcomes)
            merged.update(p.outcomes)
            self._outcomes = {k: v for k, v in merged.items() if v.state != "Removed" or k in p.outcomes}
        out = []
        names = set(self.journal.endpoints) | set(self._outcomes)
        for name in sorted(names):
            st = self.journal.endpoints.get(name)
            active = st.active if st else None
            prev = st.previous if st else None
            o = self._outcomes.get(name)
            state = o.state if o else ("Serving" if active else "Pending")
            e: dict[str, Any] = {"name": name, "state": state}
            if active is not None:
                e.update(deployment=active.deployment, model=active.model, version=active.version,
                         variant=active.variant, runtime=active.runtime, digest=active.digest,
                         precision=active.spec.get("precision") or "fp32",
                         effectivePrecision=self._effective_precision(active))
            else:
                e.update(version=None, variant=None, runtime=None, digest=None, precision=None,
                         effectivePrecision=None)
            e["desiredVersion"] = o.desired_version if o else (active.version if active else None)
            e["previousVersion"] = prev.version if prev else None
            if o and o.message:
                e["message"] = o.message[:1024]
            out.append(e)
        return out

    @staticmethod
    def _is_converged(endpoints: list[dict[str, Any]]) -> bool:
        return all(e["state"] in ("Serving", "Suspended", "Removed") for e in endpoints)

    def _finish_conditions(self, p: PassState, failed: tuple[str, str] | None, converged: bool) -> None:
        if converged:
            self.conditions.set(C.READY, True, "Converged", f"serving the desired state of {(p.commit or '')[:12]}",
                                p.commit)
            self.conditions.set(C.RECONCILING, False, "Idle", "", p.commit)
            self.conditions.set(C.STALLED, False, "Progressing", "", p.commit)
        else:
            why = failed[1] if failed else "endpoints not at their desired version"
            self.conditions.set(C.READY, False, "NotConverged", why[:2048], p.commit)
            self.conditions.set(C.RECONCILING, True, "RetryScheduled", "", p.commit)
            stalled = failed is not None and self.errors >= 3
            self.conditions.set(C.STALLED, stalled, "RepeatedFailures" if stalled else "Progressing",
                                # no count in the message: it would change the status on every retry
                                "3 or more consecutive failed passes" if stalled else "", p.commit)
        self.journal.conditions = self.conditions.to_list()

    def _record_attempt(self, p: PassState, failed: tuple[str, str] | None, duration: float) -> None:
        result = "Failed" if failed else ("Succeeded" if p.changed or p.force else "NoChange")
        att: dict[str, Any] = {"time": C.isoformat(self.clock()), "commit": p.commit, "result": result,
                               "durationMs": round(duration * 1000, 1)}
        if failed:
            att["step"], att["message"] = failed[0], failed[1][:1024]
        last = self.journal.attempts[0] if self.journal.attempts else {}
        if result != "Succeeded" and all(last.get(k) == att.get(k) for k in ("commit", "result", "step", "message")):
            return  # the same outcome again: recorded once, so a repeated failure does not rewrite the status
        self.journal.add_attempt(att)

    def status_document(self, endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """This device's DeviceStatus (schemas/devicestatus.schema.json)."""
        if endpoints is None:
            endpoints = self.last_result.endpoints if self.last_result else []
        status: dict[str, Any] = {
            "agentVersion": __version__,
            "appliedCommit": self.journal.applied_commit,
            "attemptedCommit": self.journal.attempted_commit,
            "heartbeat": C.isoformat(self.clock()),
            "conditions": self.conditions.to_list(),
            "endpoints": endpoints,
            "facts": self.facts,
            "labels": getattr(self, "_labels", dict(self.config.labels)),
            "failures": [f.to_status() for f in self.journal.failures],
            "attempts": self.journal.attempts[:5], **self.c.capture_section(endpoints),
        }
        return {"apiVersion": "modelfleet/v1", "kind": "DeviceStatus",
                "metadata": {"name": self.config.device_id}, "status": status}

    def _report(self, p: PassState, endpoints: list[dict[str, Any]]) -> None:
        rep = getattr(self.c, "status_reporting", lambda: None)()
        if rep is not None and (cond := reporting_condition(rep)) is not None:
            self.conditions.set(C.STATUS_REPORTED, *cond)
        doc = self.status_document(endpoints)
        if rep is not None:
            doc["status"]["reporting"] = reporting_block(rep)
        # Whatever a message quotes (a URL from a manifest, a server's error) reaches status.json, `agent status`
        # and the status commits only redacted: the last line of defence behind the config check.
        doc = redact_tree(doc)
        if not p.skip_rest:
            self.journal.save(self.config.state_dir)
        try:
            # Rewritten on every pass from the journal: atomic, but not worth an fsync per pass.
            atomic_write_text(self.config.status_file, json.dumps(doc, indent=1) + "\n", durable=False)
        except OSError as exc:
            log.warning("cannot write local status", extra=fields(error=str(exc)))
        self.c.submit_status(doc)

    # -- metrics ----------------------------------------------------------------------------------------------

    def _effective_precision(self, rec: EndpointRecord) -> str | None:
        """What the runtime computes ``rec`` in, as read back when it was loaded (None: not loaded here)."""
        read = getattr(self.c, "effective_precision", None)
        return read(rec.name, rec.version, rec.spec.get("precision") or "fp32") if read is not None else None

    def _set_endpoint_metric(self, rec: EndpointRecord) -> None:
        self._clear_endpoint_metric(rec.name)
        track_endpoint(rec.name)
        # The precision label is the one the model computes in (the declared one when nothing was read back).
        M_ENDPOINT.labels(rec.name, rec.model, rec.version, rec.variant, rec.runtime,
                          self._effective_precision(rec) or rec.spec.get("precision") or "fp32").set(1)

    def _clear_endpoint_metric(self, name: str, *, pruned: bool = False) -> None:
        if pruned:
            with contextlib.suppress(KeyError):
                M_ROLLBACKS.remove(name)
        for labels in list(label_sets(M_ENDPOINT)):
            if labels[0] == name:
                with contextlib.suppress(KeyError):
                    M_ENDPOINT.remove(*labels)

