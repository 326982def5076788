"""The floor under the server's latency: what loopback TCP and the load generator cost with no server work at all.

- :class:`FloorProc`: a bare uvloop + httptools ``Protocol`` in its own process that parses each request and
  writes one constant response (byte for byte the answer our server gave to the same request): the least any
  Python server on this event loop can do.
- :class:`NginxFloor`: nginx (one worker) answering ``return 200`` with a body of the same length: the floor of
  a C server on this machine.
- :func:`wrk_latency`: ``wrk --latency`` (at concurrency 1 by default) with a Lua script carrying the same POST,
  a C client next to ``_loadgen``'s Python one, so the client's own per-request cost shows.
"""

from __future__ import annotations

import getpass
import grp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_FLOOR_SERVER = r"""
import asyncio, sys
import httptools, uvloop
RESP = bytes.fromhex(sys.stdin.readline().strip())
class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        self.transport.write(RESP)
async def main():
    server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.install()
asyncio.run(main())
"""
_CLK = os.sysconf("SC_CLK_TCK")


def fetch(port: int, request: bytes) -> bytes:
    """Send ``request`` once and return the whole raw response (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        while len(body) < n:
            body += s.recv(65536)
        return head + b"\r\n\r\n" + body


class FloorProc:
    """The bare uvloop + httptools server answering ``response`` to every request."""

    def __init__(self, response: bytes) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _FLOOR_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(response.hex().encode() + b"\n")
        self.proc.stdin.close()
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"floor server did not start: {line!r}")
        self.port = int(line)

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLK

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Whether ``proc`` accepts connections on ``port`` within ``timeout`` seconds (False once it has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class NginxFloor:
    """nginx, one worker, ``return 200`` with a body of ``body_len`` bytes on every location."""

    def __init__(self, body_len: int) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).is_file():
            raise RuntimeError("nginx is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="mf-floor-nginx-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};" if os.geteuid() == 0 else ""
        r = self.root
        (r / "tmp").mkdir()
        (r / "nginx.conf").write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {r}/tmp;
    keepalive_requests 10000000;
    default_type application/json;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ return 200 '{"x" * body_len}'; }}
    }}
}}
""")
        self.proc = subprocess.Popen([nginx, "-e", str(r / "error.log"), "-p", str(r), "-c", str(r / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_listening(self.proc, self.port, 10):
            err = (r / "error.log").read_text(errors="replace")[-500:] if (r / "error.log").exists() else ""
            self.stop()
            raise RuntimeError(f"nginx did not start: {err}")

    def cpu_s(self) -> float:
        """nginx's worker does the work: the master's child's CPU time."""
        total = 0.0
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            with open(f"/proc/{child}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def wrk_script(request: bytes, dest: Path) -> Path:
    """A wrk Lua script sending the method, path, headers and body of the raw ``request``."""
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    out = [f'wrk.method = "{method}"', f'wrk.path = "{path}"', f"wrk.body = {_lua_string(body)}"]
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() not in ("host", "content-length"):  # wrk writes both itself
            out.append(f'wrk.headers["{name}"] = "{value.strip()}"')
    dest.write_text("\n".join(out) + "\n")
    return dest


_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk_latency(port: int, script: Path, seconds: float, conc: int = 1) -> dict[str, float]:
    """p50/p99 µs and req/s of ``wrk -t1 -c{conc} --latency`` (by default one connection, one request at a
    time)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    r = subprocess.run([wrk, "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 30)
    p50 = re.search(r"^\s+50%\s+(\S+)", r.stdout, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", r.stdout, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if r.returncode != 0 or p50 is None or p99 is None or rps is None:
        raise RuntimeError(f"wrk failed: {r.stdout[-300:]} {r.stderr[-300:]}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", r.stdout)
    return {"p50_us": _us(p50.group(1)), "p99_us": _us(p99.group(1)), "rps": round(float(rps.group(1))),
            "errors": int(errors.group(1)) if errors else 0}
