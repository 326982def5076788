"""The gRPC front's server: ``inference.GRPCInferenceService`` on ``grpc.aio``, in a thread of its own (on a
``uvloop`` event loop where available).

Each RPC is a coroutine on this thread's event loop that calls the application core
(:class:`~reconciler.serving.app.v2app.V2App`) the HTTP front calls, so both see one registry, token, set of
metrics, batches and hooks. ``ModelInfer`` takes the request's bytes (no deserializer: the size is known before
parsing), parses them, and answers like a REST request: inline on the loop for a fast model and a small request,
else in a small thread pool, or from the model's adaptive batch; that work hands its answer back to the loop
and is never tied to the call, so a client that cancels (or whose deadline passes) never cancels work that holds
a lease. A large request's tensors are not copied out of the received message (:mod:`~.wire`).

Limits (:func:`server_options`): the :class:`~reconciler.serving.limits.ServerLimits` a REST client meets become
gRPC's own — ``maxBodyBytes`` the largest message, ``maxPipelined`` the concurrent streams per connection (each
with a fixed receive window), ``maxConnections`` the connections and the inferences whose message has arrived
(more: RESOURCE_EXHAUSTED; see :class:`_Budget`), ``maxInflightBytes``
the request bytes being decoded or run at once (more: RESOURCE_EXHAUSTED), ``maxHeaderBytes`` the metadata,
``headerTimeout`` the handshake, ``idleTimeout`` an idle connection, ``bodyTimeout`` the keepalive ping a
connection must answer (a client that stops reading is dropped).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from reconciler.serving.app.v2app import V2App
from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb
from reconciler.serving.grpc.tensors import RAW_INPUT_FIELD, decode, encoder
from reconciler.serving.grpc.wire import split_bytes_field
from reconciler.serving.limits import ServerLimits
from reconciler.serving.v2.codec import JsonLimits
from reconciler.serving.v2.handler import Deferred, Response

SERVICE = "inference.GRPCInferenceService"
_INT_MAX = 2**31 - 1
#: Requests larger than this have their raw contents taken off the wire as views (:func:`parse_request`).
SPLIT_MIN = 64 * 1024
#: The receive window of every stream and of the connection (``grpc.http2.lookahead_bytes``) and the largest
#: frame, fixed: what grpc announces at the start of a connection, where its BDP probing would then grow them.
STREAM_WINDOW = 4 * 1024 * 1024

#: An HTTP-style status of the application core → the gRPC status code a client sees.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def server_options(limits: ServerLimits, reuse_port: bool, connection_cap: int) -> list[tuple[str, Any]]:
    """gRPC channel arguments for ``limits`` (see the module docstring)."""
    ms = lambda seconds: min(_INT_MAX, int(seconds * 1000))  # noqa: E731
    opts: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", min(_INT_MAX, limits.max_body_bytes)),
        ("grpc.max_concurrent_streams", min(_INT_MAX, limits.max_pipelined)),
        ("grpc.max_metadata_size", min(_INT_MAX, limits.max_header_bytes)),
        ("grpc.absolute_max_metadata_size", min(_INT_MAX, limits.max_header_bytes)),
        ("grpc.max_allowed_incoming_connections", min(_INT_MAX, connection_cap)),
        # grpc's BDP probing grows a fast sender's windows past their initial 4 MiB: what a connection may hold
        # before a message is refused or finished (four 64 MiB messages over maxBodyBytes put +5-89 MB of RSS on a
        # loaded host, +5-13 MB with the windows fixed). CPU per request the same within noise (the CNN's 602 KB).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW),
        ("grpc.http2.max_frame_size", STREAM_WINDOW),  # without probing, grpc would announce HTTP/2's 16 KiB
    ]
    if limits.header_timeout:
        opts.append(("grpc.server_handshake_timeout_ms", ms(limits.header_timeout)))
    if limits.idle_timeout:
        opts.append(("grpc.max_connection_idle_ms", ms(limits.idle_timeout)))
    if limits.body_timeout:
        opts += [("grpc.keepalive_time_ms", ms(limits.body_timeout)), ("grpc.keepalive_timeout_ms", ms(limits.body_timeout)),
                 ("grpc.http2.max_pings_without_data", 0)]
    return opts


class _Budget:
    """The inferences whose message has arrived and that are being decoded or run (at most ``calls``: the gRPC
    side's ``maxConnections`` calls in progress) and their request bytes (at most ``limit``: ``maxInflightBytes``);
    loop thread only.

    grpc.aio's own ``maximum_concurrent_rpcs`` is not used for this: it counts a call from its headers on, so
    streams whose message never finishes took every slot and health calls were refused (RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: int, calls: int) -> None:
        self.limit, self.used = limit, 0
        self.calls, self.running = calls, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit or self.running >= self.calls:
            return False
        self.used += n
        self.running += 1
        return True

    def give(self, n: int) -> None:
        self.used -= n
        self.running -= 1


class GrpcServer:
    """The gRPC front of one process, over ``app``. ``start()`` returns once it listens (``port`` is then set)."""

    def __init__(self, app: V2App, *, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None,
                 reuse_port: bool = False, workers: int | None = None) -> None:
        self.app = app
        self.host, self.port = host, port
        self.limits = limits or app.limits
        self.tls = (tls_cert, tls_key) if tls_cert is not None else None
        self.reuse_port = reuse_port
        self._json_limits = JsonLimits(self.limits.max_json_bytes, self.limits.max_json_elements)
        self._budget = _Budget(self.limits.max_inflight_bytes, self.limits.connection_cap())
        self._workers = workers or min(4, (os.cpu_count() or 2))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc{'s' if self.tls else ''}://{host}:{self.port}"

    @property
    def connection_cap(self) -> int:
        return self.limits.connection_cap()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("gRPC server already started")
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="modelfleet-grpc")
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(started, failure), name="modelfleet-grpc",
                                        daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._pool.shutdown(wait=False)
            raise failure[0]

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:  # uvloop where available, as for the HTTP front: 14-18% less CPU per call (bench_grpc's method)
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(started))
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            if not started.is_set():
                failure.append(exc)
                started.set()
        finally:
            loop.close()

    async def _serve(self, started: threading.Event) -> None:
        self._stopped = asyncio.Event()
        # No maximum_concurrent_rpcs (see _Budget): the streams are bounded by connections × maxPipelined.
        server = grpc.aio.server(options=server_options(self.limits, self.reuse_port, self.connection_cap))
        server.add_generic_rpc_handlers((self._handlers(),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.tls is not None:
                cert = Path(self.tls[0]).read_bytes()  # type: ignore[arg-type]
                key = Path(self.tls[1]).read_bytes() if self.tls[1] is not None else cert
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} (gRPC): {exc}") from None
        self.port = bound
        await server.start()
        self._server = server
        started.set()
        await self._stopped.wait()
        await server.stop(1.0)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stopped is not None:
            loop.call_soon_threadsafe(self._stopped.set)
        thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread = self._loop = self._server = None

    def __enter__(self) -> GrpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the service ------------------------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.FromString if request is not None else None,
                response_serializer=response.SerializeToString if response is not None else None)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": unary(self.model_infer, None, None),  # bytes in, bytes out
        })

    async def _check(self, context: Any) -> None:
        """The bearer token (metadata ``authorization``), then the worker's generation check."""
        app = self.app
        if app.token_required:
            value = None
            for key, v in context.invocation_metadata() or ():
                if key == "authorization":
                    value = v
                    break
            if not app.authorized(value):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        app.catch_up()

    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        self.app.catch_up()
        return pb.ServerReadyResponse(ready=self.app.all_ready())

    async def server_metadata(self, request: Any, context: Any) -> Any:
        await self._check(context)
        return pb.ServerMetadataResponse(**self.app.server_metadata())

    async def model_ready(self, request: Any, context: Any) -> Any:
        await self._check(context)
        status, message = self.app.model_ready(request.name, request.version or None)
        if status == 404:
            await context.abort(grpc.StatusCode.NOT_FOUND, message)
        return pb.ModelReadyResponse(ready=status == 200)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        await self._check(context)
        status, doc = self.app.model_metadata(request.name, request.version or None)
        if status != 200:
            await context.abort(STATUS_CODES.get(status, grpc.StatusCode.UNKNOWN), doc["error"])
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]])

    async def model_infer(self, data: bytes, context: Any) -> bytes:
        if self.app.token_required:
            await self._check(context)
        else:
            self.app.catch_up()
        size = len(data)
        if not self._budget.take(size):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: too many calls or request bytes in flight")
        try:
            try:
                msg, raw = parse_request(data)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends, WireError
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}")
            del data
            limits = self._json_limits
            result = self.app.infer_tensors(msg.model_name, msg.model_version or None, size,
                                            lambda: decode(msg, limits, raw),
                                            _ENCODERS[bool(raw) or bool(msg.raw_input_contents)])
            resp = result if isinstance(result, Response) else await self._settle(result)
        finally:
            self._budget.give(size)
        if resp.status != 200:
            await context.abort(STATUS_CODES.get(resp.status, grpc.StatusCode.UNKNOWN), _message(resp))
        return resp.body

    async def _settle(self, result: Response | Deferred | concurrent.futures.Future[Response]) -> Response:
        """The answer of work in the pool or a batch. The work is not tied to the future awaited here: a call
        that is cancelled (or whose deadline passes) stops waiting, and the work, which holds a lease, runs on and
        releases it."""
        loop = asyncio.get_running_loop()
        while not isinstance(result, Response):
            answer: asyncio.Future[Any] = loop.create_future()
            if isinstance(result, Deferred):
                self._pool.submit(_run_then, result.fn, loop, answer)  # type: ignore[union-attr]
            else:
                result.add_done_callback(lambda f, a=answer: _relay(f, loop, a))
            result = await answer
        return result


def parse_request(data: bytes) -> tuple[Any, list[memoryview] | None]:
    """A ``ModelInferRequest`` and, for a large one, its ``raw_input_contents`` as views of ``data`` (protobuf
    would copy them twice, :mod:`.wire`); a small one is parsed whole (the walk would cost more than the copy)."""
    if len(data) <= SPLIT_MIN:
        return pb.ModelInferRequest.FromString(data), None
    rest, raw = split_bytes_field(data, RAW_INPUT_FIELD)
    return pb.ModelInferRequest.FromString(rest), raw or None


def _run_then(fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, answer: asyncio.Future[Any]) -> None:
    """In the pool: run ``fn`` and hand its result to ``answer`` on the loop."""
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001 - the call answers INTERNAL; the pool thread lives on
        loop.call_soon_threadsafe(_fail, answer, exc)
        return
    loop.call_soon_threadsafe(_deliver, answer, value)


def _relay(done: concurrent.futures.Future[Any], loop: asyncio.AbstractEventLoop,
           answer: asyncio.Future[Any]) -> None:
    """A batch's future is done (in the batch's thread): hand its result to ``answer`` on the loop."""
    exc = done.exception()
    if exc is not None:
        loop.call_soon_threadsafe(_fail, answer, exc)
    else:
        loop.call_soon_threadsafe(_deliver, answer, done.result())


def _deliver(answer: asyncio.Future[Any], value: Any) -> None:
    if not answer.done():  # cancelled meanwhile: nobody waits for it
        answer.set_result(value)


def _fail(answer: asyncio.Future[Any], exc: BaseException) -> None:
    if not answer.done():
        answer.set_exception(exc)


#: The core's ``encode`` for a typed (False) and a raw (True) request.
_ENCODERS = {False: encoder(False), True: encoder(True)}


def _message(resp: Response) -> str:
    """The message of an error the core answered (``{"error": …}``)."""
    try:
        return str(json.loads(resp.body)["error"])
    except (ValueError, KeyError, TypeError):
        return resp.body[:1000].decode("utf-8", "replace")
