"""One worker process of a :class:`~reconciler.serving.workers.pool.WorkerPool`: its own registry, event loop and
HTTP stack (all of :mod:`~reconciler.serving.http.http1`'s limits and timeouts), on the port it shares with its
siblings (``SO_REUSEPORT``).

Started as ``python -c "…main(ctl_fd, up_fd, unix_fd)"`` with ``PROMETHEUS_MULTIPROC_DIR`` set, so its
counters land in the pool's private metrics directory. Workflow:

1. read :class:`~reconciler.serving.workers.control.WorkerSettings` from the control channel; load the current
   desired set (previous versions first, then the active ones) *before* listening, so a restarted worker never
   answers with a stale version;
2. listen and report ``("ready", pid)``;
3. answer control messages: ``prepare`` loads and checks a version without switching (``stage``),
   ``commit``/``abort`` finish or undo it, ``apply_now`` is the ``resource`` strategy, ``stop`` ends;
4. on every request, compare the board's generation word with the one applied here: when the control plane
   flipped it, switch to the staged versions first (pointer swaps; draining happens in a background thread).

Request tensors of monitored versions go to the control plane through a bounded queue (full: dropped and
counted in ``modelfleet_serving_samples_dropped_total``); ``/metrics`` and ``/feedback`` are asked of it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from reconciler.serving.app.v2app import V2App
from reconciler.serving.fronts import Fronts, grpc_front
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ApplyResult, EndpointSpec, LoadedModel, ModelRegistry
from reconciler.serving.v2.handler import Deferred, Response, error_response
from reconciler.serving.workers.control import SAMPLE_QUEUE_MAX, SAMPLE_QUEUE_MAX_BYTES, Board, WorkerSettings

log = logging.getLogger("reconciler.serving.worker")

SAMPLES_DROPPED = Counter(
    "modelfleet_serving_samples_dropped_total",
    "Request samples a worker could not forward to the agent's drift and capture hooks (queue full).",
    ["model"],
)
RPC_TIMEOUT = 30.0


class Uplink:
    """Worker → control plane: batches of request samples (one-way) and small questions (``rpc``)."""

    def __init__(self, conn: Connection, queue_max: int = SAMPLE_QUEUE_MAX) -> None:
        self._conn = conn
        self._queue_max = queue_max
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[tuple[Any, ...], int]] = collections.deque()
        self._queued_bytes = 0
        self._stop = threading.Event()
        self._rpc_id = 0
        self._wake = threading.Event()
        threading.Thread(target=self._send_loop, name="modelfleet-uplink", daemon=True).start()

    def offer(self, event: tuple[Any, ...], nbytes: int, model: str) -> None:
        if len(self._queue) >= self._queue_max or self._queued_bytes + nbytes > SAMPLE_QUEUE_MAX_BYTES:
            SAMPLES_DROPPED.labels(model).inc()
            return
        self._queued_bytes += nbytes  # approximate under races: it only bounds memory
        self._queue.append((event, nbytes))
        if not self._wake.is_set():
            self._wake.set()

    def _send_loop(self) -> None:
        """Sleeps until a sample is offered (an idle worker never wakes), then sends a batch every 10 ms while
        samples keep coming."""
        while True:
            self._wake.wait()
            if self._stop.wait(0.01):
                return
            self._wake.clear()
            batch = []
            while self._queue:
                event, nbytes = self._queue.popleft()
                self._queued_bytes -= nbytes
                batch.append(event)
            if batch:
                try:
                    with self._lock:
                        self._conn.send(("events", batch))
                except (OSError, ValueError):
                    return

    def rpc(self, what: str, arg: Any = None) -> Any:
        with self._lock:
            self._rpc_id += 1
            self._conn.send(("rpc", self._rpc_id, what, arg))
            end = time.monotonic() + RPC_TIMEOUT
            while self._conn.poll(max(0.0, end - time.monotonic())):
                rpc_id, answer = self._conn.recv()
                if rpc_id == self._rpc_id:
                    return answer
                # the late answer to a question that timed out: skip it
            raise TimeoutError(f"the control plane did not answer {what!r} within {RPC_TIMEOUT:.0f}s")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()


class Forwarder:
    """The observer a worker's registry gives a monitored version: hands everything to the control plane."""

    __slots__ = ("name", "version", "_up")

    def __init__(self, name: str, version: str, uplink: Uplink) -> None:
        self.name, self.version, self._up = name, version, uplink

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        size = sum(a.nbytes for a in feeds.values()) + sum(a.nbytes for a in outputs.values())
        self._up.offer(("observe", self.name, self.version, feeds, outputs, seconds, request_id), size, self.name)

    def observe_error(self, seconds: float) -> None:
        self._up.offer(("error", self.name, self.version, seconds), 0, self.name)

    def observe_rejection(self) -> None:
        self._up.offer(("rejection", self.name, self.version), 0, self.name)

    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        size = sum(a.nbytes for a in inputs.values())
        self._up.offer(("rejected_inputs", self.name, self.version, inputs), size, self.name)

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        status, answer = self._up.rpc("feedback", (self.name, self.version, body))
        return int(status), dict(answer)


class WorkerState:
    """The generation applied in this worker and the staged switches waiting for the board to flip."""

    def __init__(self, board: Board, registry: ModelRegistry, generation: int) -> None:
        self.board = board
        self.words = board.words()
        self.registry = registry
        self.applied = generation
        self.staged: dict[int, tuple[str, LoadedModel | None, bool]] = {}
        self._lock = threading.Lock()
        self._drainer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modelfleet-drain")

    def catch_up(self) -> None:
        with self._lock:
            target = int(self.words[0])
            for gen in sorted(g for g in self.staged if g <= target):
                name, model, keep_previous = self.staged.pop(gen)
                self.registry.activate(name, model, keep_previous, self._retire)
            self.applied = target

    def _retire(self, model: LoadedModel) -> None:
        self._drainer.submit(model.drain_and_close)

    def stage(self, gen: int, name: str, model: LoadedModel | None, keep_previous: bool) -> None:
        with self._lock:
            self.staged[gen] = (name, model, keep_previous)

    def abort(self, gen: int) -> None:
        with self._lock:
            staged = self.staged.pop(gen, None)
        if staged is not None and staged[1] is not None and staged[1] not in self.registry.models():
            self._retire(staged[1])  # loaded for this swap only


class WorkerApp(V2App):
    """The v2 routes, plus the generation check on every request and the pool-wide ``/metrics`` and ready."""

    def __init__(self, state: WorkerState, uplink: Uplink, **kw: Any) -> None:
        super().__init__(state.registry, **kw)
        self._state = state
        self._words = state.words
        self._uplink = uplink

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response | Deferred:
        if self._words[0] != self._state.applied:
            self._state.catch_up()
        return super().handle(method, target, headers, body)

    def catch_up(self) -> None:
        if self._words[0] != self._state.applied:
            self._state.catch_up()

    def metrics_response(self) -> Response | Deferred:
        def ask() -> Response:
            try:
                return Response(200, self._uplink.rpc("metrics"), CONTENT_TYPE_LATEST.encode())
            except (OSError, EOFError, TimeoutError) as exc:
                return error_response(503, f"the control plane did not answer: {exc}")

        return Deferred(ask)

    def all_ready(self) -> bool:
        return self._state.board.ready and super().all_ready()


def _serve_commands(ctl: Connection, state: WorkerState, observed: set[tuple[str, str]]) -> None:
    registry = state.registry
    while True:
        try:
            msg = ctl.recv()
        except (EOFError, OSError):
            return  # the control plane is gone: so are we
        kind = msg[0]
        if kind == "prepare":
            _, gen, op, arg, watch = msg
            if op == "remove":
                state.stage(gen, arg, None, False)
                ctl.send(("ok", ApplyResult(True, "Removed")))
                continue
            spec: EndpointSpec = arg
            if watch:
                observed.add((spec.name, spec.version))
            model, result = registry.stage(spec)
            if result.ok and model is not None:
                state.stage(gen, spec.name, model, spec.keep_previous)
            ctl.send(("ok" if result.ok else "fail", result))
        elif kind == "commit":
            state.catch_up()
            ctl.send(("ok", None))
        elif kind == "abort":
            state.abort(msg[1])
            ctl.send(("ok", None))
        elif kind == "apply_now":
            _, spec, watch = msg
            if watch:
                observed.add((spec.name, spec.version))
            ctl.send(("ok", registry.apply(spec)))
        elif kind == "stop":
            ctl.send(("ok", None))
            return
        else:
            ctl.send(("fail", ApplyResult(False, "InvalidSpec", f"unknown control message {kind!r}")))


def main(ctl_fd: int, up_fd: int, unix_fd: int | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="worker %(process)d: %(message)s")
    # The control plane owns our lifetime: Ctrl-C on the terminal or systemd's SIGTERM to the whole group reach
    # it too, and it stops us in order (``stop``); when it is gone, the control channel closes and we end.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    ctl = Connection(ctl_fd)
    settings: WorkerSettings = ctl.recv()
    if settings.cpu is not None:  # one worker per CPU: the scheduler does not move it (nor its caches) around
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {settings.cpu})
    uplink = Uplink(Connection(up_fd), settings.sample_queue_max)
    observed = {(s.name, s.version) for s, watch in settings.desired + settings.previous if watch}
    registry = ModelRegistry(settings.cache_dir, observer_factory=lambda spec: Forwarder(
        spec.name, spec.version, uplink) if (spec.name, spec.version) in observed else None)
    for spec, _ in settings.previous + settings.desired:
        result = registry.apply(spec)
        if not result.ok:
            ctl.send(("fail", result))
            sys.exit(1)
    board = Board(settings.board)
    state = WorkerState(board, registry, settings.generation)
    app = WorkerApp(state, uplink, auth_token=settings.auth_token, limits=settings.limits)
    unix = socket.socket(fileno=unix_fd) if unix_fd is not None else None
    http = InferenceServer(
        registry, app=app, host=settings.host, port=settings.port, reuse_port=True, unix_listener=unix,
        unix_socket=settings.unix_socket, tls_cert=settings.tls_cert, tls_key=settings.tls_key,
        limits=settings.limits,
    )
    try:
        server = Fronts(http)
        if settings.grpc_port is not None:  # shared like the HTTP port: SO_REUSEPORT
            server.grpc = grpc_front(app, host=settings.host, port=settings.grpc_port, limits=settings.limits,
                                     tls_cert=settings.tls_cert, tls_key=settings.tls_key, reuse_port=True)
        server.start()
    except Exception as exc:  # noqa: BLE001 - reported to the control plane, which names it to the user
        ctl.send(("fail", ApplyResult(False, "ListenFailed", f"worker {settings.index}: cannot listen: {exc}")))
        sys.exit(1)
    ctl.send(("ready", os.getpid()))
    try:
        _serve_commands(ctl, state, observed)
    finally:
        t0 = time.monotonic()
        server.stop()
        uplink.close()
        registry.close()
        log.debug("stopped in %.2fs", time.monotonic() - t0)
