"""One ``/metrics`` for a :class:`~reconciler.serving.workers.pool.WorkerPool`: the pool's own series plus the
families the worker processes count, summed over workers by ``prometheus_client``'s multiprocess mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector

WORKERS_SERVING = Gauge("modelfleet_serving_workers", "Worker processes serving the current generation.")
WORKER_RESTARTS = Counter("modelfleet_serving_worker_restarts_total", "Worker processes that died and were restarted.")
WORKER_RSS = Gauge("modelfleet_serving_worker_rss_bytes", "Resident memory of each worker process.", ["worker"])
#: Families the workers count (summed over workers); everything else comes from the pool's process.
WORKER_FAMILIES = frozenset({
    "modelfleet_inference_requests", "modelfleet_inference_failures", "modelfleet_inference_latency_seconds",
    "modelfleet_inference_inflight", "modelfleet_model_load_seconds", "modelfleet_serving_samples_dropped",
    "modelfleet_batch_size", "modelfleet_batch_queue_delay_seconds", "modelfleet_batch_fallbacks",
})


class PoolMetrics:
    """The pool process's registry with the worker-counted families replaced by their sum over workers."""

    def __init__(self, directory: Path) -> None:
        self._workers = MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Any:
        for family in REGISTRY.collect():
            if family.name not in WORKER_FAMILIES:
                yield family
        for family in self._workers.collect():
            if family.name in WORKER_FAMILIES:
                yield family
