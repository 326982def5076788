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
        threads: int | None = None, workers: int = 1, grpc: bool = False,
    ) -> None:
        model = tmp_path / "mm.onnx"
        model.write_bytes(V1)
        args = [sys.executable, "-m", "reconciler.cli", "serve", str(model), "--name", "mm", "--port", "0"]
        args += [f"--limit={lim}" for lim in limits]
        if threads is not None:
            args += ["--threads", str(threads)]
        if workers > 1:
            args += ["--workers", str(workers)]
        if grpc:
            args += ["--grpc-port", "0"]

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
        self.grpc_port = 0
        if grpc:
            g = re.search(r"grpc://127\.0\.0\.1:(\d+)", self.proc.stdout.readline())  # type: ignore[union-attr]
            assert g is not None, "no gRPC port in serve's output"
            self.grpc_port = int(g.group(1))
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


class RawH2:
    """A hand-made HTTP/2 client for hostile gRPC tests: sends frames, never reads unless asked.

    ``hello()`` sends the preface, our SETTINGS and an ACK of the server's; ``request(stream, path, message,
    end)`` gives the frames of a stream's HEADERS (literal HPACK fields) and, with ``message``, one gRPC-framed
    DATA frame."""

    #: DATA frames no larger than HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which every server accepts (a larger
    #: one is a protocol error unless the server announced more): hostile in what it never does, not in framing.
    MAX_FRAME = 16384

    def __init__(self, port: int, rcvbuf: int | None = 4096) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)

    @staticmethod
    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    @staticmethod
    def _field(name: bytes, value: bytes) -> bytes:
        def length(n: int) -> bytes:  # HPACK integer, 7-bit prefix, no Huffman
            if n < 127:
                return bytes([n])
            out, n = bytearray([127]), n - 127
            while n >= 128:
                out.append((n & 127) | 128)
                n >>= 7
            return bytes(out + bytes([n]))

        return b"\x00" + length(len(name)) + name + length(len(value)) + value

    def hello(self, initial_window: int | None = None) -> None:
        settings = (2).to_bytes(2, "big") + (0).to_bytes(4, "big")  # no push
        if initial_window is not None:
            settings += (4).to_bytes(2, "big") + initial_window.to_bytes(4, "big")
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(4, 0, 0, settings) + self.frame(4, 1, 0, b""))

    def request(self, stream: int, path: bytes, message: bytes | None, end: bool = True,
                headers: tuple[tuple[bytes, bytes], ...] = (), cut: int | None = None) -> bytes:
        """The frames of one request; ``cut``: send only that many bytes of the message (it never completes)."""
        block = b"".join(self._field(k, v) for k, v in (
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *headers))
        out = self.frame(1, 4 | (1 if message is None and end else 0), stream, block)
        if message is not None:
            body = message if cut is None else message[:cut]
            data = b"\x00" + len(message).to_bytes(4, "big") + body
            last = (len(data) - 1) // self.MAX_FRAME * self.MAX_FRAME
            out += b"".join(self.frame(0, 1 if end and cut is None and at == last else 0, stream,
                                       data[at : at + self.MAX_FRAME]) for at in range(0, len(data), self.MAX_FRAME))
        return out

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()
