"""Helpers for the hostile-input tests: `modelfleet serve` in a subprocess (its RSS read from /proc) and raw clients."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests._serving_fixtures import V1


class ServerProcess:
    """``modelfleet serve model.onnx --name mm --port 0 --limit …`` with an optional open-file limit."""

    def __init__(
        self, tmp_path: Path, *limits: str, nofile: int | None = None, env: dict[str, str] | None = None,
        threads: int | None = None, workers: int = 1,
    ) -> None:
        model = tmp_path / "mm.onnx"
        model.write_bytes(V1)
        args = [sys.executable, "-m", "reconciler.cli", "serve", str(model), "--name", "mm", "--port", "0"]
        args += [f"--limit={lim}" for lim in limits]
        if threads is not None:
            args += ["--threads", str(threads)]
        if workers > 1:
            args += ["--workers", str(workers)]

        def preexec() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if m is None:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.port = int(m.group(1))
        self.pids = [self.proc.pid]  # the serving processes: the worker processes with --workers
        if workers > 1:
            self.pids = [int(p) for p in re.findall(r"\d+", self.proc.stdout.readline().partition("pids")[2])]  # type: ignore[union-attr]

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def timed_get(port: int, path: str = "/v2/health/live", timeout: float = 10.0) -> tuple[int, float]:
    """Status of a fresh GET and how long it took, connect included."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - t0
    finally:
        conn.close()


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes (or resets, or ``timeout`` of silence)."""
    sock.settimeout(timeout)
    out = []
    try:
        while chunk := sock.recv(65536):
            out.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(out)


def send_in_background(sock: socket.socket, data: bytes, piece: int = 65536) -> threading.Thread:
    """Send ``data`` from a thread, stopping quietly when the server stops reading or closes."""

    def run() -> None:
        sock.settimeout(5)
        view = memoryview(data)
        try:
            for i in range(0, len(view), piece):
                sock.sendall(view[i : i + piece])
        except OSError:
            pass

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def sample_while(fn: Callable[[], float], until: Callable[[], bool], every: float, limit: float) -> list[float]:
    """Call ``fn`` every ``every`` seconds until ``until()`` or ``limit`` seconds passed; return the values."""
    values: list[float] = []
    end = time.monotonic() + limit
    while time.monotonic() < end and not until():
        values.append(fn())
        time.sleep(every)
    return values


@contextlib.contextmanager
def one_at_a_time() -> Iterator[None]:
    """Latency and memory measurements of the heavy cases never overlap (xdist workers, other checkouts)."""
    with open("/tmp/modelfleet-hostile-tests.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
