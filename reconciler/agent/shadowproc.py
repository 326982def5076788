"""The shadow candidate in a process of its own, at idle CPU priority: it never takes CPU, or the agent's GIL,
from the live requests — and neither does the comparison.

Why a process and not a thread: a ``SCHED_IDLE`` thread in the agent still cost the live requests
(``bench/bench_shadow.py``, ``on_thread``): after every inference it needs the interpreter lock again, and a
live request that needs it then waits for an idle-priority thread to be given a core. Why a shared ring and not
a pipe: a worker thread in the agent that pickled each sample to the child, unpickled the answer and compared
took the agent's lock per sample too (1.3x the CNN's p99, 2.3x the tiny matmul's). Now the agent's only
per-sample work is the request path's copy into :mod:`reconciler.agent.shadowring`; everything else is here.

:meth:`CandidateProcess.start` creates the ring (an anonymous shared file) and runs ``python -c "…main(fd,
ring)"`` over a socket pair (the serving workers' way), passing both, and sends the candidate's files, probe and
the deployment's spec. The child loads and health-checks the candidate with one intra-op thread
(:func:`load_candidate`: ONNX Runtime and OpenVINO's CPU plugin then compute in the calling thread), lowers
every thread it has to ``SCHED_IDLE`` (else nice 19: :mod:`reconciler.shadow.priority`; threads started later
inherit it) and answers ``("ready", rss MiB, priority)`` or ``("fail", reason, message)``. Loading runs at
normal priority, so a busy device does not hold the agent's pass for minutes. Then ``("mirror", settings)``
starts :func:`serve`: take the ring's records in order, run the candidate, compare
(:mod:`reconciler.shadow.compare`), keep the aggregates (:class:`~reconciler.shadow.stats.ShadowStats`) and
publish them in the ring — when the ring runs empty and at most every :data:`PUBLISH_EVERY` while busy; the
socket carries a message only when the verdict changes. An empty ring is polled every :data:`POLL_S` to
:data:`POLL_MAX_S` (backing off while it stays empty; the wait is on the socket, so a stop ends it). The child ends when the socket closes (the agent stopped it, or
died); :meth:`CandidateProcess.close` kills it. The process costs a second interpreter (``memoryMB`` is its
whole RSS) and the ring's pages it touched (at most :data:`~reconciler.shadow.spec.QUEUE_BYTES`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from reconciler.agent.shadowring import Ring
from reconciler.core import reasons as R
from reconciler.core.children import exit_description, python_child_env
from reconciler.shadow.compare import compare
from reconciler.shadow.gate import device_verdict
from reconciler.shadow.priority import NORMAL, lower_thread
from reconciler.shadow.spec import ShadowSettings
from reconciler.shadow.stats import ShadowStats

#: How long the child may take to start, load and health-check the candidate.
START_TIMEOUT = 120.0
#: How often the child looks at an empty ring (the wait is on the control socket, at idle priority): at first
#: after a record, doubling while it stays empty up to the longest. An idle child at a fixed 2 ms (through
#: Connection.poll) woke ~260 times a second and spent ~14 ms of CPU a second doing it; backing off to 16 ms with
#: one poll object, ~50 and 3-4 ms (loaded 2-core VM, /proc tick counts).
POLL_S, POLL_MAX_S = 0.001, 0.016
#: How often a busy child publishes its numbers (and when the ring runs empty, at once).
PUBLISH_EVERY = 0.25


class CandidateProcess:
    """The agent's end: the process, its control socket and the ring
    (:class:`~reconciler.agent.shadowring.RingMirror` uses them), ``close()``."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, ring: Ring, memory_mb: float,
                 priority: str) -> None:
        self._proc, self.conn, self.ring = proc, conn, ring
        self.memory_mb, self.priority = memory_mb, priority

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    def start(cls, part: dict[str, Any], blobs: list[bytes], probe: dict[str, Any] | None, spec: dict[str, Any],
              cache_dir: Path | None, timeout: float = START_TIMEOUT) -> tuple[CandidateProcess | None, str, str]:
        """(the running candidate, "", "") or (None, reason, message)."""
        try:
            ring, ring_fd = Ring.create()
        except (OSError, AttributeError, ValueError) as exc:  # AttributeError: no memfd_create (not Linux)
            return None, R.LOAD_FAILED, f"cannot create the shadow ring: {exc}"
        parent, child = socket.socketpair()
        env = python_child_env()
        code = f"from reconciler.agent.shadowproc import main; main({child.fileno()}, {ring_fd})"
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno(), ring_fd], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            return None, R.LOAD_FAILED, f"cannot start the shadow process: {exc}"
        finally:
            child.close()
            os.close(ring_fd)  # the mapping stays; the file goes when the child's mapping goes too
        conn = Connection(parent.detach())
        try:
            conn.send((part, blobs, probe, spec, str(cache_dir) if cache_dir else None))
            if not conn.poll(timeout):
                raise TimeoutError(f"the shadow process did not load the candidate within {timeout:.0f}s")
            answer = conn.recv()
        except (OSError, EOFError, TimeoutError) as exc:
            _end(proc, conn)
            return None, R.LOAD_FAILED, f"shadow process: {exc}"
        if answer[0] != "ready":
            _end(proc, conn)
            return None, str(answer[1]), str(answer[2])
        return cls(proc, conn, ring, float(answer[1]), str(answer[2])), "", ""

    def exit_description(self) -> str:
        """How the process ended: ``killed by SIGSEGV``, ``exit code 1``."""
        return exit_description(self._proc)

    def close(self) -> None:
        _end(self._proc, self.conn)


def _end(proc: subprocess.Popen[bytes], conn: Connection) -> None:
    proc.kill()  # nothing to save: the numbers the agent keeps are in the ring already
    proc.wait()  # first: the agent's watcher then reads end-of-file, not a closed descriptor
    conn.close()


def lower_all_threads() -> str:
    """Lower every thread of this process (those a runtime started while loading too); what this one got."""
    me, got = threading.get_native_id(), NORMAL
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        obtained = lower_thread(tid)
        if tid == me:
            got = obtained
    return got


def main(fd: int, ring_fd: int) -> None:
    """The child (see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the agent owns our lifetime: it closes the socket or kills us
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(fd)
    ring = Ring(ring_fd)
    os.close(ring_fd)
    part, blobs, probe, spec, cache_dir = conn.recv()
    from reconciler.serving.health import rss_mb

    backend, _growth, reason, message = load_candidate(part, blobs, probe, spec,
                                                       Path(cache_dir) if cache_dir else None)
    del blobs
    if backend is None:
        conn.send(("fail", reason, message))
        return
    priority = lower_all_threads()
    conn.send(("ready", round(rss_mb(), 1), priority))
    try:
        kind, settings = conn.recv()
    except (EOFError, OSError):
        return
    if kind == "mirror":
        serve(conn, ring, backend, settings)


def serve(conn: Connection, ring: Ring, backend: Any, settings: ShadowSettings) -> None:
    """Compare every record the agent puts in the ring until the socket says stop or ends."""
    stats = ShadowStats()
    tail = done = 0
    final = dirty = False
    said = ("Comparing", "", False)
    published, told = time.monotonic(), 0.0
    wait = POLL_S
    # one poll object for the socket, not Connection.poll's selector per call: the idle loop's wake-ups stay cheap
    watch = select.poll()
    watch.register(conn.fileno(), select.POLLIN | select.POLLHUP)

    def publish() -> None:
        nonlocal dirty, published
        ring.publish(json.dumps({"done": done, "stats": stats.to_state()}).encode())
        dirty, published = False, time.monotonic()

    publish()
    while True:
        got = ring.take(tail)
        try:
            if watch.poll(0 if got is not None else wait * 1000.0):
                return  # "stop", the socket's end, or anything else: the agent's word is the end
        except OSError:
            return
        if got is None:
            if dirty:
                publish()
            wait = min(wait * 2, POLL_MAX_S)
            continue
        wait = POLL_S
        slots, nxt, counted, payload = got
        if isinstance(payload, str):
            stats.skipped += 1
            stats.last_mismatch = f"unreadable shadow record: {payload}"
        elif payload is not None and not final:
            _one(backend, settings, stats, *payload)
        got = payload = None  # no view into the slots outlives them
        done += counted
        ring.free(tail, slots, done)
        tail, dirty = nxt, True
        st = stats
        if not final and (st.errors or st.nonfinite or st.samples >= settings.min_samples):
            v = device_verdict(st, settings, elapsed=0.0)  # maxDuration is the agent's to check
            now = time.monotonic()
            # a verdict near its threshold may flip per sample: the agent is told at most 5 times a second (its
            # passes judge anyway), a failure at once
            if (v.state, v.reason, v.switch) != said and (v.failed or now - told >= 0.2):
                said, final, told = (v.state, v.reason, v.switch), v.failed, now
                publish()
                try:
                    conn.send(("verdict", v.state))
                except OSError:
                    return
        if time.monotonic() - published >= PUBLISH_EVERY:
            publish()


def _one(backend: Any, settings: ShadowSettings, stats: ShadowStats, live_s: float, feeds: dict[str, Any],
         live: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    try:
        cand = backend.infer(feeds, None)
    except Exception as exc:  # the candidate's failure is the verdict, never the process's end
        stats.add_error(f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
        return
    took = time.perf_counter() - t0
    try:
        result = compare(live, cand, settings.compare)
    except Exception as exc:  # an unexpected tensor layout: one skipped sample, reported
        stats.skipped += 1
        stats.last_mismatch = f"cannot compare: {type(exc).__name__}: {exc}"
        return
    stats.add(result, took, live_s)


def load_candidate(part: dict[str, Any], blobs: list[bytes], probe: dict[str, Any] | None, spec: dict[str, Any],
                   cache_dir: Path | None) -> tuple[Any, float | None, str, str]:
    """Load the candidate with one intra-op thread and run the deployment's health check on its probe:
    (backend, memory in MiB: the RSS growth, at least the model's size, "", "") or (None, None, reason, message)."""
    from reconciler.serving.health import HealthPolicy, rss_mb, run_health_check
    from reconciler.serving.interface import interface_problems
    from reconciler.serving.runtimes import RuntimeLoadError, load_backend

    precision = str(part.get("precision") or "fp32")
    try:
        policy = HealthPolicy.from_spec(spec.get("health"), precision)
    except ValueError as exc:
        return None, None, R.LOAD_FAILED, str(exc)
    before = rss_mb()
    runtime = str(part.get("runtime"))
    try:
        backend = load_backend(runtime, blobs=blobs, threads=1, device=spec.get("device"),
                               providers=spec.get("providers"), precision=precision,
                               cache_dir=cache_dir / "openvino" if cache_dir and runtime == "openvino" else None)
    except RuntimeLoadError as exc:
        return None, None, exc.reason, str(exc)
    except Exception as exc:
        return None, None, R.LOAD_FAILED, f"{type(exc).__name__}: {exc}"
    problems = interface_problems(spec.get("inputs") or [], spec.get("outputs") or [], backend.inputs,
                                  backend.outputs)
    if problems:
        backend.close()
        return None, None, R.INTERFACE_MISMATCH, problems[0]
    health = run_health_check(backend, probe, policy, rss_before_mb=before)
    if not health.ok:
        backend.close()
        return None, None, health.reason or R.HEALTH_CHECK_FAILED, health.message
    # At least the model's own size: the weights are resident once loaded, while the RSS growth can read lower
    # when the allocator hands out pages the process had already freed.
    floor = sum(len(b) for b in blobs) / (1 << 20)
    growth = rss_mb() - before if before else 0.0
    return backend, round(max(growth, floor), 2), "", ""


