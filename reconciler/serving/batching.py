"""Adaptive (dynamic) batching per endpoint, like Triton's dynamic batcher.

Opt-in per deployment (``spec.runtime.batching: {maxBatchSize, maxQueueDelayMs, maxQueueSize}``). The server
decodes and validates each request as usual, then hands it to the endpoint's :class:`Batcher` instead of the
runtime. One worker thread per batched model version forms batches with :func:`take_batch` (pure, clock passed
in): the oldest queued request opens a batch; later requests that are *compatible* with it (same
:func:`batch_key`: input names, datatypes, shapes after the first dimension, requested outputs and request
parameters) join it, in arrival order, while the rows (first dimensions) add up to at most ``maxBatchSize``;
the batch runs when it is full or when its oldest request has waited ``maxQueueDelayMs``. The inputs are
concatenated along axis 0, run once, and every output is split back by rows, so each request gets exactly the
rows it would have got alone (checked bit-for-bit for fp32 ONNX Runtime in ``tests/serving/test_batching.py``).
When the batch as a whole fails (one request's data makes the runtime fail, or the model does not really batch
along its first dimension), its requests are run again one at a time: each gets the answer or the error it
would have got alone, and ``modelfleet_batch_fallbacks_total`` counts it.

Limits: at most ``maxQueueSize`` requests wait (the next one is answered 503 at once, :class:`QueueFull`); a
request with more rows than ``maxBatchSize`` runs alone. A model whose inputs and outputs do not all have a
variable first dimension cannot be batched: :func:`batching_problem` says why, and the registry refuses to load
it with batching requested.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from reconciler.serving.v2.codec import TensorMeta

BATCH_SIZE = Histogram(
    "modelfleet_batch_size",
    "Requests run together in one batch (adaptive batching).",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
)
FALLBACKS = Counter(
    "modelfleet_batch_fallbacks_total",
    "Batches that failed as a whole and were run again one request at a time.",
    ["model"],
)
QUEUE_DELAY = Histogram(
    "modelfleet_batch_queue_delay_seconds",
    "Time a request waited in the batch queue before its batch ran.",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)

#: Largest accepted ``maxQueueDelayMs`` and ``maxBatchSize``/``maxQueueSize`` (the schema says the same).
MAX_DELAY_MS = 10_000.0
MAX_COUNT = 4096
#: Largest gather buffer a batcher keeps between batches, per input (larger batches get a buffer of their own).
GATHER_KEEP_MAX = 64 << 20
#: Parameters that only change how the answer is encoded, never what the model computes.
_ENCODING_PARAMS = frozenset({"binary_data_output"})


class QueueFull(Exception):
    """The batch queue is at ``maxQueueSize``; the message is for the client (status 503)."""


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> BatchingPolicy | None:
        """``{maxBatchSize, maxQueueDelayMs, maxQueueSize?}`` → a policy; None/empty → no batching.

        Raises ``ValueError`` naming the field for a missing or out-of-range value."""
        if not spec:
            return None
        unknown = set(spec) - {"maxBatchSize", "maxQueueDelayMs", "maxQueueSize"}
        if unknown:
            raise ValueError(f"batching: unknown field(s) {', '.join(sorted(unknown))}")
        size = spec.get("maxBatchSize")
        delay = spec.get("maxQueueDelayMs")
        if type(size) is not int or not 1 <= size <= MAX_COUNT:
            raise ValueError(f"batching.maxBatchSize must be an integer from 1 to {MAX_COUNT}, got {size!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY_MS:
            raise ValueError(f"batching.maxQueueDelayMs must be a number from 0 to {MAX_DELAY_MS:g}, got {delay!r}")
        queue = spec.get("maxQueueSize", max(64, 4 * size))
        if type(queue) is not int or not 1 <= queue <= MAX_COUNT:
            raise ValueError(f"batching.maxQueueSize must be an integer from 1 to {MAX_COUNT}, got {queue!r}")
        return cls(size, float(delay) / 1000.0, queue)


def batching_problem(inputs: Sequence[TensorMeta], outputs: Sequence[TensorMeta]) -> str | None:
    """Why a model cannot be batched (every input and output needs a variable first dimension), or None."""
    for kind, metas in (("input", inputs), ("output", outputs)):
        for m in metas:
            if not m.shape:
                return f"{kind} {m.name!r} has no declared shape: batching needs a variable first (batch) dimension"
            if m.shape[0] != -1:
                return (f"{kind} {m.name!r} has shape {list(m.shape)}: batching needs a variable first (batch) "
                        "dimension (-1)")
            if m.datatype == "BYTES":
                return f"{kind} {m.name!r} is BYTES: string tensors are not batched"
    return None


def batch_key(feeds: Mapping[str, np.ndarray], output_names: Sequence[str],
              parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two requests to run in one batch. Pure."""
    tensors = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))
    params = tuple(sorted((k, repr(v)) for k, v in parameters.items() if k not in _ENCODING_PARAMS))
    return tensors, tuple(output_names), params


@dataclass(slots=True)
class BatchItem:
    """One queued request: its feeds, what to compute, and where the answer goes."""

    feeds: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    key: tuple[Any, ...]
    rows: int
    #: ``done(outputs, error, queue_seconds, run_seconds)``: exactly one of outputs/error is set.
    done: Callable[[dict[str, np.ndarray] | None, str | None, float, float], None]
    enqueued: float = 0.0


def take_batch(queue: Sequence[BatchItem], policy: BatchingPolicy, now: float) -> tuple[list[int], float]:
    """Indices of the queued requests that run next, and 0.0; or ``[]`` and how long to wait first. Pure.

    The oldest request opens the batch; compatible later ones join in order while the rows fit. The batch runs
    once it is full (no compatible request left that fits, or ``maxBatchSize`` rows) or its oldest request has
    waited ``maxQueueDelayMs``."""
    if not queue:
        return [], policy.max_queue_delay_s
    head = queue[0]
    chosen, rows, full = [0], head.rows, head.rows >= policy.max_batch_size
    for i in range(1, len(queue)):
        if full:
            break
        item = queue[i]
        if item.key != head.key:
            continue
        if rows + item.rows > policy.max_batch_size:
            full = True  # a compatible request is already waiting for the next batch: this one cannot grow
            break
        chosen.append(i)
        rows += item.rows
        full = rows >= policy.max_batch_size
    wait = head.enqueued + policy.max_queue_delay_s - now
    if full or wait <= 0:
        return chosen, 0.0
    return [], wait


class Batcher:
    """The batch queue and worker thread of one model version. ``run(feeds, output_names)`` is the runtime."""

    def __init__(self, name: str, policy: BatchingPolicy,
                 run: Callable[[dict[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self._run = run
        self._clock = clock
        self._queue: collections.deque[BatchItem] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._batch_size = BATCH_SIZE.labels(name)
        self._queue_delay = QUEUE_DELAY.labels(name)
        self._fallbacks = FALLBACKS.labels(name)
        #: Per input: the buffer batches are gathered into, reused batch after batch (a fresh multi-MB array per
        #: batch costs page faults; only this thread touches it, and the runtime is done with it on return).
        self._gather: dict[str, np.ndarray] = {}
        self._thread = threading.Thread(target=self._work, name=f"modelfleet-batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: BatchItem) -> None:
        """Queue a request; raises :class:`QueueFull` at ``maxQueueSize`` and ``RuntimeError`` once closed."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"model {self.name!r} is being unloaded")
            if len(self._queue) >= self.policy.max_queue_size:
                raise QueueFull(f"model {self.name!r}: batch queue full ({self.policy.max_queue_size} requests "
                                "waiting); retry later")
            item.enqueued = self._clock()
            self._queue.append(item)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop the worker once the queue is empty (requests still queued are run first)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(30)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        if self._closed:
                            self._gather = {}
                            return
                        self._cond.wait()
                        continue
                    # closing: what is queued runs now instead of waiting for company
                    now = float("inf") if self._closed else self._clock()
                    chosen, wait = take_batch(self._queue, self.policy, now)
                    if chosen:
                        break
                    self._cond.wait(wait)
                batch = [self._queue[i] for i in chosen]
                for i in reversed(chosen):
                    del self._queue[i]
            self._execute(batch)

    def _execute(self, batch: list[BatchItem]) -> None:
        started = self._clock()
        for item in batch:
            self._queue_delay.observe(started - item.enqueued)
        self._batch_size.observe(len(batch))
        if len(batch) > 1:
            first = batch[0]
            try:
                feeds = {n: self._concatenate(n, [b.feeds[n] for b in batch]) for n in first.feeds}
                outputs = self._run(feeds, first.output_names)
                parts = split_outputs(_owned(outputs, feeds.values()), [b.rows for b in batch])
            except Exception:  # noqa: BLE001 - one member's data, or a model that does not batch: see below
                self._fallbacks.inc()
            else:
                run_s = self._clock() - started
                for item, out in zip(batch, parts, strict=True):
                    self._finish(item, out, None, started - item.enqueued, run_s)
                return
        # Alone: a single request, or the members of a failed batch, so that each gets exactly the answer (or
        # the error) it would have got alone — one bad request never fails its neighbours.
        for item in batch:
            t0 = self._clock()
            try:
                out, error = self._run(item.feeds, item.output_names), None
            except Exception as exc:  # noqa: BLE001 - the runtime's message goes to the client
                out, error = None, f"inference failed: {exc}"
            self._finish(item, out, error, started - item.enqueued, self._clock() - t0)

    def _concatenate(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """The arrays stacked along axis 0 in this input's reused gather buffer (grown to ``maxBatchSize`` rows
        of the batch's row shape and dtype when they change)."""
        rows = sum(a.shape[0] for a in arrays)
        first = arrays[0]
        buf = self._gather.get(name)
        if buf is None or buf.dtype != first.dtype or buf.shape[1:] != first.shape[1:] or buf.shape[0] < rows:
            buf = np.empty((max(rows, self.policy.max_batch_size), *first.shape[1:]), first.dtype)
            if buf.nbytes <= GATHER_KEEP_MAX:
                self._gather[name] = buf
            else:  # a rare giant batch is gathered once, not kept
                self._gather.pop(name, None)
        return np.concatenate(arrays, axis=0, out=buf[:rows])

    @staticmethod
    def _finish(item: BatchItem, outputs: dict[str, np.ndarray] | None, error: str | None,
                queue_s: float, run_s: float) -> None:
        try:
            item.done(outputs, error, queue_s, run_s)
        except Exception:  # noqa: BLE001 - the callback answers its request; a bug there must not stop the worker
            pass


def _owned(outputs: dict[str, np.ndarray], feeds: Any) -> dict[str, np.ndarray]:
    """Outputs that cannot be views of the reused gather buffers (a runtime may hand an input back as an
    output, e.g. Identity): any that might be is copied before the next batch overwrites it."""
    for name, arr in outputs.items():
        if any(np.may_share_memory(arr, f) for f in feeds):
            outputs = {**outputs, name: arr.copy()}
    return outputs


def split_outputs(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split a batch's outputs back by rows (views, no copies). Pure; ``ValueError`` if an output has no batch
    dimension of the batch's total rows."""
    total = sum(rows)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ValueError(f"output {name!r} has shape {list(arr.shape)}, not {total} rows: the model does not "
                             "batch along its first dimension")
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    for n in rows:
        parts.append({name: arr[start : start + n] for name, arr in outputs.items()})
        start += n
    return parts
