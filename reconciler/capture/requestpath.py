"""The request path of data capture: what a loaded model version's observer does per request (a draw, a
trigger), in as few steps as the common case allows; everything else happens on the capture service's writer.

:class:`CaptureObserver` is the registry's observer for one version; :class:`_Plan` is an endpoint's policy
reduced to what a request needs, precomputed when the policy is configured.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from reconciler.capture.policy import SAMPLED, CapturePolicy, capture_trigger, min_confidence
from reconciler.capture.sealer.rows import TRIGGER_CODE

_EMPTY: dict[str, np.ndarray] = {}
_monotonic = time.monotonic
_SAMPLED_CODE = TRIGGER_CODE[SAMPLED]


class _Plan:
    """What the request path needs of an endpoint's policy, precomputed at configure time."""

    __slots__ = ("policy", "rate", "sample_only", "outputs")

    def __init__(self, policy: CapturePolicy) -> None:
        self.policy = policy
        self.rate = policy.sample_rate
        # No lowConfidence or drift trigger: one random draw decides, nothing is looked at otherwise.
        self.sample_only = policy.low_confidence_below is None and not policy.on_drift
        self.outputs = policy.wants_outputs


class CaptureObserver:
    """One loaded model version's hook (the registry's observer protocol)."""

    __slots__ = ("service", "endpoint", "version", "model", "stream")

    def __init__(self, service: Any, endpoint: str, version: str, model: str) -> None:
        # service: the capture.service.CaptureService that owns this observer (not imported: it imports us)
        self.service = service
        self.endpoint = endpoint
        self.version = version
        self.model = model
        self.stream: Any = None  # the sealer process's ring this version's last record went to (the service's)

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        # request_id is not kept: a client-chosen id can identify a person, and retraining does not need it
        svc = self.service
        svc.last_request = _monotonic()
        plan = svc.plans.get(self.endpoint)
        if plan is None:
            return
        if plan.sample_only:  # the common case: one draw, nothing else unless this request is captured
            if svc.rand() < plan.rate:
                ring = self.stream  # (the sealer process's ring: one copy, done; else the service decides)
                if ring is None or ring.put(svc.clock(), _SAMPLED_CODE, feeds, outputs if plan.outputs else _EMPTY) != 1:
                    svc.offer(self, SAMPLED, feeds, outputs if plan.outputs else _EMPTY)
            return
        policy = plan.policy
        conf = (min_confidence(outputs, policy.low_confidence_output)
                if policy.low_confidence_below is not None else None)
        trigger = capture_trigger(policy, svc.rand(), confidence=conf, drifting=self.endpoint in svc.drifting)
        if trigger is not None:
            svc.offer(self, trigger, feeds, outputs if plan.outputs else _EMPTY)

    def observe_error(self, seconds: float) -> None:
        self.service.last_request = _monotonic()

    def observe_rejection(self) -> None:
        self.service.last_request = _monotonic()

    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """The decoded inputs of a request that failed validation (the ``rejected`` trigger)."""
        svc = self.service
        policy = svc.policies.get(self.endpoint)
        if policy is not None and inputs and capture_trigger(policy, 1.0, rejected=True):
            svc.offer(self, "rejected", inputs, _EMPTY)
