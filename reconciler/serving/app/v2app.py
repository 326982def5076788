"""The v2 application core both fronts call: the routes of the Open Inference Protocol over the model registry.

:class:`V2App` answers what a client may ask — liveness and readiness, server and model metadata, the repository
index, inference (through :class:`~reconciler.serving.app.inferpath.InferPath`), feedback — whatever carried the
question: the HTTP/1.1 front (:mod:`reconciler.serving.http`) calls :meth:`V2App.handle` with a method, target,
headers and body; the gRPC front (:mod:`reconciler.serving.grpc`) calls the same methods behind it. It owns the
bearer token check, the inference metrics (bound once per model version: :class:`_Bound`) and the choice between
answering inline on the event loop, in the thread pool, or from an adaptive batch.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from reconciler import __version__
from reconciler.serving.app.inferpath import Encoder, InferPath
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import EndpointNotFound, LoadedModel, ModelRegistry, VersionNotFound
from reconciler.serving.v2.codec import InferRequest, JsonLimits
from reconciler.serving.v2.handler import Deferred, Response, error_response
from reconciler.serving.v2.jsonio import dumps

REQUESTS = Counter("modelfleet_inference_requests_total", "Inference requests.", ["model", "version"])
FAILURES = Counter(
    "modelfleet_inference_failures_total",
    "Inference requests answered with an error.",
    ["model", "version", "code"],
)
LATENCY = Histogram(
    "modelfleet_inference_latency_seconds",
    "Inference request latency inside the server (decode, run, encode).",
    ["model", "version"],
    buckets=(
        0.00005,
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
    ),
)
INFLIGHT = Gauge(
    "modelfleet_inference_inflight", "Inference requests being processed.", ["model"], multiprocess_mode="livesum"
)

#: Bodies up to this size may be decoded inline on the event loop (for a fast model); larger ones never are.
INLINE_BODY_MAX = 64 * 1024
_Deferred = Deferred  # the name bench/ and older callers import
_TARGETS_MAX = 1024


@dataclass(slots=True)
class Request:
    """What an ``extra_routes`` handler receives."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


#: An ``extra_routes`` handler returns (status, content type, body).
RouteHandler = Callable[[Request], tuple[int, str, bytes]]


def _json(status: int, doc: Any) -> Response:
    return Response(status, dumps(doc))


def _error(status: int, message: str) -> Response:
    return error_response(status, message)


class _Bound:
    """One model version's metric children, bound once (``labels()`` costs a lock and a dict per request).

    In a worker process (prometheus_client's multiprocess mode) every add is a locked write into a shared file
    behind a ``getpid()`` check: a request answered inline on the event loop is added to counts kept here, and
    those are written once per turn of the loop (``call_soon``), before it waits for the next events — one write
    per series per turn instead of three per request, and nothing answered is missing from a later ``/metrics``.
    """

    __slots__ = ("name", "version", "requests", "latency", "inflight", "_failures", "_count", "_sum", "_bounds",
                 "_buckets", "_turns", "_n", "_s", "_b", "_loop")

    def __init__(self, model: str, version: str) -> None:
        self.name, self.version = model, version
        self.requests = REQUESTS.labels(model, version)
        self.latency = LATENCY.labels(model, version)
        self.inflight = INFLIGHT.labels(model)
        self._failures: dict[int, Any] = {}
        # The children's value objects (in-process or multiprocess alike), when prometheus_client's layout is
        # the known one: one request is then three locked adds, without the wrappers' checks and bucket loop.
        try:
            self._count = self.requests._value.inc
            self._sum = self.latency._sum.inc
            self._bounds = list(self.latency._upper_bounds)
            self._buckets = [b.inc for b in self.latency._buckets]
        except AttributeError:
            self._count = None
        self._turns = self._count is not None and type(self.requests._value).__name__ == "MmapedValue"
        self._n, self._s, self._b = 0, 0.0, [0] * len(self._buckets) if self._turns else []
        self._loop: asyncio.AbstractEventLoop | None = None

    def counted(self, seconds: float) -> None:
        """One request answered in ``seconds`` (from any thread)."""
        if self._count is None:
            self.requests.inc()
            self.latency.observe(seconds)
            return
        self._count(1)
        self._sum(seconds)
        self._buckets[bisect_left(self._bounds, seconds)](1)  # the first bucket whose bound is >= seconds

    def counted_inline(self, seconds: float) -> None:
        """One request answered in ``seconds`` on the event loop's thread (see the class docstring)."""
        if not self._turns:
            self.counted(seconds)
            return
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop after all
                self.counted(seconds)
                return
        if self._n == 0:
            loop.call_soon(self._flush)
        self._n += 1
        self._s += seconds
        self._b[bisect_left(self._bounds, seconds)] += 1

    def _flush(self) -> None:
        n, s, b = self._n, self._s, self._b
        self._n, self._s, self._b = 0, 0.0, [0] * len(b)
        if n:
            self._count(n)  # type: ignore[misc]
            self._sum(s)
            for inc, k in zip(self._buckets, b, strict=True):
                if k:
                    inc(k)

    def failed(self, status: int) -> None:
        child = self._failures.get(status)
        if child is None:
            child = self._failures[status] = FAILURES.labels(self.name, self.version, str(status))
        child.inc()


def _bound(model: LoadedModel) -> _Bound:
    b = model.serving_metrics
    if b is None:
        b = model.serving_metrics = _Bound(model.name, model.version)
    return b  # type: ignore[no-any-return]


class V2App:
    """Transport-independent request handling: ``handle`` returns a Response or deferred work."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        auth_token: str | None = None,
        extra_routes: Mapping[tuple[str, str], RouteHandler] | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.registry = registry
        self._token = f"Bearer {auth_token}".encode() if auth_token else None
        self.extra_routes = dict(extra_routes or {})
        self.limits = limits or ServerLimits()
        self._json_limits = JsonLimits(self.limits.max_json_bytes, self.limits.max_json_elements)
        self._path = InferPath(self._json_limits, _bound)
        #: request target of an /infer route -> (model, version or None): routed without splitting the path
        self._infer_targets: dict[str, tuple[str, str | None]] = {}

    def body_limit(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, str]:
        """JSON ``/infer`` bodies have the smaller JSON limit: they cost far more memory per byte to decode."""
        lim = self.limits
        if (
            lim.max_json_bytes < lim.max_body_bytes
            and "inference-header-content-length" not in headers
            and target.endswith("/infer")
        ):
            return lim.max_json_bytes, " for JSON tensors (send large tensors with the binary extension)"
        return lim.max_body_bytes, ""

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response | _Deferred:
        path, _, query = target.partition("?")
        if self._token is not None and not path.startswith("/v2/health/"):
            if not self.authorized(headers.get("authorization", "")):
                r = _error(401, "missing or wrong bearer token")
                r.headers = ((b"www-authenticate", b"Bearer"),)
                return r
        infer = self._infer_targets.get(target)
        if infer is not None and method == "POST":
            return self._infer(infer[0], infer[1], headers, body)
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                if method == "POST" and parts[-1] == "infer" and (len(parts) == 4 or (len(parts) == 6 and
                                                                                      parts[3] == "versions")):
                    if len(self._infer_targets) >= _TARGETS_MAX:
                        self._infer_targets.clear()
                    self._infer_targets[target] = (parts[2], parts[4] if len(parts) == 6 else None)
                return self._model_route(method, parts[2:], headers, body)
            return self._v2_route(method, parts[1:])
        route = self.extra_routes.get((method, path))
        if route is not None:
            req = Request(method, path, query, headers, body)
            return _Deferred(lambda: self._extra(route, req))
        if path == "/metrics":
            if method != "GET":
                return _error(405, "use GET")
            return self.metrics_response()
        if any(p == path for _, p in self.extra_routes):
            return _error(405, f"method {method} not allowed on {path}")
        return _error(404, f"no route {path}")

    def metrics_response(self) -> Response | _Deferred:
        """``GET /metrics`` (a worker process overrides it: the control plane aggregates all workers)."""
        return Response(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST.encode())

    def all_ready(self) -> bool:
        """``/v2/health/ready``: every endpoint has an active version (workers also ask the control plane)."""
        return all(s.ready for s in self.registry.endpoints().values())

    # -- what both fronts ask (the REST routes above and reconciler.serving.grpc) -------------------------------

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def authorized(self, value: str | bytes | None) -> bool:
        """The ``authorization`` header or metadata value carries the bearer token (always, without one)."""
        if self._token is None:
            return True
        if value is None:
            return False
        got = value.encode("latin-1") if isinstance(value, str) else value
        return hmac.compare_digest(got, self._token)

    def catch_up(self) -> None:
        """Called before each request of a front that does not go through :meth:`handle` (a worker process
        switches to the versions its control plane committed, :mod:`reconciler.serving.workers`)."""

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "modelfleet", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}

    def model_ready(self, name: str, version: str | None) -> tuple[int, str]:
        """200: ready; 503: the endpoint exists without an active version; 404: no such model or version."""
        try:
            lease = self.registry.get(name, version)
        except EndpointNotFound:
            if name in self.registry.endpoints():
                return 503, f"model {name!r} is not ready"
            return 404, f"unknown model {name!r}"
        except VersionNotFound:
            return 404, f"model {name!r} has no loaded version {version!r}"
        lease.release()
        return 200, ""

    def model_metadata(self, name: str, version: str | None) -> tuple[int, dict[str, Any]]:
        """(200, the v2 model metadata document) or (404/503, ``{"error": …}``)."""
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            status, message = self._missing(exc, name, version)
            return status, {"error": message}
        with lease as m:
            versions = [x.version for x in self.registry.models() if x.name == name]
            return 200, {
                "name": name,
                "versions": versions,
                "platform": m.backend.platform,
                "inputs": [t.to_json() for t in m.inputs],
                "outputs": [t.to_json() for t in m.outputs],
            }

    def infer_tensors(
        self, name: str, version: str | None, size: int, decode: Callable[[], InferRequest], encode: Encoder
    ) -> Response | _Deferred | Future[Response]:
        """An inference whose request another front parses: ``decode()`` gives the tensors (raising
        :class:`~reconciler.serving.v2.codec.CodecError` for a bad request), ``encode`` the answer's body.
        ``size``: the request's bytes on the wire, which decide whether it may run on the front's event loop."""
        t0 = time.perf_counter()
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            return self._not_found(exc, name, version)
        model, path = lease.model, self._path
        if model.batcher is not None:
            if size <= INLINE_BODY_MAX:
                return path.submit_decoded(model, lease, decode, encode, t0)
            return _Deferred(lambda: path.submit_decoded(model, lease, decode, encode, t0))
        if model.inline and size <= INLINE_BODY_MAX:
            return path.run_decoded(model, lease, decode, encode, t0)
        return _Deferred(lambda: path.run_decoded(model, lease, decode, encode, t0))

    @staticmethod
    def _extra(route: RouteHandler, req: Request) -> Response:
        try:
            status, ctype, out = route(req)
        except Exception as exc:
            return _error(500, f"handler failed: {exc}")
        return Response(status, out, ctype.encode())

    def _v2_route(self, method: str, rest: list[str]) -> Response:
        if rest == [] or rest == [""]:
            if method != "GET":
                return _error(405, "use GET")
            return _json(200, self.server_metadata())
        if rest == ["health", "live"]:
            return _json(200, {"live": True}) if method == "GET" else _error(405, "use GET")
        if rest == ["health", "ready"]:
            if method != "GET":
                return _error(405, "use GET")
            ready = self.all_ready()
            return _json(200 if ready else 503, {"ready": ready})
        if rest == ["repository", "index"]:
            if method != "POST":
                return _error(405, "use POST")
            return _json(200, self._index())
        return _error(404, f"no route /v2/{'/'.join(rest)}")

    def _index(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, st in sorted(self.registry.endpoints().items()):
            if st.version is not None:
                out.append({"name": name, "version": st.version, "state": "READY", "reason": ""})
            if st.previous_version is not None:
                out.append(
                    {"name": name, "version": st.previous_version, "state": "READY", "reason": "previous"}
                )
            if st.version is None:
                reason = (st.last_failure or {}).get("message", "not loaded")
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
        return out

    def _model_route(
        self, method: str, parts: list[str], headers: dict[str, str], body: bytes
    ) -> Response | _Deferred:
        name, version, action = parts[0], None, ""
        rest = parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if len(rest) > 1:
            return _error(404, f"no route for model {name!r}")
        if rest:
            action = rest[0]
        if action == "infer":
            if method != "POST":
                return _error(405, "use POST for infer")
            return self._infer(name, version, headers, body)
        if action == "feedback":
            if method != "POST":
                return _error(405, "use POST for feedback")
            return _Deferred(lambda: self._feedback(name, version, body))  # joins in the pool, not on the loop
        if method != "GET":
            return _error(405, "use GET")
        if action == "ready":
            status, message = self.model_ready(name, version)
            if status == 404:
                return _error(404, message)
            return _json(status, {"name": name, "ready": status == 200})
        if action:
            return _error(404, f"no route {action!r} for model {name!r}")
        status, doc = self.model_metadata(name, version)
        return _json(status, doc) if status == 200 else _error(status, doc["error"])

    def _feedback(self, name: str, version: str | None, body: bytes) -> Response:
        """Ground-truth labels for earlier requests, joined by the version's monitor (reconciler.drift)."""
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            return self._not_found(exc, name, version)
        with lease as m:
            if m.observer is None:
                return _error(409, f"model {name!r} is not monitored: no feedback join")
            status, answer = m.observer.feedback(body)
        return _json(status, answer)

    def _not_found(self, exc: Exception, name: str, version: str | None) -> Response:
        return _error(*self._missing(exc, name, version))

    def _missing(self, exc: Exception, name: str, version: str | None) -> tuple[int, str]:
        if isinstance(exc, VersionNotFound):
            return 404, f"model {name!r} has no loaded version {version!r}"
        if name in self.registry.endpoints():
            return 503, f"model {name!r} is not ready"
        return 404, f"unknown model {name!r}"

    def _infer(
        self, name: str, version: str | None, headers: dict[str, str], body: bytes
    ) -> Response | _Deferred | Future[Response]:
        t0 = time.perf_counter()
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            return self._not_found(exc, name, version)
        model, path = lease.model, self._path
        if model.batcher is not None:
            if len(body) <= INLINE_BODY_MAX or _cheap_to_decode(headers, body):
                return path.submit(model, lease, headers, body, t0)  # decoding costs less than the thread hop
            return _Deferred(lambda: path.submit(model, lease, headers, body, t0))
        if model.inline and len(body) <= INLINE_BODY_MAX:
            return path.run(model, lease, headers, body, t0, inline=True)
        return _Deferred(lambda: path.run(model, lease, headers, body, t0))

    def _run(self, model: LoadedModel, lease: Any, headers: dict[str, str], body: bytes, t0: float) -> Response:
        return self._path.run(model, lease, headers, body, t0)  # the name bench/ and older callers use


def _cheap_to_decode(headers: dict[str, str], body: bytes) -> bool:
    """A binary-tensor body with a small JSON header and no BYTES tensor: decoding it parses the header and
    wraps the rest (``np.frombuffer``), whatever the body's size."""
    hl = headers.get("inference-header-content-length", "")
    return hl.isdigit() and int(hl) <= INLINE_BODY_MAX and b"BYTES" not in memoryview(body)[: int(hl)].tobytes()
