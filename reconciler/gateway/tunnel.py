"""The road of the gateway's nginx to the central TUF server through an egress proxy: a ``CONNECT`` relay.

nginx's ``proxy_pass`` connects to its upstream itself and cannot ask a forward proxy for a tunnel. When the
TUF upstream's route is a proxy (``upstream.tuf.credentials.proxy``, else ``https_proxy``/``no_proxy`` of the
gateway's environment, as every other client decides it: :func:`reconciler.core.proxy.proxy_for`), nginx
instead connects to a :class:`ConnectTunnel` on loopback, which opens one ``CONNECT host:port`` through the
proxy per connection and then relays bytes both ways. nginx still does the TLS with the central server itself —
its certificate verified against ``caFile``/``extraCaFile`` under its own name (``proxy_ssl_name``), the
gateway's client certificate sent — so the proxy sees the host and port only, and the TUF credential travels
inside the tunnel.

The proxy's own credentials (``proxyUsername`` + ``proxyPasswordFile``, or the environment proxy URL's
userinfo) go on each ``CONNECT`` as ``Proxy-Authorization``, the file read at that moment (a rotated password
applies to the next tunnel). What went wrong last is :attr:`ConnectTunnel.last_error`, for the gateway's state;
it never holds a secret.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from urllib.parse import unquote, urlsplit

from reconciler.core.credentials import CredentialError, Credentials, basic_authorization

log = logging.getLogger("reconciler.gateway")

MAX_HEAD = 16 << 10
CONNECT_TIMEOUT = 30.0


class ConnectTunnel:
    """A loopback listener; each connection is relayed through ``proxy`` to ``host``:``port`` (``CONNECT``)."""

    def __init__(self, proxy: str, host: str, port: int, credentials: Credentials, *,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        parts = urlsplit(proxy)
        self.proxy_scheme = parts.scheme
        self.proxy_host = parts.hostname or ""
        self.proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.display_proxy = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        self._userinfo = ((unquote(parts.username or ""), unquote(parts.password or ""))
                          if parts.username is not None or parts.password is not None else None)
        self.host, self.port = host, port
        self.credentials = credentials
        self.timeout = timeout
        self.tunnels = 0
        self.last_error: str | None = None
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def listen_port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def start(self) -> ConnectTunnel:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        threading.Thread(target=self._accept, name="tuf-tunnel", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="tuf-tunnel-conn", daemon=True).start()

    def _authorization(self) -> str | None:
        auth = self.credentials.proxy_authorization()  # read now: a rotated password applies to this tunnel
        if auth is None and self._userinfo is not None:
            auth = basic_authorization(*self._userinfo)
        return auth

    def open(self) -> socket.socket:
        """A connection to the target through the proxy; OSError (its message names the proxy's answer)."""
        try:
            auth = self._authorization()
        except CredentialError as exc:
            raise OSError(str(exc)) from None
        sock = socket.create_connection((self.proxy_host, self.proxy_port), timeout=self.timeout)
        try:
            if self.proxy_scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.proxy_host)
            head = f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n"
            if auth is not None:
                head += f"Proxy-Authorization: {auth}\r\n"
            sock.sendall((head + "\r\n").encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk or len(answer) > MAX_HEAD:
                    raise OSError(f"the proxy {self.display_proxy} closed the connection before answering CONNECT")
                answer += chunk
            status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
            fields = status_line.split(" ", 2)
            if len(fields) < 2 or fields[1] != "200":
                said = " ".join(fields[1:])[:120] if len(fields) > 1 else status_line[:120]
                raise OSError(f"the proxy {self.display_proxy} refused the tunnel to {self.target} ({said})")
            # Bytes after the proxy's answer are the server's (nothing, before the client speaks TLS).
            rest = answer.split(b"\r\n\r\n", 1)[1]
            if rest:
                raise OSError(f"the proxy {self.display_proxy} sent data before the tunnel was used")
            sock.settimeout(None)
            return sock
        except BaseException:
            sock.close()
            raise

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.open()
        except OSError as exc:
            message = str(exc) if "proxy" in str(exc) else (
                f"cannot reach the proxy {self.display_proxy}: {exc.strerror or exc}")
            if message != self.last_error:
                log.warning("TUF upstream tunnel failed: %s", message)
            self.last_error = message
            client.close()
            return
        self.tunnels += 1
        self.last_error = None
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
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
