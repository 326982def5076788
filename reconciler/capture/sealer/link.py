"""The agent's end of the sealer process: starting it, its streams, the thread that takes its sealed batches,
its end.

:meth:`SealerProcess.start` runs ``python -c "…child.main(fd)"`` over a socket pair and returns at once; the
link thread waits for the child's ``ready`` (until then, and whenever the process is gone, :meth:`stream_for`
gives None and the capture service keeps records in the agent's own queue). A stream is created on the first
record of a new (endpoint, version, layout): a :class:`~reconciler.capture.sealer.ring.RowRing` whose
descriptor goes to the child with the stream's description (at most :data:`MAX_STREAMS`; a stream not written
for :data:`IDLE_END_S` is ended at the next ``configure``). The link thread passes each sealed batch to the
service's ``on_sealed`` and each error to ``on_error``; when the socket ends (the child crashed or was killed)
every ring is closed — a request that had one takes the agent's queue from then on — and ``on_exit`` gets how
the process ended and how many records were in its rings unsealed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from typing import Any

from reconciler.capture.policy import CapturePolicy
from reconciler.capture.sealer.ring import RowRing
from reconciler.capture.sealer.rows import RowLayout
from reconciler.core.children import exit_description, python_child_env

#: Streams (endpoint, version, layout) at once; a record of any other layout takes the agent's queue.
MAX_STREAMS = 8  # (8 rings of at most 8 MiB: the 64 MiB the agent's queue may hold)
#: A stream whose ring saw no record for this long is ended (its rows sealed first).
IDLE_END_S = 600.0
#: How long a message to the child may wait for room in the socket (then the child is replaced).
SEND_TIMEOUT = 1.0
#: How long a flush (``close`` included) waits for the child's answer.
FLUSH_TIMEOUT = 10.0

StreamKey = tuple[str, str, RowLayout]


def _proc_cpu(pid: int) -> float:
    """CPU seconds of every thread of a process, from the scheduler's nanosecond counts (``/proc/…/stat``'s
    clock ticks miss most of a process that runs in bursts of a millisecond)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                    total += int(fh.read().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


class SealerProcess:
    """The sealer child, its streams and its link thread."""

    def __init__(self, *, on_sealed: Callable[[str, dict[str, Any], bytes], None],
                 on_taken: Callable[[dict[tuple[str, str], int]], None],
                 on_error: Callable[[str], None], on_exit: Callable[[str, int], None]) -> None:
        self._on_sealed, self._on_taken = on_sealed, on_taken
        self._on_error, self._on_exit = on_error, on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # the streams
        self._streams: dict[StreamKey, tuple[int, RowRing]] = {}
        self._last_written: dict[int, tuple[int, float]] = {}  # sid -> (rows written, when that count was seen)
        self._sids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._flushed = threading.Condition()
        self._flushed_token = 0
        self._config: tuple[str, dict[str, CapturePolicy]] | None = None
        self._config_lock = threading.Lock()  # the last config and its sending: the child never gets an older one
        self.ready = threading.Event()
        self.gone = threading.Event()
        self._closing = False
        self._cpu_at_exit = 0.0
        self.link_cpu = 0.0  # CPU seconds the link thread spent on the child's messages (placing batches)
        self._thread: threading.Thread | None = None
        self._wake_w: int | None = None  # the pipe that wakes the child (the rings write to it)

    def start(self) -> str | None:
        """Start the child (not waiting for it); an error message when it cannot be started."""
        parent, child = socket.socketpair()
        wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # (numpy's BLAS threads: nothing the sealer does uses them)
        env = python_child_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        code = f"from reconciler.capture.sealer.child import main; main({child.fileno()}, {wake_r})"
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno(), wake_r], env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            os.close(self._wake_w)
            self._wake_w = None
            self.gone.set()
            return f"cannot start the capture sealer process: {exc}"
        finally:
            child.close()
            os.close(wake_r)
        # A send that waits longer than this (the child stopped reading: stopped, or stuck) fails, and the child is
        # killed and replaced: nothing in the agent, a request thread creating a stream least of all, waits on it.
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT), 0))
        self._conn = Connection(parent.detach())
        self._thread = threading.Thread(target=self._link, name="capture-sealer-link", daemon=True)
        self._thread.start()
        return None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def cpu_seconds(self) -> float:
        """The child's CPU time (user + system; the agent's link thread is ``link_cpu``)."""
        return _proc_cpu(self._proc.pid) if self._proc is not None and not self.gone.is_set() else \
            self._cpu_at_exit

    @property
    def backlog(self) -> int:
        """Rows written to the rings that the child has not taken yet."""
        with self._lock:
            return sum(int(ring.ctrl[0] - ring.ctrl[1]) for _sid, ring in self._streams.values() if not ring.closed)

    def wake(self) -> None:
        """Have the child look at its rings now, not at its next look (tests, the bench)."""
        with self._lock:
            if self._wake_w is not None:
                with contextlib.suppress(OSError):  # (full: it has wake-ups waiting already)
                    os.write(self._wake_w, b"w")

    def _send(self, *msg: Any) -> bool:
        conn = self._conn
        if conn is None or self.gone.is_set():
            return False
        try:
            with self._send_lock:
                conn.send(msg)
        except (OSError, ValueError):  # (a message may be half sent: the child cannot go on from there)
            self._kill()
            return False
        return True

    def configure(self, device: str, policies: Mapping[str, CapturePolicy]) -> None:
        """The enabled policies (sent now, or once the child is ready); streams of other endpoints end."""
        with self._config_lock:
            config = (device, dict(policies))
            # (unchanged: not sent again. The agent configures at every reconcile pass, and the writer every second
            # while capture is off and the process waits out its idle time: each send would wake the child)
            changed, self._config = config != self._config, config
            if changed and self.ready.is_set():
                self._send("config", *config)
        now = time.monotonic()
        with self._lock:
            ended = []
            for key, (sid, ring) in list(self._streams.items()):
                written = int(ring.ctrl[0])
                seen = self._last_written.get(sid)
                if seen is None or seen[0] != written:
                    self._last_written[sid] = (written, now)
                if key[0] not in policies or now - self._last_written[sid][1] >= IDLE_END_S:
                    ring.close()
                    del self._streams[key]
                    self._last_written.pop(sid, None)
                    ended.append(sid)
        for sid in ended:
            self._send("end", sid)

    def stream_for(self, endpoint: str, version: str, model: str, layout: RowLayout) -> RowRing | None:
        """The ring for this (endpoint, version, layout), created on first use; None: the agent's queue."""
        key = (endpoint, version, layout)
        with self._lock:
            got = self._streams.get(key)
            if got is not None:
                return got[1]
            if not self.ready.is_set() or self.gone.is_set() or self._closing or len(self._streams) >= MAX_STREAMS:
                return None
            try:
                ring, fd = RowRing.create(layout, self._wake_w)
            except (OSError, AttributeError, ValueError):  # AttributeError: no memfd_create (not Linux)
                return None
            try:
                sid = next(self._sids)
                conn = self._conn
                assert conn is not None and self._proc is not None
                with self._send_lock:
                    conn.send(("stream", sid, endpoint, version, model, layout, ring.capacity))
                    send_handle(conn, fd, self._proc.pid)
            except (OSError, ValueError, AssertionError):
                ring.close()
                ring.release()
                self._kill()  # (as in _send)
                return None
            finally:
                os.close(fd)
            self._streams[key] = (sid, ring)
            return ring

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Seal every stream's rows now; True once the child's batches are all handed to ``on_sealed``."""
        token = next(self._tokens)
        if not self._send("flush", token):
            return False
        with self._flushed:
            return self._flushed.wait_for(lambda: self._flushed_token >= token or self.gone.is_set(), timeout) \
                and not (self.gone.is_set() and self._flushed_token < token)

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Stop taking records, have the child seal what its rings hold and wait for it; then end it."""
        with self._lock:
            self._closing = True
            for _sid, ring in self._streams.values():
                ring.close()
        if self._send("close"):
            self.gone.wait(timeout)
        self._kill()
        if self._thread is not None:
            self._thread.join(timeout)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._cpu_at_exit = max(self._cpu_at_exit, _proc_cpu(proc.pid))
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)

    def exit_description(self) -> str:
        return exit_description(self._proc) if self._proc is not None else "not started"

    def _link(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while True:
                msg = conn.recv()
                t0 = time.thread_time()
                kind = msg[0]
                if kind == "ready":
                    with self._config_lock:
                        if self._config is not None:
                            self._send("config", *self._config)
                        self.ready.set()
                elif kind == "sealed":
                    for endpoint, header, data in msg[1]:
                        self._on_sealed(endpoint, header, data)
                    if msg[2]:
                        self._on_taken(msg[2])
                elif kind == "error":
                    self._on_error(str(msg[1]))
                elif kind == "flushed":
                    with self._flushed:
                        self._flushed_token = max(self._flushed_token, int(msg[1]))
                        self._flushed.notify_all()
                elif kind == "closed":
                    break
                self.link_cpu += time.thread_time() - t0
        except (EOFError, OSError):
            pass
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._lock:  # (stream_for makes no ring after this)
            lost = sum(ring.close() for _sid, ring in self._streams.values())
            clean = self._closing
            self.gone.set()
            if self._wake_w is not None:  # every ring is closed: none writes to it any more
                with contextlib.suppress(OSError):
                    os.close(self._wake_w)
                self._wake_w = None
        if self._proc is not None:  # (an exited child not reaped yet still shows its CPU)
            self._cpu_at_exit = max(self._cpu_at_exit, _proc_cpu(self._proc.pid))
        with self._flushed:
            self._flushed.notify_all()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if not clean:
            self._on_exit(self.exit_description(), lost)

