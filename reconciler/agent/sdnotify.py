"""sd_notify without libsystemd: datagrams to ``$NOTIFY_SOCKET``.

Workflow: the agent calls :meth:`Notifier.ready` once the last good models serve, :meth:`Notifier.watchdog`
from every loop iteration (at least every ``watchdog_interval()`` seconds), :meth:`Notifier.status` with a
one-line state, and :meth:`Notifier.stopping` on shutdown. Outside systemd (no ``NOTIFY_SOCKET``) every call is
a cheap no-op, so the agent runs the same under a terminal, a container or systemd ``Type=notify``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def _address(raw: str) -> str | bytes:
    # systemd uses abstract sockets ("@name") on some setups: a leading NUL byte on the wire.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification (``"READY=1"``, ``"STATUS=…"``); False when not under systemd or on error."""
    env = os.environ if env is None else env
    raw = env.get("NOTIFY_SOCKET")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(raw))
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None if the watchdog is off for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and wpid.isdigit() and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class Notifier:
    """The agent's handle on the service manager."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self.enabled = bool(self._env.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def send(self, *fields: str) -> bool:
        if not self.enabled:
            return False
        return notify("\n".join(fields), self._env)

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        line = _one_line(text)
        if line == self._last_status:
            return True
        self._last_status = line
        return self.send(f"STATUS={line}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        return watchdog_interval(self._env)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
