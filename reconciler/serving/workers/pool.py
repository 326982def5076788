"""Serving from every core: N worker processes on one port, one control plane (``serving.workers``).

A :class:`WorkerPool` stands where a :class:`~reconciler.serving.registry.ModelRegistry` plus
:class:`~reconciler.serving.http.server.InferenceServer` stand in a single-process server, with the same methods
(``apply``, ``rollback``, ``remove``, ``endpoints``, ``models``; ``start``, ``stop``, ``url``), so the agent and
``modelfleet serve`` drive either. Each worker (:mod:`~reconciler.serving.workers.workerproc`) is a process with its own
event loop and its own copy of every model (runtime sessions cannot be shared between processes); the kernel
spreads connections over the workers (``SO_REUSEPORT``; the pool keeps a bound, non-listening socket so the port
stays reserved across restarts).

A switch is two-phase: every worker loads and checks the new version (*prepare*); only when all succeeded
does the pool write the new generation into the shared :class:`~reconciler.serving.workers.control.Board`, which every
worker reads on every request, so all of them serve the new version from the same instant on; one failing
worker aborts the switch everywhere (the old version keeps serving, the reason is the failing worker's).
A worker that dies is restarted with the current desired set loaded before it listens, counted
(``modelfleet_serving_worker_restarts_total``) and reported (:meth:`WorkerPool.report`); ready stays false
until it is back. ``/metrics`` is one view: the pool's own registry plus the workers' counters, summed by
``prometheus_client``'s multiprocess mode from a private directory (:mod:`~reconciler.serving.workers.poolmetrics`).
Request samples, ``/metrics`` and ``/feedback`` come back from each worker over its uplink pipe to the agent's
observers (:mod:`~reconciler.serving.workers.uplink`).

With one worker per CPU (the default when the pool has as many workers as the CPUs it may use) each worker
keeps to its own CPU (``sched_setaffinity``), so the scheduler does not move workers, their caches and their
connections' wake-ups between cores. Connections are still spread by the kernel's hash: steering them to the
CPU that received them (``SO_INCOMING_CPU``) was cheaper still on loopback, but behind a single-queue network
card every connection arrives on one CPU and would all go to one worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead

from reconciler.core.children import python_child_env
from reconciler.core.extras import installed
from reconciler.serving.limits import ServerLimits
from reconciler.serving.registry import (
    LOAD_FAILURES,
    ROLLBACKS,
    SWAPS,
    ApplyResult,
    EndpointSpec,
    EndpointState,
    Observer,
)
from reconciler.serving.workers.control import SAMPLE_QUEUE_MAX, Board, WorkerSettings, proc_memory_mb
from reconciler.serving.workers.cpus import allowed_cpus, session_threads, worker_cpus
from reconciler.serving.workers.poolmetrics import WORKER_RESTARTS, WORKER_RSS, WORKERS_SERVING, PoolMetrics
from reconciler.serving.workers.uplink import Uplink

log = logging.getLogger("reconciler.serving.workers")

RESTART_BACKOFF_MAX = 300.0
LOAD_TIMEOUT = 600.0  # a large OpenVINO model compiles for minutes on a small device
SMALL_TIMEOUT = 30.0


class WorkerGone(Exception):
    """A worker died or stopped answering in the middle of a control exchange."""


@dataclass(frozen=True)
class ModelView:
    """A loaded version as the agent sees it (``registry.models()``)."""

    name: str
    version: str
    spec: EndpointSpec


class _Endpoint:
    def __init__(self, name: str) -> None:
        self.name = name
        self.active: EndpointSpec | None = None
        self.previous: EndpointSpec | None = None
        self.last_failure: dict[str, Any] | None = None
        #: The precision each loaded build computes in, as the workers read it back from the runtime.
        self.effective: dict[tuple[str, ...], str] = {}

    def loaded(self, spec: EndpointSpec, result: ApplyResult) -> None:
        if result.precision:
            self.effective[_build(spec)] = result.precision
        live = {_build(s) for s in (self.active, self.previous, spec) if s is not None}
        self.effective = {k: v for k, v in self.effective.items() if k in live}

    def effective_precision(self, spec: EndpointSpec) -> str:
        return self.effective.get(_build(spec), spec.precision)


def _build(spec: EndpointSpec) -> tuple[str, ...]:
    return (spec.version, spec.variant, spec.digest, spec.runtime, spec.precision)


class _Worker:
    def __init__(self, index: int, proc: subprocess.Popen[bytes], ctl: Connection, up: Connection) -> None:
        self.index, self.proc, self.ctl, self.up = index, proc, ctl, up
        self.pid = proc.pid

    def send(self, msg: Any) -> None:
        try:
            self.ctl.send(msg)
        except (OSError, ValueError) as exc:
            raise WorkerGone(f"worker {self.index} (pid {self.pid}) is gone: {exc}") from None

    def reply(self, timeout: float) -> tuple[str, Any]:
        try:
            if not self.ctl.poll(timeout):
                # A hung worker is out of step with its channel: it is replaced (the reaper restarts it).
                self.proc.kill()
                raise WorkerGone(f"worker {self.index} (pid {self.pid}) did not answer within {timeout:.0f}s")
            return self.ctl.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError) as exc:
            raise WorkerGone(f"worker {self.index} (pid {self.pid}) died: {exc or 'connection closed'}") from None

    def call(self, msg: tuple[Any, ...], timeout: float = SMALL_TIMEOUT) -> tuple[str, Any]:
        self.send(msg)
        return self.reply(timeout)


class WorkerPool:
    """N serving worker processes and their control plane (see the module docstring)."""

    def __init__(self, workers: int, *, host: str = "127.0.0.1", port: int | None = 0,
                 unix_socket: str | os.PathLike[str] | None = None, auth_token: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, limits: ServerLimits | None = None,
                 cache_dir: Path | None = None,
                 observer_factory: Callable[[EndpointSpec], Observer | None] | None = None,
                 load_timeout: float = LOAD_TIMEOUT, sample_queue_max: int = SAMPLE_QUEUE_MAX,
                 grpc_port: int | None = None, pin_cpus: bool | None = None) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        if port is None and unix_socket is None:
            raise ValueError("give a TCP port, a unix socket, or both")
        self.size = workers
        self.host, self.port = host, port
        self.grpc_port = grpc_port
        self._allowed = allowed_cpus()
        #: CPUs the workers keep to, one each (None: not pinned; see :func:`worker_cpus`).
        self.cpus: list[int] | None = worker_cpus(workers, self._allowed, pin_cpus)
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        self._auth_token, self._tls = auth_token, (tls_cert, tls_key)
        self.limits = limits or ServerLimits()
        self.cache_dir = cache_dir
        self.observer_factory = observer_factory
        self.load_timeout = load_timeout
        self.sample_queue_max = sample_queue_max
        self._lock = threading.RLock()  # one control operation (switch, restart) at a time
        self._eps: dict[str, _Endpoint] = {}
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self._uplink = Uplink(self.metrics_registry)  # the workers' samples, /metrics and /feedback
        self._observers = self._uplink.observers
        self._workers: list[_Worker | None] = []
        self._generation = 0
        self._dir: Path | None = None
        self._board: Board | None = None
        self._reserved: socket.socket | None = None
        self._grpc_reserved: socket.socket | None = None
        self._unix: socket.socket | None = None
        self._stopping = threading.Event()
        self.restarts = 0
        self._backoff = 0.0  # seconds a dead worker waits before its restart (grows while they keep dying)
        self.last_restart: dict[str, Any] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            return f"unix:{self.unix_socket}"
        scheme = "https" if self._tls[0] else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="modelfleet-workers-"))
        (self._dir / "metrics").mkdir()
        self._board = Board(self._dir / "board", create=True)
        self.metrics_registry.register(PoolMetrics(self._dir / "metrics"))
        try:
            if self.port is not None:
                self._reserved = self._reserve(self.port)
                self.port = self._reserved.getsockname()[1]
            if self.grpc_port is not None:
                if not installed("grpc"):
                    from reconciler.serving.fronts import GrpcNotInstalled, grpc_missing

                    raise GrpcNotInstalled(grpc_missing("a gRPC port"))
                self._grpc_reserved = self._reserve(self.grpc_port)
                self.grpc_port = self._grpc_reserved.getsockname()[1]
            if self.unix_socket is not None:
                if self.unix_socket.is_socket():
                    self.unix_socket.unlink()
                self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._unix.bind(str(self.unix_socket))
                os.chmod(self.unix_socket, 0o660)
                self._unix.listen(1024)
            for i in range(self.size):
                self._workers.append(self._spawn(i))
        except BaseException:
            self.stop()
            raise
        self._board.ready = True
        WORKERS_SERVING.set(self.size)

    def _reserve(self, port: int) -> socket.socket:
        """A socket bound to the port, never listening: holds it across worker restarts, gets no connections."""
        family, _, _, _, addr = socket.getaddrinfo(self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def grpc_url(self) -> str | None:
        if self.grpc_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc{'s' if self._tls[0] else ''}://{host}:{self.grpc_port}"

    def _spawn(self, index: int) -> _Worker:
        assert self._dir is not None and self._board is not None
        ctl_parent, ctl_child = socket.socketpair()
        up_parent, up_child = socket.socketpair()
        fds = [ctl_child.fileno(), up_child.fileno()]
        unix_fd = None
        if self._unix is not None:
            unix_fd = self._unix.fileno()
            fds.append(unix_fd)
        env = python_child_env(PROMETHEUS_MULTIPROC_DIR=str(self._dir / "metrics"))
        code = f"from reconciler.serving.workers.workerproc import main; main({fds[0]}, {fds[1]}, {unix_fd})"
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        ctl_child.close()
        up_child.close()
        w = _Worker(index, proc, Connection(ctl_parent.detach()), Connection(up_parent.detach()))
        settings = WorkerSettings(
            index=index, board=self._board.path, host=self.host, port=self.port,
            unix_socket=str(self.unix_socket) if self.unix_socket else None, auth_token=self._auth_token,
            tls_cert=self._tls[0], tls_key=self._tls[1], limits=self.limits, cache_dir=self.cache_dir,
            generation=self._generation, sample_queue_max=self.sample_queue_max, grpc_port=self.grpc_port,
            cpu=self.cpus[index % len(self.cpus)] if self.cpus else None,
            desired=[self._job(ep.active) for ep in self._eps.values() if ep.active],
            previous=[self._job(ep.previous) for ep in self._eps.values() if ep.previous],
        )
        try:
            w.send(settings)
            kind, answer = w.reply(self.load_timeout)
        except WorkerGone as exc:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"worker {index} did not start: {exc}") from None
        if kind != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"worker {index} did not start: {getattr(answer, 'message', answer)}")
        WORKER_RSS.labels(str(index)).set_function(lambda: proc_memory_mb(w.pid).get("vmrss", 0.0) * 1048576)
        threading.Thread(target=self._uplink.serve, args=(w.up,), name=f"modelfleet-uplink-{index}", daemon=True).start()
        threading.Thread(target=self._reap, args=(w,), name=f"modelfleet-reap-{index}", daemon=True).start()
        return w

    def _job(self, spec: EndpointSpec) -> tuple[EndpointSpec, bool]:
        """What a worker loads: the spec (without a thread count: the cores shared out between the workers, as
        each session would otherwise start one thread per core) and whether its samples go to an observer."""
        if spec.threads is None:
            spec = dataclasses.replace(spec, threads=session_threads(self.size, len(self._allowed), self.cpus))
        return spec, (spec.name, spec.version) in self._observers

    def _reap(self, w: _Worker) -> None:
        """Wait for the worker to exit; unless the pool is stopping, restart it (with the current desired set
        loaded before it listens). Switches go on meanwhile with the other workers."""
        code = w.proc.wait()
        board = self._board
        if self._stopping.is_set() or board is None:
            return
        board.ready = False  # at once, before waiting for a switch in progress to finish
        with self._lock:
            if self._stopping.is_set() or w not in self._workers:
                return
            i = self._workers.index(w)
            self._workers[i] = None
            self._retire(w, code)
            now = time.time()
            # A worker that keeps dying waits longer each time (1 s … 5 min): each restart also leaves its
            # counters' file in the metrics directory, so a crash loop must not restart as fast as it can.
            quick = self.last_restart is not None and now - self.last_restart["time"] < RESTART_BACKOFF_MAX
            self._backoff = min(RESTART_BACKOFF_MAX, max(1.0, self._backoff * 2)) if quick else 0.0
            self.restarts += 1
            WORKER_RESTARTS.inc()
            self.last_restart = {"worker": i, "pid": w.pid, "exitCode": code, "time": now}
            log.warning("serving worker %d (pid %s) exited with %s; restarting it", i, w.pid, code)
            backoff = self._backoff
        if backoff:
            self._stopping.wait(backoff)
        retry = 1.0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._workers[i] = self._spawn(i)
                except RuntimeError as exc:
                    log.error("%s; retrying", exc)
                else:
                    self._board_ready()
                    return
            self._stopping.wait(retry)
            retry = min(RESTART_BACKOFF_MAX, retry * 2)

    def _retire(self, dead: _Worker, code: int) -> None:
        assert self._dir is not None
        WORKERS_SERVING.set(sum(1 for w in self._workers if w is not None))
        with contextlib.suppress(OSError):
            mark_process_dead(dead.pid, str(self._dir / "metrics"))
        for conn in (dead.ctl, dead.up):
            with contextlib.suppress(OSError):
                conn.close()

    def _board_ready(self) -> None:
        serving = sum(1 for w in self._workers if w is not None)
        WORKERS_SERVING.set(serving)
        if self._board is not None:
            self._board.ready = serving == self.size

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for w in self._workers:
                if w is None:
                    continue
                with contextlib.suppress(WorkerGone):
                    w.call(("stop",), 15.0)
                try:
                    w.proc.wait(15)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                for conn in (w.ctl, w.up):
                    with contextlib.suppress(OSError):
                        conn.close()
                with contextlib.suppress(KeyError):
                    WORKER_RSS.remove(str(w.index))
            self._workers = []
            for s in (self._reserved, self._grpc_reserved, self._unix):
                if s is not None:
                    s.close()
            if self._unix is not None and self.unix_socket is not None and self.unix_socket.is_socket():
                self.unix_socket.unlink()
            self._reserved = self._grpc_reserved = self._unix = None
            if self._board is not None:
                self._board.close()
                self._board = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        WORKERS_SERVING.set(0)

    def close(self) -> None:
        """Registry-style alias of :meth:`stop` (the endpoints go with the workers)."""
        self.stop()

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the registry interface -------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def apply(self, spec: EndpointSpec) -> ApplyResult:
        """Make ``spec`` the active version in every worker at once (two-phase). Never raises for model problems."""
        if spec.strategy not in ("availability", "resource"):
            return ApplyResult(False, "InvalidSpec", f"unknown update strategy {spec.strategy!r}")
        if (spec.files is None) == (spec.blobs is None):
            return ApplyResult(False, "InvalidSpec", "an endpoint spec needs files or blobs")
        with self._lock:
            ep = self._eps.setdefault(spec.name, _Endpoint(spec.name))
            if ep.active is not None and ep.active.same_build(spec):
                if (ep.active.batching or None) != (spec.batching or None):  # each worker's registry applies it
                    result = self._rolling(ep, spec)
                    if not result.ok:
                        self._failed(ep, spec, result)
                        return result
                ep.active = spec
                return ApplyResult(True, "AlreadyActive")
            if not (ep.previous is not None and ep.previous.same_build(spec)) and self.observer_factory:
                obs = self.observer_factory(spec)
                if obs is not None:
                    self._observers[(spec.name, spec.version)] = obs
            if spec.strategy == "resource":
                result = self._rolling(ep, spec)
            else:
                result = self._two_phase(("prepare", self._generation + 1, "apply", *self._job(spec)))
            if not result.ok:
                self._failed(ep, spec, result)
                return result
            ep.loaded(spec, result)
            self._flip()
            old = ep.active
            ep.active, ep.previous = spec, (old if spec.keep_previous else None)
            ep.last_failure = None
            if old is not None:
                SWAPS.labels(spec.name).inc()
            self._forget_observers()
            return result

    def _two_phase(self, prepare: tuple[Any, ...]) -> ApplyResult:
        gen = prepare[1]
        workers = [w for w in self._workers if w is not None]
        if not workers:
            return ApplyResult(False, "WorkerUnavailable", "every serving worker is restarting; try again")
        failure: ApplyResult | None = None
        sent = []
        for w in workers:  # all workers load at once
            try:
                w.send(prepare)
                sent.append(w)
            except WorkerGone as exc:
                failure = failure or ApplyResult(False, "WorkerUnavailable", str(exc))
        result = ApplyResult(True, "Ready")
        for w in sent:
            try:
                kind, answer = w.reply(self.load_timeout)
            except WorkerGone as exc:
                kind, answer = "fail", ApplyResult(False, "WorkerUnavailable", str(exc))
            if kind != "ok":
                failure = failure or answer
            else:
                result = answer
        if failure is None:
            return result
        for w in sent:
            with contextlib.suppress(WorkerGone):
                w.call(("abort", gen))
        return failure

    def _rolling(self, ep: _Endpoint, spec: EndpointSpec) -> ApplyResult:
        """``resource`` strategy: each worker unloads and reloads in turn (never two versions in one worker);
        when one fails, those already switched go back to the old version."""
        done: list[_Worker] = []
        for w in [w for w in self._workers if w is not None]:
            try:
                _, result = w.call(("apply_now", *self._job(spec)), self.load_timeout)
            except WorkerGone as exc:
                result = ApplyResult(False, "WorkerUnavailable", str(exc))
            if not result.ok:
                for back in done:
                    if ep.active is not None:
                        with contextlib.suppress(WorkerGone):
                            back.call(("apply_now", *self._job(ep.active)), self.load_timeout)
                if ep.active is not None:
                    ROLLBACKS.labels(spec.name).inc()
                return ApplyResult(False, result.reason, result.message, result.load_ms,
                                   rolled_back=ep.active is not None)
            done.append(w)
        return result

    def _flip(self) -> None:
        """The switch: one write every worker reads on its next request; then tell them (idle ones drain)."""
        assert self._board is not None
        self._generation += 1
        self._board.generation = self._generation
        for w in self._workers:
            if w is not None:
                with contextlib.suppress(WorkerGone):
                    w.call(("commit", self._generation))

    def _failed(self, ep: _Endpoint, spec: EndpointSpec, result: ApplyResult) -> None:
        LOAD_FAILURES.labels(spec.name, result.reason).inc()
        ep.last_failure = {"version": spec.version, "variant": spec.variant, "digest": spec.digest,
                           "reason": result.reason, "message": result.message, "time": time.time()}
        self._forget_observers()

    def _forget_observers(self) -> None:
        live = {(ep.name, s.version) for ep in self._eps.values() for s in (ep.active, ep.previous) if s}
        for key in [k for k in self._observers if k not in live]:
            del self._observers[key]

    def rollback(self, name: str) -> bool:
        """Back to the previous version in every worker (instant: they keep it loaded). False without one."""
        with self._lock:
            ep = self._eps.get(name)
            if ep is None or ep.previous is None or ep.active is None:
                return False
            prev, cur = ep.previous, ep.active
            result = self._two_phase(("prepare", self._generation + 1, "apply", *self._job(prev)))
            if not result.ok:
                return False
            self._flip()
            ep.active, ep.previous = prev, cur
            ROLLBACKS.labels(name).inc()
            return True

    def remove(self, name: str) -> None:
        """Stop serving the endpoint in every worker; in-flight requests finish first."""
        with self._lock:
            if self._eps.pop(name, None) is None:
                return
            self._two_phase(("prepare", self._generation + 1, "remove", name, False))
            self._flip()
            self._forget_observers()

    def endpoints(self) -> dict[str, EndpointState]:
        out = {}
        for name, ep in list(self._eps.items()):
            a = ep.active
            out[name] = EndpointState(
                name=name, version=a.version if a else None, variant=a.variant if a else None,
                digest=a.digest if a else None, runtime=a.runtime if a else None,
                previous_version=ep.previous.version if ep.previous else None, ready=a is not None,
                last_failure=dict(ep.last_failure) if ep.last_failure else None,
                precision=a.precision if a else None,
                effective_precision=ep.effective_precision(a) if a else None,
            )
        return out

    def models(self) -> list[ModelView]:
        out = []
        for ep in list(self._eps.values()):
            out.extend(ModelView(ep.name, s.version, s) for s in (ep.active, ep.previous) if s is not None)
        return out

    # -- reporting --------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every worker is up and serving the current generation."""
        return self._board is not None and self._board.ready

    def memory(self) -> list[dict[str, Any]]:
        """Per worker: index, pid, VmRSS and VmHWM in MiB."""
        return [{"worker": w.index, "pid": w.pid, **proc_memory_mb(w.pid)} for w in self._workers if w is not None]

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w is not None]

    def condition(self, now: float) -> tuple[bool, str, str]:
        """The agent's ``WorkersServing`` condition (status, reason, message) at ``now``."""
        return workers_condition(self.report(), now)

    def report(self) -> dict[str, Any]:
        """For status and conditions: workers configured and serving, restarts so far, the last one."""
        serving = sum(1 for w in self._workers if w is not None)
        return {"workers": self.size, "serving": serving, "restarts": self.restarts, "lastRestart": self.last_restart}


#: A restart keeps ``WorkersServing`` false this long (seconds), so a pass or a status push sees it.
RESTART_MEMORY = 600.0


def workers_condition(report: dict[str, Any], now: float) -> tuple[bool, str, str]:
    """``WorkersServing`` from :meth:`WorkerPool.report` (pure: the clock is passed in)."""
    down = report["workers"] - report["serving"]
    if down:
        return False, "WorkerDown", f"{down} of {report['workers']} serving workers down, restarting"
    last = report["lastRestart"]
    if last is not None and now - last["time"] < RESTART_MEMORY:
        return False, "WorkerRestarted", (
            f"worker {last['worker']} (pid {last['pid']}) exited with {last['exitCode']} "
            f"{now - last['time']:.0f}s ago and was restarted; {report['restarts']} restart(s) since start")
    return True, "WorkersUp", f"{report['serving']} workers serving"
