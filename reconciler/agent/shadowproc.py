"""The shadow candidate in a process of its own, at idle CPU priority: it never takes CPU, or the agent's GIL,
from the live requests.

Why a process and not a thread: a ``SCHED_IDLE`` thread in the agent still cost the live requests
(``bench/bench_shadow.py``, ``on_thread``): after every inference it needs the interpreter lock again, and a
live request that needs it then waits for an idle-priority thread to be given a core — on a busy device,
behind everything else. In a process of its own the candidate holds no lock the live requests need; the
mirror's worker in the agent (normal priority) sends a sample and waits for the answer with the lock released.

:meth:`CandidateProcess.start` runs ``python -c "…main(fd)"`` over a socket pair (the serving workers' way) and
sends it the candidate's files, probe and the deployment's spec. The child loads and health-checks the candidate
with one intra-op thread (:func:`load_candidate`: ONNX Runtime and OpenVINO's CPU plugin then compute in the
calling thread), lowers every thread it has to ``SCHED_IDLE`` (else nice 19: :mod:`reconciler.shadow.priority`;
threads started later inherit it) and answers ``("ready", rss MiB, priority)`` or ``("fail", reason, message)``.
Loading runs at normal priority, so a busy device does not hold the agent's pass for minutes. Then each
``("infer", feeds)`` gets ``("ok", outputs)`` or ``("error", text)``. The child ends when the socket closes (the
agent stopped it, or died); :meth:`CandidateProcess.close` kills it. The process costs a second interpreter
(``memoryMB`` is its whole RSS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.core import reasons as R
from reconciler.shadow.priority import NORMAL, lower_thread

#: How long the child may take to start, load and health-check the candidate.
START_TIMEOUT = 120.0


class CandidateError(RuntimeError):
    """The candidate raised on a sample (the text is the child's ``Type: message``), or its process is gone."""


class CandidateProcess:
    """The agent's end: ``infer(feeds)`` one sample at a time (the mirror has one worker), ``close()``."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, memory_mb: float, priority: str) -> None:
        self._proc, self._conn = proc, conn
        self.memory_mb, self.priority = memory_mb, priority
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    def start(cls, part: dict[str, Any], blobs: list[bytes], probe: dict[str, Any] | None, spec: dict[str, Any],
              cache_dir: Path | None, timeout: float = START_TIMEOUT) -> tuple[CandidateProcess | None, str, str]:
        """(the running candidate, "", "") or (None, reason, message)."""
        parent, child = socket.socketpair()
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        code = f"from reconciler.agent.shadowproc import main; main({child.fileno()})"
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            return None, R.LOAD_FAILED, f"cannot start the shadow process: {exc}"
        finally:
            child.close()
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
        return cls(proc, conn, float(answer[1]), str(answer[2])), "", ""

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            try:
                self._conn.send(("infer", feeds))
                kind, value = self._conn.recv()
            except (OSError, EOFError):
                raise CandidateError(f"the shadow process ended ({self._exit()})") from None
        if kind != "ok":
            raise CandidateError(str(value))
        return dict(value)

    def _exit(self) -> str:
        try:
            code = self._proc.wait(5.0)  # the socket closes a moment before the process is reaped
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def close(self) -> None:
        _end(self._proc, self._conn)


def _end(proc: subprocess.Popen[bytes], conn: Connection) -> None:
    proc.kill()  # nothing to save: the comparison's numbers are the agent's
    proc.wait()  # first: a worker waiting for an answer then reads end-of-file, not a closed descriptor
    conn.close()


def lower_all_threads() -> str:
    """Lower every thread of this process (those a runtime started while loading too); what this one got."""
    me, got = threading.get_native_id(), NORMAL
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        obtained = lower_thread(tid)
        if tid == me:
            got = obtained
    return got


def main(fd: int) -> None:
    """The child (see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the agent owns our lifetime: it closes the socket or kills us
        signal.signal(sig, signal.SIG_IGN)
    conn = Connection(fd)
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
    while True:
        try:
            kind, feeds = conn.recv()
        except (EOFError, OSError):
            return
        if kind != "infer":
            return
        try:
            answer = ("ok", backend.infer(feeds, None))
        except Exception as exc:  # the candidate's failure is the answer, never the process's end
            answer = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except OSError:  # the agent is gone
            return


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


