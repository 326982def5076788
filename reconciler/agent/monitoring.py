"""The agent's monitoring step, run once per pass after the status endpoints are known (see
:mod:`reconciler.drift`): the endpoints get their ``drift``/``operational`` sections, the device its
``DriftDetected``/``Degraded`` conditions, and an endpoint whose drift is ``Alert`` under ``drift.action:
rollback`` goes back to its previous version, the drifting one held back in the failure memory."""

from __future__ import annotations

from typing import Any

from reconciler.agent.journal import record_rollback
from reconciler.agent.passes import EndpointOutcome


def monitor_pass(agent: Any, commit: str | None, endpoints: list[dict[str, Any]]) -> None:
    """``agent`` is the :class:`~reconciler.agent.loop.Agent` (its components, conditions, journal, outcomes)."""
    for ctype, *cond in agent.c.monitoring(agent.journal.endpoints, endpoints):
        agent.conditions.set(ctype, *cond, commit)
    for name, why in agent.c.drift_rollbacks(endpoints):
        bad = record_rollback(agent.journal, name, commit, why, agent.clock(), agent.config.state_dir)
        if bad is not None:
            agent._outcomes[name] = EndpointOutcome(name, "Failed", why[:1024], bad.version)
