"""Real servers as operators run them, started from Debian packages on 127.0.0.1 (shared by test modules).

- :class:`Pki`: a CA and a server certificate for 127.0.0.1/localhost made with ``openssl`` (plus an unrelated
  CA, to test a device that does not trust the server).
- :class:`GitHttp`: nginx + fcgiwrap + ``git http-backend`` (smart HTTP, protocol v2 through
  ``GIT_PROTOCOL``), on plain HTTP and HTTPS. ``/git/<repo>`` asks for Basic auth only on push,
  ``/private/<repo>`` on everything, ``/tuf/<name>/`` serves a static TUF repository to a bearer token (or
  Basic with the token as password). ``access_log`` counts requests per path (``services_log``: with the Git
  service a ``GET info/refs`` asked for, and the request's time). ``ls_refs_cache_s`` adds nginx's
  microcache of the devices' ``ls-refs`` poll (off by default; docs/scale.md). ``read_only`` users authenticate
  but may not push, ``no_access`` users may not fetch either: ``git http-backend`` answers them with 403
  (``http.receivepack``/``http.uploadpack`` false for them), as a host answers a read-only token, a protected
  branch or a token without access to the repository.
- :class:`SshServer`: sshd on a loopback port with a deploy key and a pinned known-hosts file.

Everything runs as the current user, config/pids/logs in a temp dir, on free ports; start-up waits are
bounded and ``stop()`` kills only the processes started here. Repositories and TUF directories are published
by symlink (:meth:`GitHttp.publish_repo`, :meth:`GitHttp.publish_tuf`), so one server serves many tests.

    with GitHttp(tmp, pki) as srv:
        srv.publish_repo("fleet.git", bare_path)
        url = srv.url("fleet.git", private=True, tls=True)
"""

from __future__ import annotations

import base64
import getpass
import grp
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests._git_fixtures import free_port, make_ssh_key, wait_port

GIT_HTTP_BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip()) / "git-http-backend"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FCGIWRAP = shutil.which("fcgiwrap") or "/usr/sbin/fcgiwrap"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
FCGI_BACKLOG = 4096  # capped by net.core.somaxconn
START_TIMEOUT = 15.0


def _run(*cmd: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")


def _wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
    _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait for the rest of a stopped server's process group (its workers exit after their parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def private_file(path: Path, text: str) -> Path:
    """A secret file as a device gets it: 0600, owned by us."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)
    return path


@dataclass
class Pki:
    """A test CA and a 127.0.0.1 server certificate signed by it; ``other_ca`` signs nothing we serve."""

    dir: Path
    ca: Path
    cert: Path
    key: Path
    other_ca: Path

    @classmethod
    def make(cls, directory: Path) -> Pki:
        d = directory
        d.mkdir(parents=True, exist_ok=True)
        for name in ("ca", "other-ca"):
            _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"), "-days", "2",
                 "-subj", f"/CN=modelfleet test {name}")
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1")
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth\n")
        _run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
             str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "2", "-extfile",
             str(d / "ext.cnf"))
        return cls(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")

    def client_cert(self, name: str, *, ca: str = "ca") -> tuple[Path, Path]:
        """(certificate, private key 0600) of a TLS client ``name`` signed by ``ca`` ("ca" or "other-ca")."""
        d = self.dir
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        (d / "client-ext.cnf").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
        _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(d / f"{ca}.pem"), "-CAkey", str(d / f"{ca}.key"),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(d / "client-ext.cnf"))
        key.chmod(0o600)
        return cert, key


# The ls-refs microcache (``GitHttp(ls_refs_cache_s=...)``, docs/scale.md): the device's idle poll, protocol v2
# ``ls-refs`` asking only for ref prefixes, answered from nginx for VALID seconds after one git http-backend call.
# The key is everything the answer depends on (method, URI = repository, Git-Protocol, request body); auth_basic
# runs in the access phase, before the cache is looked at. Everything else bypasses it: a body not in memory
# ($request_body empty), compressed or of another command (fetch, receive-pack), GET info/refs, and every
# ls-refs git itself sends (it always asks for ``symrefs``), so ``git fetch`` after a push always sees the push.
LS_REFS_CACHE_HTTP = r"""
    fastcgi_cache_path ROOT/lsrefs-cache levels=1:2 keys_zone=lsrefs:1m max_size=16m inactive=60s use_temp_path=off;
    map "$request_method:$uri:$request_body" $lsrefs_skip_cache {
        default 1;
        "~^POST:/(git|private)/.+/git-upload-pack:0014command=ls-refs\n(?:[0-9a-f]{4}[a-z-]+=[^\n]*\n)*0001(?:[0-9a-f]{4}ref-prefix [^\n]+\n)+0000\z" 0;
    }
"""
LS_REFS_CACHE = """
            client_body_buffer_size 16k;  # $request_body is only set for a body held in one memory buffer
            client_body_in_single_buffer on;
            fastcgi_cache lsrefs;
            fastcgi_cache_methods POST;
            fastcgi_cache_key "$request_method $request_uri $http_git_protocol $request_body";
            fastcgi_no_cache $lsrefs_skip_cache;
            fastcgi_cache_bypass $lsrefs_skip_cache;
            fastcgi_cache_valid 200 VALIDs;
            fastcgi_ignore_headers Cache-Control Expires;  # http-backend marks every answer no-cache
            fastcgi_cache_lock on;  # a burst of polls on an expired answer makes one backend call
            fastcgi_cache_lock_timeout 5s;
"""


def _htpasswd_line(user: str, password: str) -> str:
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"  # noqa: S324 - nginx's format


class GitHttp:
    """nginx + fcgiwrap + git http-backend, HTTP and HTTPS; see the module docstring."""

    def __init__(self, root: Path, pki: Pki, *, users: dict[str, str], tuf_token: str,
                 ls_refs_cache_s: int | None = None, read_only: tuple[str, ...] = (),
                 no_access: tuple[str, ...] = (), client_ca: Path | None = None) -> None:
        if ls_refs_cache_s is not None and ls_refs_cache_s < 1:
            raise ValueError("ls_refs_cache_s is whole seconds (nginx's cache validity), at least 1, or None")
        self.root = root
        self.ls_refs_cache_s = ls_refs_cache_s
        self.pki = pki
        self.users = dict(users)
        unknown = (set(read_only) | set(no_access)) - set(users)
        if unknown:
            raise ValueError(f"read_only/no_access users {sorted(unknown)} are not in users")
        # Per user, how many of the GIT_CONFIG_KEY_n below git http-backend applies (0: none).
        self.denied = {**{u: 1 for u in read_only}, **{u: 2 for u in no_access}}
        self.tuf_token = tuf_token
        # With a client CA, a third port serves the same over HTTPS to clients with a certificate it signed only
        # (nginx `ssl_verify_client on`: without one, HTTP 400 "No required SSL certificate was sent").
        self.client_ca = client_ca
        self.mtls_port = free_port() if client_ca is not None else None
        self.peers_log = root / "peers.log"  # METHOD URI STATUS REMOTE_ADDR: who connected (a proxy or not)
        self.git_root = root / "git-root"
        self.tuf_root = root / "tuf-root"
        self.access_log = root / "access.log"
        self.services_log = root / "services.log"  # the same requests with the service argument and the time
        self.http_port = free_port()
        self.https_port = free_port()
        self.backend = GIT_HTTP_BACKEND  # the CGI program (a benchmark may wrap it to account its CPU)
        self._nginx: subprocess.Popen[bytes] | None = None
        self._fcgi: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        r = self.root
        basic_token = base64.b64encode(f"tuf:{self.tuf_token}".encode()).decode()
        git_fcgi = f"""
            client_max_body_size 0;
            fastcgi_pass unix:{r}/fcgiwrap.sock;
            fastcgi_read_timeout 60s;
            fastcgi_param SCRIPT_FILENAME {self.backend};
            fastcgi_param GIT_PROJECT_ROOT {self.git_root};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param GIT_CONFIG_COUNT $git_denied;  # read_only (1) and no_access (2) users get a 403
            fastcgi_param GIT_CONFIG_KEY_0 http.receivepack;
            fastcgi_param GIT_CONFIG_VALUE_0 false;
            fastcgi_param GIT_CONFIG_KEY_1 http.uploadpack;
            fastcgi_param GIT_CONFIG_VALUE_1 false;
            fastcgi_param PATH_INFO $git_path;  # named: the map's regex resets $1
            fastcgi_param QUERY_STRING $args;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        """ + (LS_REFS_CACHE.replace("VALID", str(self.ls_refs_cache_s)) if self.ls_refs_cache_s else "")
        # As root, nginx would hand its workers to "nobody"; keep them as the current user (the socket's owner).
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};" if os.geteuid() == 0 else ""
        locations = f"""        location ~ ^/git(?<git_path>/.*)$ {{
            auth_basic $push_realm;
            {git_fcgi}
        }}
        location ~ ^/private(?<git_path>/.*)$ {{
            auth_basic "fleet";
            {git_fcgi}
        }}
        location /tuf/ {{
            if ($tuf_ok = 0) {{ return 401; }}
            alias {self.tuf_root}/;
        }}
"""
        mtls = "" if self.client_ca is None else f"""server {{
        listen 127.0.0.1:{self.mtls_port} ssl;
        ssl_certificate {self.pki.cert};
        ssl_certificate_key {self.pki.key};
        ssl_client_certificate {self.client_ca};
        ssl_verify_client on;
{locations}    }}"""
        return f"""
daemon off;
{user}
worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 16384; }}  # a simulated fleet keeps one connection per device alive
http {{
    log_format counted '$request_method $uri $status $remote_user $connection $connection_requests $upstream_cache_status';
    log_format services '$request_method $uri $arg_service $status $remote_user $request_time $msec $body_bytes_sent';
    access_log {self.access_log} counted;
    access_log {self.services_log} services;
    log_format peers '$request_method $uri $status $remote_addr';
    access_log {self.peers_log} peers;
    client_body_temp_path {r}/tmp/body;
    fastcgi_temp_path {r}/tmp/fastcgi;
    proxy_temp_path {r}/tmp/proxy;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000;
    types {{ application/json json; application/octet-stream bin onnx; }}
    auth_basic_user_file {r}/htpasswd;
    map "$uri?$arg_service" $push_realm {{ default off; "~git-receive-pack" "fleet push"; }}
    map $remote_user $git_denied {{ default 0; {"".join(f'"{u}" {n}; ' for u, n in self.denied.items())}}}
    {LS_REFS_CACHE_HTTP.replace("ROOT", str(r)) if self.ls_refs_cache_s else ""}
    map $http_authorization $tuf_ok {{ default 0; "Bearer {self.tuf_token}" 1; "Basic {basic_token}" 1; }}
    server {{
        listen 127.0.0.1:{self.http_port};
        listen 127.0.0.1:{self.https_port} ssl;
        ssl_certificate {self.pki.cert};
        ssl_certificate_key {self.pki.key};
{locations}    }}
    {mtls}
}}
"""

    def start(self) -> GitHttp:
        for d in (self.git_root, self.tuf_root, self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "htpasswd").write_text("".join(_htpasswd_line(u, p) for u, p in self.users.items()))
        conf = self.root / "nginx.conf"
        conf.write_text(self._config())
        self.start_backend()
        nlog = self.root / "nginx.out"
        with open(nlog, "ab") as fh:
            self._nginx = subprocess.Popen([NGINX, "-e", str(self.root / "error.log"), "-p", str(self.root), "-c", str(conf)],
                                           stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(self.http_port, START_TIMEOUT)
            wait_port(self.https_port, START_TIMEOUT)
            if self.mtls_port is not None:
                wait_port(self.mtls_port, START_TIMEOUT)
        except AssertionError:
            self.stop()
            raise AssertionError(f"nginx did not start: {(self.root / 'error.log').read_text(errors='replace')[-2000:]}") from None
        return self

    def start_backend(self) -> None:
        """Start fcgiwrap (``git http-backend``'s FastCGI front); nginx answers 502 while it is stopped."""
        sock = self.root / "fcgiwrap.sock"
        flog = self.root / "fcgiwrap.log"
        # The listening socket is made here and handed over as fd 0, as Debian's fcgiwrap.socket (systemd socket
        # activation) does: its backlog is then the kernel's somaxconn, not the 511-ish fcgiwrap's own -s gives,
        # so a burst of a fleet's requests waits in the queue instead of failing with 502 (EAGAIN on connect).
        sock.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(sock))
            listener.listen(FCGI_BACKLOG)
            with open(flog, "ab") as fh:
                self._fcgi = subprocess.Popen([FCGIWRAP, "-c", "4"], stdout=fh, stderr=fh, stdin=listener.fileno(),
                                              start_new_session=True,
                                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)})
        finally:
            listener.close()
        _wait_file(sock, self._fcgi, flog)

    def stop_backend(self) -> None:
        """Stop fcgiwrap: nginx stays up and answers every Git request with 502, as an overloaded or restarting
        Git server behind a proxy does."""
        # fcgiwrap's -c workers share the listening socket and outlive their parent's wait() by a moment: one of
        # them could still accept the next request. Unlinking the socket first makes every new connect fail.
        (self.root / "fcgiwrap.sock").unlink(missing_ok=True)
        _stop(self._fcgi)
        self._fcgi = None

    def stop(self) -> None:
        _stop(self._nginx)
        _stop(self._fcgi)
        self._nginx = self._fcgi = None

    def __enter__(self) -> GitHttp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish_repo(self, name: str, bare: Path) -> None:
        link = self.git_root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(bare)
        # http-backend only accepts pushes with REMOTE_USER set (nginx sets it after Basic auth).
        _run("git", "--git-dir", str(bare), "config", "http.receivepack", "true")

    def publish_tuf(self, name: str, directory: Path, *, mtls: bool = False) -> str:
        link = self.tuf_root / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(directory)
        return f"https://127.0.0.1:{self.mtls_port if mtls else self.https_port}/tuf/{name}"

    def peers(self) -> list[tuple[str, str, str, str]]:
        """(method, uri, status, remote address) of every request so far."""
        try:
            return [tuple(line.split(" ")[:4]) for line in self.peers_log.read_text().splitlines()]  # type: ignore[misc]
        except FileNotFoundError:
            return []

    def url(self, name: str, *, private: bool = False, tls: bool = False, mtls: bool = False) -> str:
        scheme, port = ("https", self.https_port) if tls else ("http", self.http_port)
        if mtls:
            assert self.mtls_port is not None, "GitHttp(client_ca=...) serves mutual TLS"
            scheme, port = "https", self.mtls_port
        return f"{scheme}://127.0.0.1:{port}/{'private' if private else 'git'}/{name}"

    def pids(self) -> list[int]:
        """nginx's and fcgiwrap's process ids (their descendants do the work: benchmarks sum their CPU)."""
        return [p.pid for p in (self._nginx, self._fcgi) if p is not None]

    def requests(self) -> list[str]:
        """Access log lines so far (``METHOD URI STATUS USER CONNECTION N CACHE``; CACHE is ``-`` when the request
        did not pass the ls-refs cache, else nginx's ``$upstream_cache_status``: MISS, HIT, EXPIRED, BYPASS...)."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []


    def service_requests(self) -> list[str]:
        """Access log lines with the Git service asked for (``METHOD URI SERVICE STATUS USER SECONDS END BYTES``;
        SERVICE is ``-`` but for ``GET info/refs``, where it tells a push's ref advertisement from a fetch's; END is
        the wall clock when the answer was sent, in seconds with milliseconds; BYTES the body sent)."""
        try:
            return self.services_log.read_text().splitlines()
        except FileNotFoundError:
            return []


class SshServer:
    """sshd on 127.0.0.1 accepting one deploy key for the current user; ``known_hosts`` pins its host key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SshServer:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / "host_ed25519"))
        self.deploy_key = make_ssh_key(r / "keys", "deploy@devices").path
        self.other_key = make_ssh_key(r / "keys", "stranger@nowhere").path
        host_pub = (r / "host_ed25519.pub").read_text().split()
        self.known_hosts = r / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / "other_host"))
        other = (r / "other_host.pub").read_text().split()
        self.wrong_known_hosts = r / "wrong_known_hosts"
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} {other[0]} {other[1]}\n")
        (r / "authorized_keys").write_text("restrict " + self.deploy_key.with_suffix(".pub").read_text())
        conf = r / "sshd_config"
        conf.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {r / 'host_ed25519'}
PidFile {r / 'sshd.pid'}
AuthorizedKeysFile {r / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {self.user}
LogLevel ERROR
""")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        log = r / "sshd.log"
        with open(log, "ab") as fh:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=fh, stderr=fh,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(self.port, START_TIMEOUT)
        except AssertionError:
            self.stop()
            raise AssertionError(f"sshd did not start: {log.read_text(errors='replace')[-2000:]}") from None
        return self

    def stop(self) -> None:
        _stop(self._proc)
        self._proc = None

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, bare: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{bare}"
