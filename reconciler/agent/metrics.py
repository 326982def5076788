"""The agent's Prometheus metrics (default registry: also exposed by the inference server's ``/metrics``).

The alert rules and dashboards in ``deploy/`` are written against these names (docs/monitoring.md); the suite
scrapes them with a real Prometheus server (tests/monitoring).
"""

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
M_ROLLBACKS = Counter("modelfleet_agent_rollbacks_total",
                      "Rollbacks: a new version failed to load or its health check (last good kept), or drifted "
                      "under drift.action rollback.", ["endpoint"])
M_CONVERGED = Gauge("modelfleet_agent_converged",
                    "1 when the last reconcile pass found the desired state applied and serving, else 0.")
M_HEARTBEAT = Gauge("modelfleet_agent_heartbeat_timestamp_seconds",
                    "Unix time the reconcile loop last finished a pass (idle passes too).")
M_HEARTBEAT_MAX_GAP = Gauge("modelfleet_agent_heartbeat_max_interval_seconds",
                            "Longest wait between two passes: the poll interval backed off to its cap, with jitter.")
M_INFO = Gauge("modelfleet_agent_info", "The agent's device id and modelfleet version (value 1).",
               ["device_id", "version"])


def record_pass(converged: bool, finished_at: float, max_interval: float) -> None:
    """A pass ended at ``finished_at`` (Unix time): the heartbeat and convergence series."""
    M_CONVERGED.set(1 if converged else 0)
    M_HEARTBEAT.set(finished_at)
    M_HEARTBEAT_MAX_GAP.set(max_interval)


def record_identity(device_id: str, version: str) -> None:
    """The device this process runs as (one series: a previous identity in the same process is removed)."""
    M_INFO.clear()
    M_INFO.labels(device_id, version).set(1)


def track_endpoint(endpoint: str) -> None:
    """Create the endpoint's rollback series at 0, so the first rollback is an increase Prometheus can see."""
    M_ROLLBACKS.labels(endpoint)


def label_sets(metric: Gauge) -> Iterator[tuple[str, ...]]:
    """The label tuples of every endpoint sample currently set on ``metric``."""
    for sample_metric in metric.collect():
        for s in sample_metric.samples:
            yield tuple(s.labels[k] for k in ("endpoint", "model", "version", "variant", "runtime", "precision"))
