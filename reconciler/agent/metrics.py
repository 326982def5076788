"""The agent's Prometheus metrics (default registry: also exposed by the inference server's ``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

M_PASSES = Counter("modelfleet_agent_passes_total", "Reconcile passes by result.", ["result"])
M_STEPS = Counter("modelfleet_agent_step_runs_total", "Step runs by step and result.", ["step", "result"])
M_PASS_SECONDS = Histogram(
    "modelfleet_agent_pass_duration_seconds", "Duration of one reconcile pass.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
M_LAST_SUCCESS = Gauge("modelfleet_agent_last_success_timestamp_seconds", "Unix time of the last converged pass.")
M_APPLIED = Gauge("modelfleet_agent_applied_commit_info", "The applied fleet commit (value 1).", ["commit"])
M_ENDPOINT = Gauge(
    "modelfleet_agent_endpoint_version_info", "Version serving on each endpoint (value 1).",
    ["endpoint", "model", "version", "variant", "runtime", "precision"],
)
M_BYTES = Counter("modelfleet_agent_downloaded_bytes_total", "Bytes of model targets downloaded into the store.")
M_POLLS = Counter("modelfleet_agent_polls_total", "Git source polls by result.", ["result"])
M_STATUS = Counter("modelfleet_agent_status_pushes_total", "Status pushes that landed on the fleet repository.")
M_STATUS_FAILURES = Counter("modelfleet_agent_status_push_failures_total", "Failed status pushes by reason.",
                            ["reason"])
M_STATUS_LAST_PUSH = Gauge("modelfleet_agent_status_last_push_timestamp_seconds",
                           "Unix time of the last status push that landed.")
M_ROLLBACKS = Counter("modelfleet_agent_rollbacks_total", "Failed switches rolled back.", ["endpoint"])


def label_sets(metric: Gauge) -> Iterator[tuple[str, ...]]:
    """The label tuples of every endpoint sample currently set on ``metric``."""
    for sample_metric in metric.collect():
        for s in sample_metric.samples:
            yield tuple(s.labels[k] for k in ("endpoint", "model", "version", "variant", "runtime", "precision"))
