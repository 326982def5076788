"""A real forward proxy on loopback for the proxy tests: Debian's tinyproxy (scripts/install-deps.sh).

tinyproxy listens on 127.0.0.1 and opens its upstream connections from **127.0.0.2** (``Bind``), so a server's
access log that records ``$remote_addr`` tells a request that came through the proxy from one that did not.
In front of it sits :class:`Tap`, a relay that keeps every byte a client sends to the proxy: what the proxy
could read (``CONNECT`` lines, and for https nothing else in clear text).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

from tests._servers import _stop, free_port, wait_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
PROXIED_FROM = "127.0.0.2"
TAP_LIMIT = 64 << 20


class Tap:
    """A TCP relay ``127.0.0.1:port`` → ``upstream``; :attr:`seen` is what clients sent (at most 64 MiB)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._seen = bytearray()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def seen(self) -> bytes:
        with self._lock:
            return bytes(self._seen)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                client.close()
                continue
            up.settimeout(None)
            for s in (client, up):  # relay each chunk at once, as a proxy does: no Nagle delay added here
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        if len(self._seen) < TAP_LIMIT:
                            self._seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class TinyProxy:
    """tinyproxy on loopback behind a :class:`Tap`; :attr:`url` is the proxy URL clients are given."""

    def __init__(self, root: Path, *, basic_auth: tuple[str, str] | None = None) -> None:
        self.root = root
        self.basic_auth = basic_auth  # the proxy's own credentials (Proxy-Authorization), if it asks for them
        self.port = free_port()
        self.log = root / "tinyproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.tap: Tap | None = None

    @property
    def url(self) -> str:
        assert self.tap is not None
        return f"http://127.0.0.1:{self.tap.port}"

    def start(self) -> TinyProxy:
        self._spawn()
        self.tap = Tap(self.port)
        return self

    def restart(self, *, basic_auth: tuple[str, str] | None) -> None:
        """tinyproxy again on the same port with other credentials (an operator rotating the proxy's password):
        the connections through the old one are cut, the :class:`Tap` and :attr:`url` stay."""
        _stop(self._proc)
        self.basic_auth = basic_auth
        self._spawn()

    def _spawn(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "tinyproxy.conf"
        # No ConnectPort line: CONNECT to any port (the test servers listen on random ones).
        conf.write_text(f'Port {self.port}\nListen 127.0.0.1\nBind {PROXIED_FROM}\nTimeout 60\nMaxClients 200\n'
                        f'LogFile "{self.log}"\nLogLevel Connect\nPidFile "{self.root}/tinyproxy.pid"\n'
                        "Allow 127.0.0.1\n" + (f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}\n"
                                                if self.basic_auth else ""))
        with open(self.root / "tinyproxy.out", "ab") as out:
            self._proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=out, stderr=out,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, 10)

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged (``CONNECT host:port HTTP/1.1``, ``GET http://… HTTP/1.1``)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line.split("): ", 1)[1] for line in text.splitlines() if "Request (file descriptor" in line]

    def stop(self) -> None:
        if self.tap is not None:
            self.tap.close()
        _stop(self._proc)
        self._proc = None

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
