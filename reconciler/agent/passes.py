"""One reconcile pass's bookkeeping: what each step found, the outcome per endpoint, how a step fails.

Pure data and pure helpers: :mod:`reconciler.agent.loop` runs the steps, these carry their results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.core import reasons as R


class StepFailed(Exception):
    """Raised inside a step: the step's condition goes False with this reason and message.

    ``partial``: only some endpoints failed, the later steps still run for the others. ``held``: every failure
    is held back by the failure memory, so nothing can progress before a new desired state or the backoff.
    """

    def __init__(self, condition: str, reason: str, message: str, *, partial: bool = False,
                 held: bool = False) -> None:
        super().__init__(message)
        self.condition = condition
        self.reason = reason
        self.message = message
        self.partial = partial
        self.held = held


@dataclass
class EndpointOutcome:
    name: str
    state: str
    message: str = ""
    desired_version: str | None = None
    held_until: str | None = None  # held back by the failure memory until then (or a new desired state)


@dataclass
class PassResult:
    commit: str | None
    converged: bool
    failed_step: str | None
    message: str
    changed: bool
    duration: float
    endpoints: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassState:
    force: bool
    commit: str | None = None
    poll: Any = None
    load: Any = None
    desired: Any = None
    fetched: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoint → {path: StoredTarget}
    artifact_keys: dict[str, str] = field(default_factory=dict)  # endpoint → fingerprint of its signed targets
    artifact_failed: dict[str, str] = field(default_factory=dict)  # endpoint → reason its artifacts failed
    outcomes: dict[str, EndpointOutcome] = field(default_factory=dict)
    changed: bool = False
    skip_rest: bool = False


def held_message(version: str, why: str, until: str | None) -> str:
    return f"version {version} failed ({why}); held back until {until} or a new desired state"


def applied_reason(reason: str) -> str:
    """The ``Applied`` condition's reason for an endpoint's failure (the detail stays in the message)."""
    return R.HEALTH_CHECK_FAILED if reason in R.HEALTH_REASONS or not reason else reason
