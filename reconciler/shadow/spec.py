"""A deployment's ``rollout.shadow`` section with its defaults (schemas/deployment.schema.json). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core.units import parse_duration

AFTER_GATE, ON_AGREEMENT = "afterGate", "onAgreement"
SWITCHES = (AFTER_GATE, ON_AGREEMENT)
METHODS = ("auto", "top1", "exact", "tolerance")

DEFAULT_SAMPLE_RATE = 0.1
DEFAULT_MIN_SAMPLES = 1000
DEFAULT_MAX_DURATION = 24 * 3600.0
DEFAULT_MIN_AGREEMENT = 99.0  # percent
DEFAULT_ATOL = 1e-2
DEFAULT_RTOL = 1e-2
#: Requests waiting for the shadow worker; more are dropped and counted (also at most QUEUE_BYTES of tensors).
DEFAULT_QUEUE = 64
QUEUE_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class CompareSettings:
    """How one candidate answer is compared with the live one (``rollout.shadow.compare``)."""

    output: str | None = None  # None: every output both answers have
    method: str = "auto"
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> CompareSettings:
        c = dict(section or {})
        method = str(c.get("method", "auto"))
        if method not in METHODS:
            raise ValueError(f"compare.method {method!r} is not one of {', '.join(METHODS)}")
        return cls(output=str(c["output"]) if c.get("output") else None, method=method,
                   atol=float(c.get("atol", DEFAULT_ATOL)), rtol=float(c.get("rtol", DEFAULT_RTOL)))

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "method": self.method, "atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """``rollout.shadow``: how long and how much a candidate is compared, and how a device switches."""

    sample_rate: float = DEFAULT_SAMPLE_RATE
    min_samples: int = DEFAULT_MIN_SAMPLES
    max_duration: float = DEFAULT_MAX_DURATION  # seconds
    compare: CompareSettings = CompareSettings()
    switch: str = AFTER_GATE
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # percent of compared rows
    queue: int = DEFAULT_QUEUE

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> ShadowSettings:
        """From a schema-valid ``rollout.shadow`` section (``ValueError`` for what the schema cannot say)."""
        s = dict(section or {})
        switch = str(s.get("switch", AFTER_GATE))
        if switch not in SWITCHES:
            raise ValueError(f"shadow.switch {switch!r} is not one of {', '.join(SWITCHES)}")
        rate = float(s.get("sampleRate", DEFAULT_SAMPLE_RATE))
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"shadow.sampleRate {rate:g} is not in (0, 1]")
        duration = s.get("maxDuration")
        return cls(
            sample_rate=rate,
            min_samples=max(1, int(s.get("minSamples", DEFAULT_MIN_SAMPLES))),
            max_duration=parse_duration(str(duration)) if duration else DEFAULT_MAX_DURATION,
            compare=CompareSettings.from_section(s.get("compare")),
            switch=switch,
            min_agreement=float(s.get("minAgreement", DEFAULT_MIN_AGREEMENT)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"sampleRate": self.sample_rate, "minSamples": self.min_samples, "maxDurationSeconds": self.max_duration,
                "compare": self.compare.to_dict(), "switch": self.switch, "minAgreement": self.min_agreement}
