"""What one device's shadow comparison has seen so far, in fixed memory: counts, error aggregates, latencies.

:class:`ShadowStats` is fed by whoever compares (one :func:`~reconciler.shadow.compare.compare` result and
the candidate's time per mirrored request: the candidate's process in the agent, a mirror's worker thread)
and by the request path (offered, sampled out, dropped); it is not locked itself — its one writer serialises
access. :meth:`ShadowStats.to_state` / :meth:`~ShadowStats.from_state` carry it as JSON-able data (the
candidate's process publishes its copy that way; the agent adds the request path's counts).
:meth:`ShadowStats.snapshot` is the status document's numbers: aggregates only, no tensor ever leaves the
device. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reconciler.shadow.compare import OutputError, SampleResult

LATENCY_SLOTS = 1024  # the last this many latencies make the percentiles


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no samples."""
    if not samples:
        return None
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))]


@dataclass
class _Ring:
    values: list[float] = field(default_factory=list)
    n: int = 0

    def add(self, v: float) -> None:
        if len(self.values) < LATENCY_SLOTS:
            self.values.append(v)
        else:
            self.values[self.n % LATENCY_SLOTS] = v
        self.n += 1


@dataclass
class ShadowStats:
    offered: int = 0  # live requests the mirror saw
    sampled_out: int = 0  # left out by sampleRate
    dropped: int = 0  # sampled, but the queue was full
    requests: int = 0  # mirrored requests the candidate ran (or failed on)
    samples: int = 0  # compared rows
    agreed: int = 0
    nonfinite: int = 0
    errors: int = 0  # the candidate raised
    mismatches: int = 0
    skipped: int = 0
    last_error: str | None = None
    last_mismatch: str | None = None
    outputs: dict[str, OutputError] = field(default_factory=dict)
    _candidate: _Ring = field(default_factory=_Ring)
    _live: _Ring = field(default_factory=_Ring)

    def add(self, result: SampleResult, candidate_s: float, live_s: float) -> None:
        self.requests += 1
        self._candidate.add(candidate_s)
        self._live.add(live_s)
        if result.skipped:
            self.skipped += 1
            return
        self.samples += result.rows
        self.agreed += result.agreed
        self.nonfinite += result.nonfinite
        if result.mismatch is not None:
            self.mismatches += 1
            self.last_mismatch = result.mismatch
        for name, err in result.errors.items():
            acc = self.outputs.get(name)
            if acc is None:
                if len(self.outputs) >= 16:
                    continue
                acc = self.outputs[name] = OutputError()
            acc.add(err)

    def add_error(self, message: str, candidate_s: float) -> None:
        self.requests += 1
        self.errors += 1
        self.last_error = message[:300]
        self._candidate.add(candidate_s)

    _COUNTS = ("offered", "sampled_out", "dropped", "requests", "samples", "agreed", "nonfinite", "errors",
               "mismatches", "skipped")

    def to_state(self) -> dict[str, Any]:
        """Everything, as JSON-able data (the candidate's process hands its aggregates to the agent this way:
        data, never code, crosses from the process that runs a model to the agent)."""
        return {**{k: getattr(self, k) for k in self._COUNTS}, "last_error": self.last_error,
                "last_mismatch": self.last_mismatch,
                "outputs": {n: [e.max_abs, e.sum_abs, e.count, e.max_rel] for n, e in self.outputs.items()},
                "candidate": [self._candidate.values, self._candidate.n], "live": [self._live.values, self._live.n]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShadowStats:
        """The inverse of :meth:`to_state` (``ValueError``/``TypeError``/``KeyError`` for what it did not write)."""
        st = cls(**{k: int(state[k]) for k in cls._COUNTS})
        st.last_error = None if state["last_error"] is None else str(state["last_error"])[:300]
        st.last_mismatch = None if state["last_mismatch"] is None else str(state["last_mismatch"])[:300]
        for name, (max_abs, sum_abs, count, max_rel) in list(state["outputs"].items())[:16]:
            st.outputs[str(name)] = OutputError(float(max_abs), float(sum_abs), int(count), float(max_rel))
        for ring, (values, n) in ((st._candidate, state["candidate"]), (st._live, state["live"])):
            ring.values, ring.n = [float(v) for v in values[:LATENCY_SLOTS]], int(n)
        return st

    @property
    def agreement(self) -> float | None:
        """Percent of compared rows on which the candidate agreed (None before the first)."""
        return None if self.samples == 0 else 100.0 * self.agreed / self.samples

    def snapshot(self) -> dict[str, Any]:
        """The status document's ``shadow`` numbers."""
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        cand, live = self._candidate.values, self._live.values
        agreement = self.agreement
        out: dict[str, Any] = {
            "samples": self.samples, "agreed": self.agreed,
            "agreement": None if agreement is None else round(agreement, 3),
            "requests": self.requests, "offered": self.offered, "sampledOut": self.sampled_out,
            "mirrored": round(100.0 * self.requests / self.offered, 2) if self.offered else None,
            "dropped": self.dropped, "errors": self.errors, "nanOutputs": self.nonfinite,
            "mismatches": self.mismatches, "skipped": self.skipped,
            "latencyMs": {"p50": ms(percentile(cand, 50)), "p99": ms(percentile(cand, 99)),
                          "liveP50": ms(percentile(live, 50)), "liveP99": ms(percentile(live, 99))},
            "outputs": {name: {"maxAbsError": float(f"{e.max_abs:.6g}"),
                               "meanAbsError": float(f"{(e.sum_abs / e.count if e.count else 0.0):.6g}"),
                               "maxRelError": float(f"{e.max_rel:.6g}")}
                        for name, e in sorted(self.outputs.items())},
        }
        if self.last_error:
            out["lastError"] = self.last_error
        if self.last_mismatch:
            out["lastMismatch"] = self.last_mismatch[:300]
        return out
