"""Open Inference Protocol (KServe v2 REST) server over the model registry.

HTTP stack: a plain asyncio ``Protocol`` with the ``httptools`` parser on a ``uvloop`` event loop (stdlib
asyncio when uvloop is absent), in one background thread. Measured against uvicorn+httptools running a raw ASGI
app and the stdlib ``ThreadingHTTPServer`` (see ``bench/bench_serving.py``), it has the lowest per-request
overhead: no ASGI scope/message dicts and no per-request coroutine for the tiny-model path. Models whose warm-up
p50 is under ``registry.INLINE_BELOW_MS`` run inline on the event loop (a thread hop would cost more than the
inference); slower models run in a small thread pool so the loop keeps accepting and parsing.

Routes: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{name}[/versions/{v}][/ready|/infer]``,
``POST /v2/repository/index``, ``/metrics`` (the default prometheus_client registry) and ``extra_routes``.
Errors are ``{"error": "…"}`` with a 4xx/5xx status. No signal handlers are installed: the agent embeds this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from reconciler import __version__
from reconciler.serving.registry import EndpointNotFound, LoadedModel, ModelRegistry, VersionNotFound
from reconciler.serving.v2codec import (
    CodecError,
    decode_request,
    encode_response,
    select_outputs,
    validate_inputs,
)

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
INFLIGHT = Gauge("modelfleet_inference_inflight", "Inference requests being processed.", ["model"])

JSON_CT = b"application/json"
OCTET_CT = b"application/octet-stream"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    """What an ``extra_routes`` handler receives."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON_CT
    headers: tuple[tuple[bytes, bytes], ...] = ()


#: An ``extra_routes`` handler returns (status, content type, body).
RouteHandler = Callable[[Request], tuple[int, str, bytes]]


def _json(status: int, doc: Any) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


class _Deferred:
    """Work to run in the thread pool; produces a :class:`Response`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Response]) -> None:
        self.fn = fn


class _Metrics:
    """Labelled metric children cached per (model, version): ``labels()`` is too slow for every request."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._inflight: dict[str, Any] = {}

    def for_version(self, model: str, version: str) -> tuple[Any, Any]:
        key = (model, version)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = (REQUESTS.labels(model, version), LATENCY.labels(model, version))
        return hit

    def inflight(self, model: str) -> Any:
        g = self._inflight.get(model)
        if g is None:
            g = self._inflight[model] = INFLIGHT.labels(model)
        return g


class V2App:
    """Transport-independent request handling: ``handle`` returns a Response or deferred work."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        auth_token: str | None = None,
        extra_routes: Mapping[tuple[str, str], RouteHandler] | None = None,
    ) -> None:
        self.registry = registry
        self._token = f"Bearer {auth_token}".encode() if auth_token else None
        self.extra_routes = dict(extra_routes or {})
        self._metrics = _Metrics()

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response | _Deferred:
        path, _, query = target.partition("?")
        if self._token is not None and not path.startswith("/v2/health/"):
            got = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(got, self._token):
                r = _error(401, "missing or wrong bearer token")
                r.headers = ((b"www-authenticate", b"Bearer"),)
                return r
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                return self._model_route(method, parts[2:], headers, body)
            return self._v2_route(method, parts[1:])
        route = self.extra_routes.get((method, path))
        if route is not None:
            req = Request(method, path, query, headers, body)
            return _Deferred(lambda: self._extra(route, req))
        if path == "/metrics":
            if method != "GET":
                return _error(405, "use GET")
            return Response(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST.encode())
        if any(p == path for _, p in self.extra_routes):
            return _error(405, f"method {method} not allowed on {path}")
        return _error(404, f"no route {path}")

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
            states = self.registry.endpoints()
            ready = all(s.ready for s in states.values())
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

    def _not_found(self, exc: Exception, name: str, version: str | None) -> Response:
        if isinstance(exc, VersionNotFound):
            return _error(404, f"model {name!r} has no loaded version {version!r}")
        if name in self.registry.endpoints():
            return _error(503, f"model {name!r} is not ready")
        return _error(404, f"unknown model {name!r}")

    def _infer(
        self, name: str, version: str | None, headers: dict[str, str], body: bytes
    ) -> Response | _Deferred:
        t0 = time.perf_counter()
        try:
            lease = self.registry.get(name, version)
        except (EndpointNotFound, VersionNotFound) as exc:
            return self._not_found(exc, name, version)
        model = lease.model
        if model.inline:
            return self._run(lease.model, lease, headers, body, t0)
        return _Deferred(lambda: self._run(model, lease, headers, body, t0))

    def _run(
        self, model: LoadedModel, lease: Any, headers: dict[str, str], body: bytes, t0: float
    ) -> Response:
        requests, latency = self._metrics.for_version(model.name, model.version)
        inflight = self._metrics.inflight(model.name)
        inflight.inc()
        req = None
        try:
            hl = headers.get("inference-header-content-length")
            try:
                header_len = int(hl) if hl is not None else None
            except ValueError:
                raise CodecError(f"Inference-Header-Content-Length is not an integer: {hl!r}") from None
            req = decode_request(body, header_len)
            feeds = validate_inputs(req, model.inputs)
            requested = select_outputs(req, model.output_names)
            try:
                outputs = model.infer(feeds, [r.name for r in requested])
            except CodecError:
                raise
            except Exception as exc:
                resp = _error(500, f"inference failed: {exc}")
            else:
                out, hlen = encode_response(model.name, model.version, req.id, outputs, requested)
                if hlen is None:
                    resp = Response(200, out)
                else:
                    resp = Response(200, out, OCTET_CT, ((b"inference-header-content-length", b"%d" % hlen),))
        except CodecError as exc:
            resp = _error(400, str(exc))
            if model.observer is not None:
                model.observer.observe_rejection()
                rejected_inputs = getattr(model.observer, "observe_rejected_inputs", None)
                if rejected_inputs is not None and req is not None:  # decoded but failed validation
                    rejected_inputs(req.inputs)
        finally:
            lease.release()
            inflight.dec()
        requests.inc()
        latency.observe(time.perf_counter() - t0)
        if resp.status != 200:
            FAILURES.labels(model.name, model.version, str(resp.status)).inc()
        return resp


class _BodyTooLarge(Exception):
    pass


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; pipelined requests are answered in order."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.app = server.app
        self.max_body = server.max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.busy = False
        self.pending: deque[tuple[str, str, dict[str, str], bytes, bool]] = deque()
        self.too_large = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_and_close(_error(400, "protocol upgrade not supported"))
        except httptools.HttpParserError as exc:
            if self.too_large:
                self._send_and_close(
                    _error(413, f"request body larger than the limit of {self.max_body} bytes")
                )
            else:
                self._send_and_close(_error(400, f"malformed HTTP request: {exc}"))

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        cl = self.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > self.max_body:
            self.too_large = True
            raise _BodyTooLarge()
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self.too_large = True
            raise _BodyTooLarge()
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        item = (
            self.parser.get_method().decode("ascii"),
            self.url.decode("latin-1"),
            self.headers,
            body,
            self.parser.should_keep_alive(),
        )
        if self.busy:
            self.pending.append(item)
        else:
            self._dispatch(item)

    def _dispatch(self, item: tuple[str, str, dict[str, str], bytes, bool]) -> None:
        method, url, headers, body, keep_alive = item
        try:
            result = self.app.handle(method, url, headers, body)
        except Exception as exc:  # a bug must cost one request, never the connection or the server
            result = _error(500, f"internal error: {exc}")
        if isinstance(result, Response):
            self._write(result, keep_alive)
            return
        self.busy = True
        loop = self.server._loop
        assert loop is not None
        fut = loop.run_in_executor(self.server._pool, _run_deferred, result)
        fut.add_done_callback(lambda f: self._deferred_done(f, keep_alive))

    def _deferred_done(self, fut: asyncio.Future[Response], keep_alive: bool) -> None:
        self.busy = False
        try:
            resp = fut.result()
        except BaseException as exc:  # noqa: BLE001 - cancelled at shutdown or a bug: answer, don't hang
            resp = _error(500, f"internal error: {exc!r}")
        self._write(resp, keep_alive)
        while self.pending and not self.busy and self.transport is not None:
            self._dispatch(self.pending.popleft())

    def _write(self, resp: Response, keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
            resp.status,
            _REASONS.get(resp.status, b"Unknown"),
            resp.content_type,
            len(resp.body),
        )
        for k, v in resp.headers:
            head += k + b": " + v + b"\r\n"
        if not keep_alive:
            head += b"connection: close\r\n"
        if len(resp.body) < 65536:
            t.write(head + b"\r\n" + resp.body)
        else:
            t.writelines((head, b"\r\n", resp.body))
        if not keep_alive:
            t.close()

    def _send_and_close(self, resp: Response) -> None:
        self._write(resp, False)


def _run_deferred(d: _Deferred) -> Response:
    return d.fn()


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
        max_body_bytes: int = 64 * 1024 * 1024,
        extra_routes: Mapping[tuple[str, str], RouteHandler] | None = None,
        workers: int | None = None,
    ) -> None:
        if port is None and unix_socket is None:
            raise ValueError("give a TCP port, a unix socket, or both")
        self.registry = registry
        self.host = host
        self.port: int | None = port
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        self.max_body_bytes = int(max_body_bytes)
        self.app = V2App(registry, auth_token=auth_token, extra_routes=extra_routes)
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls_cert), str(tls_key) if tls_key is not None else None)
            self._ssl = ctx
        self._workers = workers or min(4, (os.cpu_count() or 2))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[_HttpProtocol] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("server already started")
        started = threading.Event()
        failure: list[BaseException] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._workers, thread_name_prefix="modelfleet-infer"
        )
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
            loop.close()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        factory = lambda: _HttpProtocol(self)  # noqa: E731
        if self.port is not None:
            srv = await loop.create_server(factory, self.host, self.port, ssl=self._ssl, backlog=1024)
            self._servers.append(srv)
            self.port = srv.sockets[0].getsockname()[1]
        if self.unix_socket is not None:
            if self.unix_socket.is_socket():
                self.unix_socket.unlink()
            srv = await loop.create_unix_server(factory, str(self.unix_socket), ssl=self._ssl, backlog=1024)
            os.chmod(self.unix_socket, 0o660)
            self._servers.append(srv)

    def stop(self) -> None:
        """Stop listening, close connections, and join the thread. The registry stays as it is."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            for s in self._servers:
                s.close()
            for c in list(self._connections):
                if c.transport is not None:
                    c.transport.close()
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(shutdown)
        thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.unix_socket is not None and self.unix_socket.is_socket():
            self.unix_socket.unlink()
        self._thread = None
        self._loop = None
        self._servers = []

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
