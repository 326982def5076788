"""Model registry: which version each endpoint (``serveAs``) serves, and zero-downtime switches between them.

``apply(spec)`` brings an endpoint to the version ``spec`` names:

* ``availability`` (default): load new → health check → atomic switch → old version drains its in-flight
  requests → unloaded (or kept loaded as ``previous`` for instant rollback when ``keep_previous``).
* ``resource``: drain + unload old → load new → check; if the new one fails, the old one is reloaded.

A failed load or check never becomes active; the result (and ``EndpointState.last_failure``) carries a CamelCase
reason. Requests take a :class:`Lease` from ``get(name)``: it counts in-flight requests so the old version is
unloaded only once they are done. All public methods are thread-safe; one apply per endpoint runs at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from reconciler.serving.batching import Batcher, BatchingPolicy, batching_problem
from reconciler.serving.health import HealthPolicy, HealthResult, rss_mb, run_health_check
from reconciler.serving.interface import interface_problems
from reconciler.serving.observers import Observer, Observers  # noqa: F401  (Observers: the agent imports it here)
from reconciler.serving.runtimes import Backend, RuntimeLoadError, load_backend
from reconciler.serving.v2.codec import TensorMeta

LOAD_SECONDS = Histogram(
    "modelfleet_model_load_seconds",
    "Time to load and health-check a model version.",
    ["model", "version"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SWAPS = Counter("modelfleet_model_swaps_total", "Version switches of an endpoint.", ["model"])
ROLLBACKS = Counter("modelfleet_model_rollbacks_total", "Rollbacks to the previous version.", ["model"])
LOAD_FAILURES = Counter(
    "modelfleet_model_load_failures_total",
    "Versions that failed to load or pass the health check.",
    ["model", "reason"],
)

# Models faster than this (warm-up p50) run inline on the server's event loop: a thread hop costs more.
INLINE_BELOW_MS = 0.5


class EndpointNotFound(KeyError):
    """No such endpoint, or it has no active version."""


class VersionNotFound(KeyError):
    """The endpoint exists but does not have that version loaded."""


@dataclass
class EndpointSpec:
    """What an endpoint should serve (built by the agent from Deployment + Model + fetched artifacts)."""

    name: str
    version: str
    runtime: str = "onnxruntime"
    variant: str = ""
    precision: str = "fp32"  # declared by the variant; sets the runtime's inference precision and tolerances
    files: list[Path] | None = None
    blobs: list[bytes] | None = None
    digest: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    strategy: str = "availability"
    threads: int | None = None
    device: str | None = None
    providers: list[str] | None = None
    keep_previous: bool = True
    #: Adaptive batching (``{maxBatchSize, maxQueueDelayMs, maxQueueSize?}``, :mod:`~.batching`); None: off.
    batching: dict[str, Any] | None = None

    def same_build(self, other: EndpointSpec) -> bool:
        return (self.version, self.variant, self.digest, self.runtime, self.precision) == (
            other.version,
            other.variant,
            other.digest,
            other.runtime,
            other.precision,
        )


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    reason: str = ""
    message: str = ""
    load_ms: float = 0.0
    rolled_back: bool = False
    #: On success: the precision the active version computes in (``Backend.precision``, read back from the runtime).
    precision: str | None = None


@dataclass(frozen=True)
class EndpointState:
    name: str
    version: str | None
    variant: str | None
    digest: str | None
    runtime: str | None
    previous_version: str | None
    ready: bool
    last_failure: dict[str, Any] | None = None
    precision: str | None = None  # declared by the serving variant
    #: What the runtime computes the serving version in (read back; differs from ``precision`` where the CPU
    #: lacks the declared format, e.g. fp16 running as bf16 on AVX-512 BF16 without AVX-512 FP16).
    effective_precision: str | None = None


class LoadedModel:
    """One loaded version: the backend, its tensor metadata, and the in-flight counter used for draining."""

    def __init__(self, spec: EndpointSpec, backend: Backend, load_ms: float, health: HealthResult) -> None:
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.backend = backend
        self.load_ms = load_ms
        #: The precision the runtime computes in (read back at load), which the health check judged it by.
        self.precision = backend.precision
        self.inputs = _merge_meta(spec.inputs, backend.inputs)
        self.outputs = backend.outputs
        self.output_names = [m.name for m in self.outputs]
        self.inline = health.p50_ms is not None and health.p50_ms < INLINE_BELOW_MS
        #: Set when the deployment asks for adaptive batching: requests go through its queue.
        self.batcher: Batcher | None = None
        #: The server's pre-bound metric children for this version (set by the server on first use).
        self.serving_metrics: Any = None
        #: Request plans of this version (reconciler.serving.v2.plans), keyed by what the request says about its tensors.
        self.plans: dict[Any, Any] = {}
        # Monitoring hook (e.g. reconciler.drift): sees every request's tensors after inference; it must only
        # count and enqueue, the work happens off the request path.
        self.observer: Observer | None = None
        # Leases take the bare lock (a C-level ``with``); draining waits on the condition over the same lock.
        self._lease_lock = threading.Lock()
        self._cond = threading.Condition(self._lease_lock)
        self._inflight = 0
        self._draining = False
        self._closed = False

    def _acquire(self) -> bool:
        with self._lease_lock:
            if self._draining:
                return False
            self._inflight += 1
            return True

    def _release(self) -> None:
        with self._lease_lock:
            self._inflight -= 1
            if self._inflight == 0 and self._draining:
                self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def infer(
        self,
        feeds: dict[str, np.ndarray],
        output_names: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        obs = self.observer
        if obs is None:
            return self.backend.infer(feeds, output_names)
        t0 = time.perf_counter()
        try:
            out = self.backend.infer(feeds, output_names)
        except Exception:
            obs.observe_error(time.perf_counter() - t0)
            raise
        obs.observe(feeds, out, time.perf_counter() - t0, request_id)
        return out

    def drain_and_close(self, timeout: float = 60.0) -> None:
        """Stop taking leases, wait for in-flight requests (up to ``timeout``), then free the session."""
        with self._cond:
            self._draining = True
            self._cond.wait_for(lambda: self._inflight == 0, timeout)
            if self._closed:
                return
            self._closed = True
        self.set_batching(None)
        self.backend.close()

    def set_batching(self, policy: BatchingPolicy | None) -> None:
        """Start (or replace, or with None stop) this version's batch queue; queued requests still run."""
        old = self.batcher
        self.batcher = Batcher(self.name, policy, self.backend.infer) if policy is not None else None
        if old is not None:
            old.close()

    def reopen(self) -> None:
        """Allow leases again (a kept previous version becoming active after a rollback)."""
        with self._cond:
            if not self._closed:
                self._draining = False


class Lease:
    """A claim on one loaded version for one request; use as a context manager."""

    __slots__ = ("model",)

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        m = self.model
        if m is not None:
            self.model = None  # type: ignore[assignment]
            m._release()


class _Endpoint:
    def __init__(self, name: str) -> None:
        self.name = name
        self.active: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        # Spec of the version that was active before the last switch (to reload it for a resource rollback).
        self.previous_spec: EndpointSpec | None = None
        self.last_failure: dict[str, Any] | None = None
        self.apply_lock = threading.Lock()


def _merge_meta(declared: list[dict[str, Any]], reported: list[TensorMeta]) -> list[TensorMeta]:
    """Runtime metadata, with declared ranges (and declared fixed dims) from the Model manifest."""
    if not declared:
        return reported
    decl = {d["name"]: TensorMeta.from_decl(d) for d in declared}
    out = []
    for m in reported:
        d = decl.get(m.name)
        out.append(m if d is None else TensorMeta(m.name, m.datatype, d.shape or m.shape, d.min, d.max))
    return out


def _interface_problem(spec: EndpointSpec, backend: Backend) -> str | None:
    """The first reason to refuse the model as ``InterfaceMismatch`` (``validate --tuf-repo`` reports them all)."""
    problems = interface_problems(spec.inputs, spec.outputs, backend.inputs, backend.outputs)
    return problems[0] if problems else None


def _batching_policy(spec: EndpointSpec, backend: Backend) -> BatchingPolicy | None:
    """The endpoint's batching policy; ``ValueError`` when it is malformed or the model cannot be batched."""
    policy = BatchingPolicy.from_spec(spec.batching)
    if policy is not None:
        problem = batching_problem(_merge_meta(spec.inputs, backend.inputs), backend.outputs)
        if problem:
            raise ValueError(f"batching requested, but {problem}")
    return policy


class ModelRegistry:
    """The endpoints this process serves. ``cache_dir`` holds runtime caches (OpenVINO compiled blobs)."""

    def __init__(self, cache_dir: Path | None = None,
                 observer_factory: Callable[[EndpointSpec], Observer | None] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.observer_factory = observer_factory
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._generation = 0

    # -- inference path -------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> Lease:
        """A lease on the active version (or on ``version`` if it is loaded as active or previous)."""
        for _ in range(100):
            ep = self._endpoints.get(name)
            if ep is None:
                raise EndpointNotFound(name)
            model = ep.active
            if version is not None and (model is None or model.version != version):
                prev = ep.previous
                if prev is not None and prev.version == version:
                    model = prev
                elif model is not None:
                    raise VersionNotFound(f"{name} {version}")
            if model is None:
                raise EndpointNotFound(name)
            if model._acquire():
                return Lease(model)
            # Lost a race with a switch: the endpoint now points at the new version; look again.
        raise EndpointNotFound(name)

    def models(self) -> list[LoadedModel]:
        """All loaded versions (active first, then previous) — for the repository index."""
        out = []
        for ep in list(self._endpoints.values()):
            out.extend(m for m in (ep.active, ep.previous) if m is not None)
        return out

    @property
    def generation(self) -> int:
        """Bumped on every switch (lets caches keyed on the active version notice)."""
        return self._generation

    # -- control path ---------------------------------------------------------------------------------

    def _endpoint(self, name: str) -> _Endpoint:
        with self._lock:
            ep = self._endpoints.get(name)
            if ep is None:
                ep = self._endpoints[name] = _Endpoint(name)
            return ep

    def _load(self, spec: EndpointSpec) -> tuple[LoadedModel | None, ApplyResult]:
        t0 = time.perf_counter()
        try:
            policy = HealthPolicy.from_spec(spec.health, spec.precision)
        except ValueError as exc:
            return None, self._fail(spec, "LoadFailed", str(exc), t0)
        rss_before = rss_mb()
        try:
            backend = load_backend(
                spec.runtime,
                files=spec.files,
                blobs=spec.blobs,
                threads=spec.threads,
                device=spec.device,
                providers=spec.providers,
                precision=spec.precision,
                cache_dir=self.cache_dir / "openvino"
                if self.cache_dir and spec.runtime == "openvino"
                else None,
            )
        except RuntimeLoadError as exc:  # RuntimeNotInstalled names the missing extra
            return None, self._fail(spec, exc.reason, str(exc), t0)
        except OSError as exc:
            return None, self._fail(spec, "LoadFailed", f"cannot read model files: {exc}", t0)
        problem = _interface_problem(spec, backend)
        if problem:
            backend.close()
            return None, self._fail(spec, "InterfaceMismatch", problem, t0)
        try:
            batching = _batching_policy(spec, backend)
        except ValueError as exc:
            backend.close()
            return None, self._fail(spec, "InvalidSpec", str(exc), t0)
        if backend.precision != spec.precision:
            # The runtime could not honour the declared precision on this CPU: judge it by what it computes in.
            policy = HealthPolicy.from_spec(spec.health, spec.precision, backend.precision)
        health = run_health_check(backend, spec.probe, policy, rss_before_mb=rss_before)
        if not health.ok:
            backend.close()
            return None, self._fail(spec, health.reason, health.message, t0)
        load_ms = (time.perf_counter() - t0) * 1000.0
        LOAD_SECONDS.labels(spec.name, spec.version).observe(load_ms / 1000.0)
        model = LoadedModel(spec, backend, load_ms, health)
        model.set_batching(batching)
        if self.observer_factory is not None:
            model.observer = self.observer_factory(spec)
        return model, ApplyResult(True, "Ready", "", load_ms, precision=model.precision)

    def _rebatch(self, model: LoadedModel, spec: EndpointSpec) -> ApplyResult | None:
        """Apply ``spec``'s batching to an already loaded build of it; the refusal when it cannot be batched."""
        if (model.spec.batching or None) == (spec.batching or None):
            return None
        try:
            model.set_batching(_batching_policy(spec, model.backend))
        except ValueError as exc:
            return self._fail(spec, "InvalidSpec", str(exc), time.perf_counter())
        model.spec.batching = spec.batching
        return None

    def _fail(self, spec: EndpointSpec, reason: str, message: str, t0: float) -> ApplyResult:
        LOAD_FAILURES.labels(spec.name, reason).inc()
        ep = self._endpoint(spec.name)
        ep.last_failure = {
            "version": spec.version,
            "variant": spec.variant,
            "digest": spec.digest,
            "reason": reason,
            "message": message,
            "time": time.time(),
        }
        return ApplyResult(
            False, reason, f"{spec.name} {spec.version}: {message}", (time.perf_counter() - t0) * 1000.0
        )

    def _switch(self, ep: _Endpoint, new: LoadedModel, keep_previous: bool) -> None:
        old, older = ep.active, ep.previous
        with self._lock:
            ep.active = new
            ep.previous = old if keep_previous else None
            ep.previous_spec = old.spec if old is not None else ep.previous_spec
            self._generation += 1
        if old is not None:
            SWAPS.labels(ep.name).inc()
        # Draining happens after the switch, outside the registry lock: new requests already go to ``new``.
        if older is not None and older is not new:
            older.drain_and_close()
        if old is not None and not keep_previous:
            old.drain_and_close()

    def apply(self, spec: EndpointSpec) -> ApplyResult:
        """Make ``spec`` the active version of its endpoint. Never raises for model problems."""
        if spec.strategy not in ("availability", "resource"):
            return ApplyResult(False, "InvalidSpec", f"unknown update strategy {spec.strategy!r}")
        if (spec.files is None) == (spec.blobs is None):
            return ApplyResult(False, "InvalidSpec", "an endpoint spec needs files or blobs")
        ep = self._endpoint(spec.name)
        with ep.apply_lock:
            if ep.active is not None and ep.active.spec.same_build(spec):
                active = ep.active
                refused = self._rebatch(active, spec)
                if refused is not None:
                    return refused
                active.spec = spec
                return ApplyResult(True, "AlreadyActive", "", active.load_ms, precision=active.precision)
            if ep.previous is not None and ep.previous.spec.same_build(spec):
                # The wanted version is still loaded and passed its check when it was loaded: switch back.
                prev = ep.previous
                refused = self._rebatch(prev, spec)
                if refused is not None:
                    return refused
                prev.reopen()
                self._switch(ep, prev, spec.keep_previous)
                ep.last_failure = None
                return ApplyResult(True, "Ready", "switched to the loaded previous version", 0.0,
                                   precision=prev.precision)
            if spec.strategy == "resource":
                return self._apply_resource(ep, spec)
            new, result = self._load(spec)
            if new is None:
                return result
            self._switch(ep, new, spec.keep_previous)
            ep.last_failure = None
            return result

    def _apply_resource(self, ep: _Endpoint, spec: EndpointSpec) -> ApplyResult:
        old_spec = ep.active.spec if ep.active is not None else None
        with self._lock:
            old, older = ep.active, ep.previous
            ep.active, ep.previous = None, None
            self._generation += 1
        for m in (older, old):
            if m is not None:
                m.drain_and_close()
        new, result = self._load(spec)
        if new is not None:
            with self._lock:
                ep.active = new
                ep.previous_spec = old_spec
                self._generation += 1
            if old is not None:
                SWAPS.labels(ep.name).inc()
            ep.last_failure = None
            return result
        if old_spec is None:
            return result
        failure = ep.last_failure
        back, back_result = self._load(old_spec)
        if back is None:
            return ApplyResult(
                False,
                result.reason,
                f"{result.message}; reloading {old_spec.version} also failed: {back_result.message}",
                result.load_ms,
            )
        with self._lock:
            ep.active = back
            self._generation += 1
        ep.last_failure = failure
        ROLLBACKS.labels(ep.name).inc()
        return ApplyResult(False, result.reason, result.message, result.load_ms, rolled_back=True)

    # -- two-phase switches (a worker process of reconciler.serving.workers) ----------------------------------

    def stage(self, spec: EndpointSpec) -> tuple[LoadedModel | None, ApplyResult]:
        """Prepare ``spec`` without switching: the loaded and checked version to :meth:`activate` later (the
        kept previous version when it is the same build; None with ``AlreadyActive`` when nothing changes)."""
        ep = self._endpoint(spec.name)
        with ep.apply_lock:
            for kept in (ep.active, ep.previous):
                if kept is not None and kept.spec.same_build(spec):
                    refused = self._rebatch(kept, spec)
                    if refused is not None:
                        return None, refused
            if ep.active is not None and ep.active.spec.same_build(spec):
                ep.active.spec = spec
                return None, ApplyResult(True, "AlreadyActive", "", ep.active.load_ms,
                                         precision=ep.active.precision)
            if ep.previous is not None and ep.previous.spec.same_build(spec):
                return ep.previous, ApplyResult(True, "Ready", "switched to the loaded previous version", 0.0,
                                                precision=ep.previous.precision)
            return self._load(spec)

    def activate(self, name: str, model: LoadedModel | None, keep_previous: bool,
                 retire: Callable[[LoadedModel], None]) -> None:
        """Make a staged version active (None: remove the endpoint) without waiting: the versions to drain
        and unload go to ``retire`` (a worker calls this on its event loop, which must not block)."""
        with self._lock:
            if model is None:
                ep = self._endpoints.pop(name, None)
                gone = [] if ep is None else [ep.active, ep.previous]
            else:
                ep = self._endpoints.setdefault(name, _Endpoint(name))
                old, older = ep.active, ep.previous
                if model is old:
                    return
                model.reopen()
                ep.active, ep.previous = model, old if keep_previous else None
                ep.previous_spec = old.spec if old is not None else ep.previous_spec
                ep.last_failure = None
                gone = [older if older is not model else None, None if keep_previous else old]
            self._generation += 1
        for m in gone:
            if m is not None:
                retire(m)

    def rollback(self, name: str) -> bool:
        """Switch the endpoint back to its previous version. Instant when it is still loaded; otherwise it is
        reloaded (and health-checked) from its files/blobs. False when there is nothing to roll back to."""
        ep = self._endpoints.get(name)
        if ep is None:
            return False
        with ep.apply_lock:
            prev = ep.previous
            if prev is not None:
                prev.reopen()
                self._switch(ep, prev, True)
                ROLLBACKS.labels(name).inc()
                return True
            spec = ep.previous_spec
            if spec is None:
                return False
            new, _ = self._load(spec)
            if new is None:
                return False
            self._switch(ep, new, ep.active.spec.keep_previous if ep.active is not None else True)
            ROLLBACKS.labels(name).inc()
            return True

    def remove(self, name: str) -> None:
        """Stop serving the endpoint; in-flight requests finish first."""
        with self._lock:
            ep = self._endpoints.pop(name, None)
            self._generation += 1
        if ep is None:
            return
        with ep.apply_lock:
            for m in (ep.active, ep.previous):
                if m is not None:
                    m.drain_and_close()

    def close(self) -> None:
        for name in list(self._endpoints):
            self.remove(name)

    def endpoints(self) -> dict[str, EndpointState]:
        out = {}
        for name, ep in list(self._endpoints.items()):
            a, p = ep.active, ep.previous
            out[name] = EndpointState(
                name=name,
                version=a.version if a else None,
                variant=a.spec.variant if a else None,
                digest=a.spec.digest if a else None,
                runtime=a.spec.runtime if a else None,
                previous_version=p.version if p else None,
                ready=a is not None,
                last_failure=dict(ep.last_failure) if ep.last_failure else None,
                precision=a.spec.precision if a else None,
                effective_precision=a.precision if a else None,
            )
        return out
