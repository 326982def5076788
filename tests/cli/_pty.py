"""Run ``modelfleet`` with stdout and/or stderr on a pseudo-terminal, as in an operator's shell."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str  # what went to stdout (the terminal's bytes when stdout was the pty)
    err: str


def modelfleet(*args: str, cwd: Path, tty_out: bool, tty_err: bool, **env: str) -> Run:
    """Exit code, stdout and stderr; a stream on the pty is read from the pty's master side."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    environ.update(PYTHONPATH=str(ROOT), TERM="xterm-256color", **env)
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    p = subprocess.Popen([sys.executable, "-m", "reconciler.cli", *args], cwd=cwd, env=environ,
                         stdin=subprocess.DEVNULL, stdout=slave if tty_out else subprocess.PIPE,
                         stderr=slave if tty_err else subprocess.PIPE)
    os.close(slave)
    out, err = p.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    term = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return Run(p.returncode, term if tty_out else out.decode(), term if tty_err else err.decode())
