"""Open Inference Protocol (KServe v2 REST) server over the model registry.

HTTP stack: a plain asyncio ``Protocol`` with the ``httptools`` parser on a ``uvloop`` event loop (stdlib
asyncio when uvloop is absent), in one background thread. Measured against Granian (a Rust server, RSGI and
ASGI), uvicorn+httptools running a raw ASGI app and the stdlib ``ThreadingHTTPServer``, each carrying this
module's ``V2App`` in a process of its own (``bench/bench_serving.py --only stacks``), it has the lowest
latency and CPU per request: no ASGI scope/message dicts and no per-request coroutine for the tiny-model path.
Requests of up to ``INLINE_BODY_MAX`` bytes to models whose warm-up p50 is under ``registry.INLINE_BELOW_MS``
run inline on the event loop (a thread hop would cost more than the inference); everything else (slower
models, and large requests whatever the model's speed) is decoded, run and encoded in a small thread pool so
the loop keeps accepting, parsing and answering health checks. Connections, flow control, limits and timeouts are
:mod:`~reconciler.serving.http.http1`'s job (limits: :class:`~reconciler.serving.limits.ServerLimits`); this module
holds the routes (:class:`V2App`) and the listening sockets (:class:`InferenceServer`).

Routes: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{name}[/versions/{v}][/ready|/infer]``,
``POST /v2/repository/index``, ``/metrics`` (the default prometheus_client registry) and ``extra_routes``.
Errors are ``{"error": "…"}`` with a 4xx/5xx status. No signal handlers are installed: the agent embeds this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hmac
import os
import resource
import socket
import ssl
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from reconciler import __version__
from reconciler.serving.app.inferpath import InferPath
from reconciler.serving.http.http1 import ConnectionHub
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import EndpointNotFound, LoadedModel, ModelRegistry, VersionNotFound
from reconciler.serving.v2.codec import (
    JsonLimits,
)
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
    """One model version's metric children, bound once (``labels()`` costs a lock and a dict per request)."""

    __slots__ = ("name", "version", "requests", "latency", "inflight", "_failures", "_count", "_sum", "_bounds",
                 "_buckets")

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

    def counted(self, seconds: float) -> None:
        """One request answered in ``seconds``."""
        if self._count is None:
            self.requests.inc()
            self.latency.observe(seconds)
            return
        self._count(1)
        self._sum(seconds)
        self._buckets[bisect_left(self._bounds, seconds)](1)  # the first bucket whose bound is >= seconds

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
            got = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(got, self._token):
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
            return _json(
                200,
                {
                    "name": "modelfleet",
                    "version": __version__,
                    "extensions": ["binary_tensor_data", "model_repository"],
                },
            )
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
            try:
                lease = self.registry.get(name, version)
            except EndpointNotFound:
                if name in self.registry.endpoints():
                    return _json(503, {"name": name, "ready": False})
                return _error(404, f"unknown model {name!r}")
            except VersionNotFound:
                return _error(404, f"model {name!r} has no loaded version {version!r}")
            lease.release()
            return _json(200, {"name": name, "ready": True})
        if action:
            return _error(404, f"no route {action!r} for model {name!r}")
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            return self._not_found(exc, name, version)
        with lease as m:
            versions = [x.version for x in self.registry.models() if x.name == name]
            return _json(
                200,
                {
                    "name": name,
                    "versions": versions,
                    "platform": m.backend.platform,
                    "inputs": [t.to_json() for t in m.inputs],
                    "outputs": [t.to_json() for t in m.outputs],
                },
            )

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
        if isinstance(exc, VersionNotFound):
            return _error(404, f"model {name!r} has no loaded version {version!r}")
        if name in self.registry.endpoints():
            return _error(503, f"model {name!r} is not ready")
        return _error(404, f"unknown model {name!r}")

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


class InferenceServer:
    """The KServe v2 server in a background thread. ``start()`` returns once it listens."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        host: str = "127.0.0.1",
        port: int | None = 0,
        unix_socket: str | os.PathLike[str] | None = None,
        auth_token: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        max_body_bytes: int | None = None,
        extra_routes: Mapping[tuple[str, str], RouteHandler] | None = None,
        workers: int | None = None,
        limits: ServerLimits | None = None,
        app: V2App | None = None,
        reuse_port: bool = False,
        unix_listener: socket.socket | None = None,
    ) -> None:
        if port is None and unix_socket is None:
            raise ValueError("give a TCP port, a unix socket, or both")
        limits = limits or ServerLimits()
        if max_body_bytes is not None:
            limits = limits.with_options({"maxBodyBytes": int(max_body_bytes)})
        self.limits = limits
        self.registry = registry
        self.host = host
        self.port: int | None = port
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        self.max_body_bytes = limits.max_body_bytes
        # A worker process (reconciler.serving.workers) brings its own app, shares the TCP port with its siblings
        # (SO_REUSEPORT: the kernel spreads connections) and accepts on the control plane's Unix socket.
        self.app = app or V2App(registry, auth_token=auth_token, extra_routes=extra_routes, limits=limits)
        self._reuse_port = reuse_port
        self._unix_listener = unix_listener
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls_cert), str(tls_key) if tls_key is not None else None)
            self._ssl = ctx
        self._workers = workers or min(4, (os.cpu_count() or 2))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._hub: ConnectionHub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def connection_cap(self) -> int:
        """Connections served at once: ``max_connections``, kept below the process's open-file limit."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return self.limits.connection_cap(None if soft == resource.RLIM_INFINITY else soft)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("server already started")
        started = threading.Event()
        failure: list[BaseException] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._workers, thread_name_prefix="modelfleet-infer"
        )
        self._hub = ConnectionHub(self.app, self.limits, self._pool, self.connection_cap)
        self._thread = threading.Thread(
            target=self._run, args=(started, failure), name="modelfleet-serving", daemon=True
        )
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._pool.shutdown(wait=False)
            raise failure[0]

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            return asyncio.new_event_loop()

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = self._new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            failure.append(exc)
            started.set()
            for s in self._sockets:
                s.close()
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._hub is not None
        self._hub.start(loop)
        if self.port is not None:
            family, _, _, _, addr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            self._sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            self.port = sock.getsockname()[1]
        if self._unix_listener is not None:
            self._sockets.append(self._unix_listener)
        elif self.unix_socket is not None:
            if self.unix_socket.is_socket():
                self.unix_socket.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sockets.append(sock)
            sock.bind(str(self.unix_socket))
            os.chmod(self.unix_socket, 0o660)
        for sock in self._sockets:
            sock.listen(1024)
            sock.setblocking(False)
            self._accepting.append(loop.create_task(self._accept(sock)))

    async def _accept(self, listener: socket.socket) -> None:
        """Accept while below the connection cap; at the cap, make room (or wait) before accepting more."""
        loop = asyncio.get_running_loop()
        hub = self._hub
        assert hub is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await asyncio.sleep(0.1)  # out of descriptors despite the cap: let closes catch up
                    continue
                if listener.fileno() < 0:
                    return
                raise
            await hub.wait_for_slot()
            hub.opened()
            loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        hub = self._hub
        assert hub is not None
        proto = hub.new_connection()
        handshake = {"ssl_handshake_timeout": self.limits.header_timeout or None} if self._ssl else {}
        try:
            await loop.connect_accepted_socket(lambda: proto, conn, ssl=self._ssl, **handshake)
        except Exception:  # failed or timed-out TLS handshake, or the client left: nothing to answer
            conn.close()
            if not proto.counted and proto.transport is None:
                hub.closed()

    def stop(self) -> None:
        """Stop listening, close connections, and join the thread. The registry stays as it is."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            for task in self._accepting:
                task.cancel()
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
            if self._hub is not None:
                self._hub.stop()
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(shutdown)
        thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.unix_socket is not None and self._unix_listener is None and self.unix_socket.is_socket():
            self.unix_socket.unlink()
        self._thread = None
        self._loop = None
        self._sockets = []
        self._accepting = []

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
