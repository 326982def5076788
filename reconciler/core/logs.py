"""Structured logging to stdout for journald: ``text`` (human) or ``json`` (one object per line).

Workflow: the agent calls :func:`setup_logging` once with the config's format and level, then logs with
``log.info("applied", extra=fields(endpoint="detector", version="1.1.0"))``. Text lines read
``INFO agent: applied endpoint=detector version=1.1.0``; JSON lines carry ``time``, ``level``, ``logger``,
``msg`` and the fields. No timestamp in text mode: journald adds its own. Every line passes through
:func:`reconciler.core.redact.redact` (URL userinfo, ``Authorization`` values, token-like query values), a last
line of defence behind the redaction at each source.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from reconciler.core.redact import redact, redact_tree

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIELDS = "mf_fields"


def fields(**kv: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields."""
    return {_FIELDS: kv}


def _fmt_value(v: Any) -> str:
    s = str(v)
    if not s or any(c.isspace() for c in s) or '"' in s or "=" in s:
        return json.dumps(s)
    return s


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kv: dict[str, Any] = getattr(record, _FIELDS, {}) or {}
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        parts += [f"{k}={_fmt_value(v)}" for k, v in kv.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in (getattr(record, _FIELDS, {}) or {}).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(redact_tree(out), default=lambda o: redact(str(o)), separators=(",", ":"))


def setup_logging(fmt: str = "text", level: str = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Route the ``reconciler`` loggers (and warnings from libraries) to ``stream`` (stdout by default)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_modelfleet", False):
            root.removeHandler(h)
    handler._modelfleet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("reconciler").setLevel(LEVELS.get(level, logging.INFO))
    return handler
