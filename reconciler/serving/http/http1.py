"""HTTP/1.1 connections of the inference server: parsing, flow control, limits and timeouts.

One :class:`HttpConnection` (an asyncio ``Protocol`` over the ``httptools`` parser) per client; one
:class:`ConnectionHub` per server holds what the connections share: the set of open connections and their cap,
the bytes-in-flight budget, and the timer that enforces the timeouts. What the connection does with a parsed
request is the :class:`Handler`'s business (``server.V2App``): it answers with a :class:`Response` at once, or
with :class:`Deferred` work that runs in the server's thread pool, or with a ``concurrent.futures.Future`` another
thread completes (adaptive batching).

Flow control, in the order a hostile client meets it:

- the request target and the header block are capped (414 / 431) while they arrive; pieces are collected in a
  list, and the bytes fed to the parser in the header phase are counted, so neither our code nor the parser's
  own concatenation can grow without bound;
- the body is capped per request (413, the limit may depend on the request: JSON vs binary), and all bodies
  being received, queued or processed count against one budget (503 + ``Retry-After`` when it is spent);
  a ``Content-Length`` body of ``DIRECT_BODY`` bytes or more is read from the socket straight into its own
  buffer (``BufferedProtocol``: no bytes per read, no parser copy, no join): a tensor reaches the runtime uncopied;
- the connection stops reading while a response is being computed, while parsed requests wait, or while the
  transport's write buffer is above its high-water mark (``pause_writing``); unparsed bytes are kept (at most
  one read) and fed when the queue drains, in slices, so a burst of pipelined requests is parsed a few at a
  time; more than ``max_pipelined`` queued requests end the connection after the queued ones are answered;
- timeouts: the header block must arrive within ``header_timeout``, a body or a response may not stall for
  longer than ``body_timeout``, a keep-alive connection may idle for ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from http import HTTPStatus

import httptools

from reconciler.serving.http.bodypool import BodyPool
from reconciler.serving.limits import ServerLimits
from reconciler.serving.v2.handler import Handler, Response, error_response

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Header bytes fed to the parser at once (a body of known length is fed whole). A connection answers at most
#: one request per event-loop callback; the rest of a pipelined burst waits for the next turn, so it shares the
#: loop with every other connection. 512 bytes hold at most 28 requests: fewer than ``max_pipelined``'s default.
FEED_SLICE = 512
_IDLE, _HEAD, _BODY = 0, 1, 2
DIRECT_BODY = 64 * 1024  # Content-Length bodies this large are received into one buffer of their size
_READ_BUF = 64 * 1024  # what the socket is read into otherwise (heads, small and chunked bodies)
#: Status line and content type per (status, content type), built once: the head of a response is these bytes,
#: its length and its extra headers. Bounded: extra routes may answer with any content type.
_HEADS: dict[tuple[int, bytes], bytes] = {}
_HEADS_MAX = 256


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``response``, then close."""

    def __init__(self, response: Response) -> None:
        self.response = response


class _Req:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "reserved", "error")

    def __init__(
        self, method: str, url: str, headers: dict[str, str], body: bytes, keep_alive: bool, reserved: int,
        error: Response | None = None,
    ) -> None:
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.keep_alive, self.reserved, self.error = keep_alive, reserved, error


class ConnectionHub:
    """What all connections of one server share: the connection set and cap, the in-flight budget, timeouts."""

    def __init__(
        self, handler: Handler, limits: ServerLimits, pool: concurrent.futures.Executor, cap: int
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.pool = pool
        self.cap = cap
        self.connections: set[HttpConnection] = set()
        self.open = 0  # accepted sockets, including TLS handshakes not finished yet
        self.inflight_bytes = 0
        self.bodies = BodyPool(min(64 << 20, limits.max_inflight_bytes))  # binary-tensor bodies, reused
        #: The loop's clock as of the last timeout sweep: timeouts are enforced per sweep tick anyway, and reading
        #: an attribute per request is cheaper than asking the clock three times.
        self.now = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slot_free: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_cap = limits.max_url_bytes + limits.max_header_bytes + FEED_SLICE

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = loop.time()
        self._slot_free = asyncio.Event()
        timeouts = [t for t in (self.limits.header_timeout, self.limits.body_timeout, self.limits.idle_timeout) if t]
        if timeouts:
            self._tick = min(1.0, max(0.05, min(timeouts) / 4))
            self._timer = loop.call_later(self._tick, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()

    # --- connection slots ---------------------------------------------------------------------------------
    def new_connection(self) -> HttpConnection:
        return HttpConnection(self)

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
        if self._slot_free is not None and self.open < self.cap:
            self._slot_free.set()

    async def wait_for_slot(self) -> None:
        """At the cap: evict the connection that has waited on its client the longest, or wait for a close."""
        assert self._slot_free is not None
        while self.open >= self.cap:
            if self._evict_one():
                return
            self._slot_free.clear()
            await self._slot_free.wait()

    def _evict_one(self) -> bool:
        victim, since = None, float("inf")
        for c in self.connections:
            t = c.waiting_on_client_since()
            if t is not None and t < since:
                victim, since = c, t
        if victim is None:
            return False
        victim.evict()
        return True

    # --- bytes in flight ----------------------------------------------------------------------------------
    def reserve(self, n: int) -> bool:
        if self.inflight_bytes + n > self.limits.max_inflight_bytes:
            return False
        self.inflight_bytes += n
        return True

    def release(self, n: int) -> None:
        self.inflight_bytes -= n

    # --- timeouts -----------------------------------------------------------------------------------------
    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.now = self.loop.time()
        for c in list(self.connections):
            c.check_timeouts(now)
        self._timer = self.loop.call_later(self._tick, self._sweep)


class HttpConnection(asyncio.BufferedProtocol):
    """HTTP/1.1 with keep-alive; pipelined requests are answered in order, a bounded number at a time."""

    def __init__(self, hub: ConnectionHub) -> None:
        self.hub = hub
        self.limits = hub.limits
        self.handler = hub.handler
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.counted = False
        # the request being parsed
        self.url_parts: list[bytes] = []
        self.url_size = 0
        self.method = ""
        self.url = ""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.header_count = 0
        self.body: list[bytes] = []
        self.body_buf: bytearray | memoryview | None = None  # a large Content-Length body, filled as it arrives
        self.body_view: memoryview | None = None  # body_buf, while the socket reads straight into it
        self.body_keep_alive = True  # what the parser said of the request whose body is read directly
        self.read_view = memoryview(bytearray(_READ_BUF))
        self.size = 0
        self.body_max = 0
        self.reserved = 0  # budget held by the request being parsed
        self.chunked = False
        # flow control
        self.phase = _HEAD
        self.phase_since = 0.0
        self.progress_at = 0.0
        self.head_bytes = 0
        self.busy = False  # a Deferred runs in the pool
        self.write_paused = False
        self.write_paused_at = 0.0
        self.reading_paused = False
        self.pump_scheduled = False
        self.dispatched = False  # a request was answered in this event-loop callback
        self.body_left = 0  # bytes of a Content-Length body still to come
        self.broken = False  # the parser stopped: answer what is queued, then close
        self.pending: deque[_Req] = deque()
        self.unparsed = bytearray()

    # --- transport events ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counted = True
        self.hub.connections.add(self)
        self.phase_since = self.progress_at = self._now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections.discard(self)
        if self.counted:
            self.counted = False
            self.hub.closed()
        self.transport = None
        self.hub.release(self.reserved + sum(r.reserved for r in self.pending))
        self.reserved = 0
        self.pending.clear()
        self.unparsed = bytearray()
        self.body, self.body_buf, self.body_view = [], None, None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self._now()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        # a large body: never past its end (the next request's bytes stay in the socket for the parser)
        if self.body_view is not None:
            return self.body_view[self.size :]
        return self.read_view

    def buffer_updated(self, nbytes: int) -> None:
        if self.body_view is not None:
            if not self.broken:
                self._body_read(nbytes)
        else:
            self.data_received(self.read_view[:nbytes])  # parsed (or copied to ``unparsed``) before returning

    def data_received(self, data: bytes | memoryview) -> None:
        self.dispatched = False
        if self.broken:
            return
        if self.unparsed or self.busy or self.write_paused or self.pending:
            self.unparsed += data
            self._pause_reading()
            return
        self._feed(data)

    # --- parsing ------------------------------------------------------------------------------------------
    def _feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data) if len(data) > FEED_SLICE else data
        pos, end = 0, len(view)
        while pos < end:
            step = FEED_SLICE + (self.body_left if self.phase == _BODY and self.body_left > 0 else 0)
            piece = view[pos : pos + step]
            pos += len(piece)
            if self.phase != _BODY:
                self.head_bytes += len(piece)
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._break(error_response(400, "protocol upgrade not supported"))
                return
            except httptools.HttpParserError as exc:
                cause = exc.__context__
                if isinstance(cause, _Reject):
                    self._break(cause.response)
                else:
                    self._break(error_response(400, f"malformed HTTP request: {exc}"))
                return
            if self.head_bytes > self.hub._head_cap:
                self._break(self._head_too_large())
                return
            if pos < end and (self.dispatched or self._stalled()):
                self.unparsed += view[pos:]
                self._pause_reading()
                break
        if (self.pending or self.unparsed) and not (self.busy or self.write_paused):
            self._pump_soon()

    def _head_too_large(self) -> Response:
        if self.phase == _HEAD and not self.headers and self.url_size >= self.limits.max_url_bytes // 2:
            return error_response(414, f"request target longer than {self.limits.max_url_bytes} bytes")
        return error_response(431, f"request header block larger than {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        self.url_parts = []
        self.url_size = 0
        self.headers = {}
        self.header_bytes = 0
        self.header_count = 0
        self.body = []
        self.body_buf = self.body_view = None
        self.size = 0
        self.chunked = False
        self.phase = _HEAD
        self.phase_since = self._now()

    def on_url(self, url: bytes) -> None:
        self.url_size += len(url)
        if self.url_size > self.limits.max_url_bytes:
            raise _Reject(error_response(414, f"request target longer than {self.limits.max_url_bytes} bytes"))
        self.url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(
                error_response(431, f"request header block larger than {self.limits.max_header_bytes} bytes")
            )
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            raise _Reject(error_response(431, f"more than {self.limits.max_headers} request headers"))
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.head_bytes = 0
        self.progress_at = self._now()
        self.method = self.parser.get_method().decode("ascii")
        parts = self.url_parts
        self.url = (parts[0] if len(parts) == 1 else b"".join(parts)).decode("latin-1")
        cl = self.headers.get("content-length")
        self.chunked = cl is None and "transfer-encoding" in self.headers
        what = ""
        if self.chunked or (cl is not None and cl != "0"):
            self.body_max, what = self.handler.body_limit(self.method, self.url, self.headers)
        if cl is not None and cl.isdigit() and cl != "0":
            n = int(cl)
            if n > self.body_max:
                raise _Reject(error_response(413, f"request body larger than the limit of {self.body_max} bytes"
                                             f"{what}"))
            if n and not self.hub.reserve(n):
                raise _Reject(self._busy())
            self.reserved = n
            self.body_left = n
            if n >= DIRECT_BODY:
                binary = "inference-header-content-length" in self.headers  # decoded from any buffer
                self.body_buf = self.hub.bodies.take(n) if binary else bytearray(n)
                # the rest of this read goes through the parser (on_body); later reads land in body_buf
                self.body_view = memoryview(self.body_buf)
                self.body_keep_alive = self.parser.should_keep_alive()
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            if not (self.busy or self.pending):  # never ahead of an earlier request's response
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.body_left -= len(body)
        self.progress_at = self._now()
        if self.size > self.body_max:
            raise _Reject(error_response(413, f"request body larger than the limit of {self.body_max} bytes"))
        if self.chunked:
            if not self.hub.reserve(len(body)):
                raise _Reject(self._busy())
            self.reserved += len(body)
        if self.body_buf is not None:
            self.body_buf[self.size - len(body) : self.size] = body
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self._complete(self.parser.should_keep_alive())

    def _body_read(self, nbytes: int) -> None:
        """``nbytes`` more of a large body arrived in ``body_buf``; the parser never sees them."""
        self.dispatched = False
        self.size += nbytes
        self.body_left -= nbytes
        self.progress_at = self._now()
        if self.body_left > 0:
            return
        # The parser still waits for this body: a fresh one parses the next request.
        self.parser = httptools.HttpRequestParser(self)
        try:
            self._complete(self.body_keep_alive)
        except _Reject as exc:
            self._break(exc.response)

    def _complete(self, keep_alive: bool) -> None:
        if self.body_buf is not None:
            body: bytes = self.body_buf  # type: ignore[assignment]  # bytes-like; decoders take buffers
            self.body_buf = self.body_view = None
        else:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        reserved, self.reserved = self.reserved, 0
        self.phase = _IDLE
        self.head_bytes = 0
        self.body_left = 0
        self.phase_since = self._now()
        req = _Req(self.method, self.url, self.headers, body, keep_alive, reserved)
        if not (self.dispatched or self.busy or self.write_paused or self.pending):
            self.dispatched = True
            self._dispatch(req)
            return
        if len(self.pending) >= self.limits.max_pipelined:
            self.hub.release(req.reserved)
            raise _Reject(error_response(503, f"more than {self.limits.max_pipelined} pipelined requests"))
        self.pending.append(req)

    def _busy(self) -> Response:
        return error_response(503, "server busy: too many request bytes in flight", ((b"retry-after", b"1"),))

    # --- dispatch and flow control ------------------------------------------------------------------------
    def _stalled(self) -> bool:
        return self.busy or self.write_paused or bool(self.pending)

    def _break(self, response: Response) -> None:
        """The parser is done for: answer ``response`` after the queued requests, then close."""
        self.broken = True
        self.unparsed = bytearray()
        self.body_view = None
        self.hub.release(self.reserved)
        self.reserved = 0
        self._pause_reading()
        req = _Req("", "", {}, b"", False, 0, response)
        if self._stalled():
            self.pending.append(req)
        else:
            self._dispatch(req)

    def _dispatch(self, req: _Req) -> None:
        if req.error is not None:
            self._write(req.error, False)
            return
        try:
            result = self.handler.handle(req.method, req.url, req.headers, req.body)
        except Exception as exc:  # a bug must cost one request, never the connection or the server
            result = error_response(500, f"internal error: {exc}")
        if isinstance(result, Response):
            if req.reserved:
                self.hub.release(req.reserved)
            self._write(result, req.keep_alive)
            return
        self.busy = True
        loop = self.hub.loop
        assert loop is not None
        if isinstance(result, concurrent.futures.Future):  # answered later from another thread (a batch)
            fut = asyncio.wrap_future(result, loop=loop)
        else:
            fut = loop.run_in_executor(self.hub.pool, result.fn)
        fut.add_done_callback(lambda f: self._deferred_done(f, req))

    def _deferred_done(self, fut: asyncio.Future[Response], req: _Req) -> None:
        try:
            resp = fut.result()
        except BaseException as exc:  # noqa: BLE001 - cancelled at shutdown or a bug: answer, don't hang
            resp = error_response(500, f"internal error: {exc!r}")
        if isinstance(resp, concurrent.futures.Future):  # pool work that queued the request for a batch
            assert self.hub.loop is not None
            asyncio.wrap_future(resp, loop=self.hub.loop).add_done_callback(lambda f: self._deferred_done(f, req))
            return
        self.busy = False
        self.hub.release(req.reserved)
        self._write(resp, req.keep_alive)
        self._pump()

    def _pump(self) -> None:
        """Answer queued requests, then parse kept bytes, then read again — while nothing stalls."""
        while (t := self.transport) is not None and not t.is_closing() and not self.busy and not self.write_paused:
            if self.pending:
                if self.dispatched:  # one per callback: the next one on the next turn
                    self._pump_soon()
                    return
                self.dispatched = True
                self._dispatch(self.pending.popleft())
            elif self.unparsed and not self.broken:
                if self.dispatched:
                    self._pump_soon()
                    return
                data, self.unparsed = bytes(self.unparsed), bytearray()
                self._feed(data)
            else:
                if not self.broken:
                    self.phase_since = self.progress_at = self._now()
                    self._resume_reading()
                return

    def _pump_soon(self) -> None:
        if not self.pump_scheduled and self.hub.loop is not None:
            self.pump_scheduled = True
            self.hub.loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self.pump_scheduled = False
        self.dispatched = False
        self._pump()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        key = (resp.status, resp.content_type)
        start = _HEADS.get(key)
        if start is None:
            start = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: " % (
                resp.status, _REASONS.get(resp.status, b"Unknown"), resp.content_type)
            if len(_HEADS) < _HEADS_MAX:
                _HEADS[key] = start
        head = start + b"%d\r\n" % len(resp.body)
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

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def _now(self) -> float:
        return self.hub.now

    # --- timeouts and eviction ----------------------------------------------------------------------------
    def waiting_on_client_since(self) -> float | None:
        """Since when this connection waits on its client (for eviction at the cap); None if on the server."""
        if self.transport is None or self.transport.is_closing():
            return None
        if self.write_paused:
            return self.write_paused_at
        if self.busy or self.pending:
            return None
        return self.phase_since

    def evict(self) -> None:
        if self.counted:
            self.counted = False
            self.hub.closed()
        if self.transport is not None:
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        lim = self.limits
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.write_paused:
            if lim.body_timeout and now - self.write_paused_at > lim.body_timeout:
                t.abort()  # the client stopped reading: drop what is buffered for it
            return
        if self.busy or self.pending:
            return
        if self.phase == _IDLE:
            if lim.idle_timeout and now - self.phase_since > lim.idle_timeout:
                t.close()
        elif self.phase == _HEAD:
            if lim.header_timeout and now - self.phase_since > lim.header_timeout:
                self._timed_out(f"request header not complete within {lim.header_timeout:g} s")
        elif lim.body_timeout and now - self.progress_at > lim.body_timeout:
            self._timed_out(f"request body made no progress for {lim.body_timeout:g} s")

    def _timed_out(self, message: str) -> None:
        self.broken = True
        self.body_view = None
        self.hub.release(self.reserved)
        self.reserved = 0
        self._write(error_response(408, message), False)


