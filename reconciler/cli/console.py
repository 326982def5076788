"""What the terminal gets: colour only on a TTY and never with ``NO_COLOR``; progress bars only on a TTY, on stderr.

Machine-read output (``--format json|yaml``, pipes, files, CI logs) never carries an escape sequence or a
progress line: colour is decided per stream (stdout may be a pipe while stderr is a terminal), and progress
writes only to stderr, only when stderr is a terminal, and erases itself before anything else is printed.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TextIO

import click


def _isatty(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def color_enabled(err: bool = False) -> bool:
    """Colour for stdout (or stderr): the stream is a terminal, ``NO_COLOR`` is unset or empty (no-color.org)
    and ``TERM`` is not ``dumb``."""
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    return _isatty(sys.stderr if err else sys.stdout)


def paint(text: str, fg: str, *, err: bool = False, bold: bool = False) -> str:
    """``text`` in colour ``fg`` when the stream it goes to may carry colour, else unchanged."""
    return click.style(text, fg=fg, bold=bold or None) if color_enabled(err) else text


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` that keeps the escapes :func:`paint` decided on (click would strip them on a non-TTY anyway)."""
    Progress.clear_active()
    click.echo(text, err=err, nl=nl, color=color_enabled(err))


def level_color(text: str) -> str:
    """The colour of a status word an operator scans for (error/warning, True/False, a rollout phase)."""
    word = text.strip().split(" ", 1)[0].rstrip(":").lower()
    if word in ("error", "invalid", "false", "failed", "stale", "aborted", "refusing"):
        return "red"
    if word in ("warning", "paused", "unknown", "progressing", "waiting"):
        return "yellow"
    if word in ("valid", "true", "ready", "complete", "ok", "converged"):
        return "green"
    return ""


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal (a no-op otherwise).

    ``total`` is in ``unit`` (``B`` shows sizes in MiB) or None for a counter without a known end. A long label
    loses its end, or its start with ``trim_left`` (paths).
    Redraws at most every 0.1 s; :meth:`close` erases the line.
    """

    _active: Progress | None = None

    def __init__(self, label: str, total: float | None, unit: str = "", stream: TextIO | None = None, *,
                 trim_left: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.trim_left = trim_left  # a path: its end (the file name) is what tells files apart
        self.enabled = _isatty(self.stream)
        self.label, self.total, self.unit = label, total, unit
        self.done = 0.0
        self._drawn = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def clear_active(cls) -> None:
        if cls._active is not None:
            cls._active._erase()

    def update(self, done: float, label: str | None = None, total: float | None = None) -> None:
        self.done = done
        if label is not None:
            self.label = label
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1 and not (self.total and done >= self.total):
            return
        self._drawn = now
        Progress._active = self
        self.stream.write("\r\x1b[K" + self._line(now))
        self.stream.flush()

    def advance(self, step: float = 1, label: str | None = None) -> None:
        self.update(self.done + step, label)

    def _amount(self, value: float) -> str:
        if self.unit == "B":
            return f"{value / (1 << 20):.1f} MiB"
        return f"{value:g}{self.unit}"

    def _line(self, now: float) -> str:
        elapsed = f"{now - self._start:.0f}s"
        label = self.label
        if len(label) > 40:
            label = "…" + label[-39:] if self.trim_left else label[:39] + "…"
        if not self.total:
            return f"{label}  {self._amount(self.done)}  {elapsed}"
        frac = min(max(self.done / self.total, 0.0), 1.0)
        bar = "#" * int(frac * 25)
        return (f"{label:<40} [{bar:<25}] {frac:4.0%}  {self._amount(self.done)}/{self._amount(self.total)}  "
                f"{elapsed}")

    def _erase(self) -> None:
        if self.enabled and Progress._active is self:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            Progress._active = None

    def close(self) -> None:
        self._erase()
