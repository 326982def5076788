"""Open Inference Protocol (KServe v2 REST) server over the model registry.

HTTP stack: a plain asyncio ``Protocol`` with the ``httptools`` parser on a ``uvloop`` event loop (stdlib
asyncio when uvloop is absent), in one background thread. Measured against Granian (a Rust server, RSGI and
ASGI), uvicorn+httptools running a raw ASGI app and the stdlib ``ThreadingHTTPServer``, each carrying this
application core's ``V2App`` in a process of its own (``bench/bench_serving.py --only stacks``), it has the lowest
latency and CPU per request: no ASGI scope/message dicts and no per-request coroutine for the tiny-model path.
Requests of up to ``INLINE_BODY_MAX`` bytes to models whose warm-up p50 is under ``registry.INLINE_BELOW_MS``
run inline on the event loop (a thread hop would cost more than the inference); everything else (slower
models, and large requests whatever the model's speed) is decoded, run and encoded in a small thread pool so
the loop keeps accepting, parsing and answering health checks. Connections, flow control, limits and timeouts are
:mod:`~reconciler.serving.http.http1`'s job (limits: :class:`~reconciler.serving.limits.ServerLimits`); the routes
are the application core's (:class:`~reconciler.serving.app.v2app.V2App`); this module holds the listening
sockets (:class:`InferenceServer`).

Routes: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{name}[/versions/{v}][/ready|/infer]``,
``POST /v2/repository/index``, ``/metrics`` (the default prometheus_client registry) and ``extra_routes``.
Errors are ``{"error": "…"}`` with a 4xx/5xx status. No signal handlers are installed: the agent embeds this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path

from reconciler.serving.app.v2app import RouteHandler, V2App
from reconciler.serving.http.http1 import ConnectionHub
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import ModelRegistry


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
        return self.limits.connection_cap()

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
