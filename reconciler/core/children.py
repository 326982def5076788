"""The Python child processes a device starts (serving workers, the shadow candidate, the capture sealer, fact
detection): the environment they run in, and how one ended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

# The directory holding the ``reconciler`` package: first on the child's import path, so that the child runs the
# same code as its parent (a checkout, or site-packages).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def python_child_env(**extra: str) -> dict[str, str]:
    """This process's environment with ``reconciler``'s directory first on ``PYTHONPATH``, plus ``extra``."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def exit_description(proc: subprocess.Popen[bytes], wait: float = 5.0) -> str:
    """How a child ended: ``killed by SIGSEGV``, ``exit code 1``, or ``still running`` after ``wait`` seconds
    (its socket closes a moment before it is reaped)."""
    try:
        code = proc.wait(wait)
    except subprocess.TimeoutExpired:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
