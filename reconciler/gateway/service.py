"""``modelfleet gateway run``: nginx + fcgiwrap supervised, the mirror refreshed and the status relayed.

:class:`Gateway` prepares the data directory (mirror, status repository, caches, the generated nginx config),
starts fcgiwrap on a listening socket it makes itself (the kernel's backlog, as systemd's ``fcgiwrap.socket``
gives it: a burst of a site's requests waits instead of failing with 502) and nginx, then every ``interval``
refreshes the mirror (one ``ls-refs`` upstream) and relays the site's new status commits (one push per upstream
status repository). Each child runs in a process group of its own and is stopped as a group: fcgiwrap's preforked
workers outlive their parent otherwise. Both die with the gateway (``PR_SET_PDEATHSIG``) — fcgiwrap's workers,
which the kernel does not signal, when the next start stops the group a previous run left (their pid files; under
systemd the unit's cgroup takes them at once). On SIGTERM it relays once more, then stops them; SIGHUP runs a
round at once. ``<run>/state.json`` says what it did last (``gateway status``): each upstream's last failure
with the reason a device would give (``mirror.reason``, ``status.reason``, ``tuf.reason``). When the TUF
upstream's route is a proxy, nginx reaches it through a CONNECT tunnel the gateway runs
(:mod:`~reconciler.gateway.tunnel`). A rotated TUF token, CA or client certificate file is seen at the next round
and nginx reloaded with it (its config holds the token; nginx reads the certificate and key when it loads).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.core.credentials import CredentialError
from reconciler.core.fsutil import atomic_write_text
from reconciler.gateway.config import GatewayConfig
from reconciler.gateway.mirror import FleetMirror
from reconciler.gateway.nginx import nginx_config, tuf_route
from reconciler.gateway.relay import StatusRelay
from reconciler.gateway.tunnel import ConnectTunnel
from reconciler.gateway.upstream import TufProbe

log = logging.getLogger("reconciler.gateway")
FCGI_BACKLOG = 4096
START_TIMEOUT = 15.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setsid()


def _group_members(pgid: int, expect: str) -> list[int]:
    """Live processes of process group ``pgid`` whose command line has ``expect``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if expect in cmdline:
            out.append(int(stat.parent.name))
    return out


def _stop_pidfile(pidfile: Path, expect: str) -> None:
    """Stop what a previous run left: the process its pid file names and the rest of its process group (the pid
    is the group's: the child called setsid), each only when its command line has ``expect``. The group outlives
    its leader: fcgiwrap's workers stay after their parent died with a gateway killed by ``kill -9``."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = _group_members(pid, expect)
        for member in members:
            try:
                os.kill(member, sig)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if not _group_members(pid, expect):
                return
            time.sleep(0.1)


def _stop_group(proc: subprocess.Popen[bytes], expect: str) -> None:
    """Stop ``proc`` and its process group (its own: the child called setsid), SIGKILL after 10 s; once ``proc``
    has exited, only the members whose command line has ``expect`` (its pid may be anyone's now)."""
    if proc.poll() is not None:
        for member in _group_members(proc.pid, expect):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.data = cfg.data_dir
        self.run_dir = cfg.data_dir / "run"
        self.repos = cfg.data_dir / "repos"
        self.mirror = FleetMirror(self.repos / "fleet.git", cfg.source_url, cfg.branches,
                                  credentials=cfg.source_credentials)
        self.relay = StatusRelay(self.repos / "status.git", cfg.data_dir / "relay-journal.json",
                                 cfg.upstream_status_urls, prefix=cfg.status_prefix,
                                 credentials=cfg.relay_credentials, max_refs_per_push=cfg.max_refs_per_push,
                                 max_devices=cfg.max_devices)
        self.tunnel: ConnectTunnel | None = None  # nginx's road to the TUF upstream through a proxy
        self.tuf_probe: TufProbe | None = None  # names what the TUF upstream's road does (after prepare())
        self._nginx: subprocess.Popen[bytes] | None = None
        self._tuf_files_seen: tuple[tuple[str, int, int, int, int], ...] = ()
        self._fcgi: subprocess.Popen[bytes] | None = None
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # SIGHUP: a round now
        self.state: dict[str, Any] = {}

    # -- setup

    def prepare(self) -> None:
        for d in (self.data, self.run_dir, self.repos, self.data / "cache", self.run_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.mirror.ensure()
        self.relay.ensure()
        route = tuf_route(self.cfg)
        if route is not None and self.tunnel is None:
            tuf = urlsplit(self.cfg.tuf_url)
            self.tunnel = ConnectTunnel(route, tuf.hostname or "", tuf.port or (443 if tuf.scheme == "https" else 80),
                                        self.cfg.tuf_credentials).start()
        self._tuf_files_seen = self._tuf_files()
        atomic_write_text(self.run_dir / "nginx.conf", self._nginx_config(), mode=0o600)

    def _nginx_config(self) -> str:
        return nginx_config(self.cfg, run_dir=self.run_dir,
                            tunnel_port=self.tunnel.listen_port if self.tunnel else None)

    def _tuf_files(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """Identity of the files nginx's TUF upstream settings come from: the token (written into its config), the
        CAs and the client certificate and key (read by nginx when it loads its config)."""
        c = self.cfg.tuf_credentials
        out = []
        for p in (c.bearer_token_file, c.password_file, c.ca_file, c.extra_ca_file, c.client_cert_file,
                  c.client_key_path):
            if p is not None:
                try:
                    st = os.stat(p)
                    out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
                except OSError:
                    out.append((str(p), 0, 0, 0, 0))
        return tuple(out)

    def _reload_on_rotation(self) -> None:
        """A rotated TUF token, CA or client certificate reaches nginx without a restart: its config written
        again and reloaded (SIGHUP: new workers with the new settings, the old ones finish what they serve)."""
        files = self._tuf_files()
        nginx = self._nginx
        if files == self._tuf_files_seen or nginx is None or nginx.poll() is not None:
            return
        self._tuf_files_seen = files
        try:
            text = self._nginx_config()
        except (ValueError, CredentialError) as exc:
            log.warning("the TUF upstream's credentials changed but cannot be used (%s): nginx keeps the previous "
                        "ones", exc)
            return
        atomic_write_text(self.run_dir / "nginx.conf", text, mode=0o600)
        before = set(_group_members(nginx.pid, "worker process"))
        os.kill(nginx.pid, signal.SIGHUP)
        # Reloaded once a new worker runs and the old ones stopped taking requests (their title then says
        # "worker process is shutting down" until their open connections are done).
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            now = set(_group_members(nginx.pid, "worker process"))
            if now - before and not now & before - set(_group_members(nginx.pid, "shutting down")):
                log.info("the TUF upstream's credentials changed: nginx reloaded with them")
                return
            time.sleep(0.05)
        log.warning("the TUF upstream's credentials changed, but nginx did not reload within %gs (its error.log "
                    "says why)", START_TIMEOUT)

    def start(self) -> Gateway:
        self.prepare()
        _stop_pidfile(self.run_dir / "nginx.pid", str(self.run_dir / "nginx.conf"))
        _stop_pidfile(self.run_dir / "fcgiwrap.pid", self.cfg.fcgiwrap)
        try:
            self.mirror.refresh()  # serve something from the start when upstream is there
        except Exception as exc:  # noqa: BLE001 - the loop retries; devices fall back meanwhile
            log.warning("first mirror refresh failed: %s", exc)
        self._start_fcgiwrap()
        self._start_nginx()
        return self

    def _start_fcgiwrap(self) -> None:
        sock = self.run_dir / "fcgiwrap.sock"
        sock.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(sock))
            listener.listen(FCGI_BACKLOG)
            with open(self.run_dir / "fcgiwrap.log", "ab") as fh:
                self._fcgi = subprocess.Popen(
                    [self.cfg.fcgiwrap, "-c", str(self.cfg.fcgiwrap_children)], stdout=fh, stderr=fh,
                    stdin=listener.fileno(), preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl needs it
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.data)})
        finally:
            listener.close()
        atomic_write_text(self.run_dir / "fcgiwrap.pid", f"{self._fcgi.pid}\n", durable=False)

    def _start_nginx(self) -> None:
        conf = self.run_dir / "nginx.conf"
        with open(self.run_dir / "nginx.out", "ab") as fh:
            self._nginx = subprocess.Popen([self.cfg.nginx, "-e", str(self.run_dir / "error.log"), "-p",
                                            str(self.run_dir), "-c", str(conf)], stdout=fh, stderr=fh,
                                           stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
        host, port = self.cfg.listen.rsplit(":", 1)
        host = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host.strip("[]")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._nginx.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.run_dir / 'error.log').read_text(errors='replace')[-1000:]}")
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.cfg.listen} within {START_TIMEOUT:g}s")

    # -- running

    def tick(self) -> dict[str, Any]:
        """One round: the mirror refreshed (a fetch on change), then the status relayed."""
        out: dict[str, Any] = {"time": time.time()}
        self._reload_on_rotation()
        try:
            out["mirrorChanged"] = self.mirror.refresh()
        except Exception as exc:  # noqa: BLE001 - reported; next round retries
            out["mirrorError"] = str(exc)[:300]
        try:
            out["relay"] = self.relay.relay_once()
        except Exception as exc:  # noqa: BLE001
            out["relayError"] = str(exc)[:300]
        if self.tuf_probe is None:
            self.tuf_probe = TufProbe(self.cfg, self.run_dir, self.tunnel)
        tuf = self.tuf_probe.check()
        self.state = {**out, "mirror": {"polls": self.mirror.polls, "fetches": self.mirror.fetches,
                                        "lastRefresh": self.mirror.last_refresh, "lastError": self.mirror.last_error,
                                        "reason": self.mirror.last_reason, "heads": self.mirror.local_heads()},
                      "status": self.relay.status(), "tuf": tuf}
        atomic_write_text(self.run_dir / "state.json", json.dumps(self.state, sort_keys=True) + "\n", durable=False)
        return out

    def run(self) -> None:
        """Rounds every interval (or at once on :attr:`wake`, SIGHUP) until :attr:`stop_event` (SIGTERM/SIGINT);
        children watched and restarted."""
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            self.wake.clear()
            self.tick()
            self._watch_children()
            deadline = t0 + self.cfg.interval
            while not (self.stop_event.is_set() or self.wake.is_set()) and (left := deadline - time.monotonic()) > 0:
                self.wake.wait(min(left, 1.0))
        self.tick()  # what arrived since the last round goes upstream before the gateway stops

    def _watch_children(self) -> None:
        if self._fcgi is not None and self._fcgi.poll() is not None:
            log.warning("fcgiwrap exited with %s; restarting it", self._fcgi.returncode)
            _stop_group(self._fcgi, self.cfg.fcgiwrap)  # its workers, listening on the socket the new one replaces
            self._start_fcgiwrap()
        if self._nginx is not None and self._nginx.poll() is not None:
            log.warning("nginx exited with %s; restarting it", self._nginx.returncode)
            self._start_nginx()

    def stop(self) -> None:
        self.stop_event.set()
        for proc, program in ((self._nginx, self.cfg.nginx), (self._fcgi, self.cfg.fcgiwrap)):
            if proc is not None:
                _stop_group(proc, program)  # fcgiwrap's workers too, also when their parent is gone already
        if self.tunnel is not None:
            self.tunnel.close()
        if self.tuf_probe is not None:
            self.tuf_probe.close()
        self.mirror.close()
