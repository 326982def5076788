"""The inference server's resource limits and timeouts — one frozen value, pure, no I/O.

Every buffer, queue and count a client can grow has a limit here, and every way a client can hold a connection
open without making progress has a timeout. ``docs/security.md`` lists each one with what it protects;
``modelfleet serve --limit NAME=VALUE`` and the agent config's ``spec.serving.limits`` set them by the same
camelCase names (:data:`OPTION_NAMES`).
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core.units import parse_duration

MIB = 1024 * 1024

#: File descriptors kept free for everything else the process opens (model files, Git, TUF, logs).
FD_RESERVE = 128


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Limits of one :class:`~reconciler.serving.http.server.InferenceServer` (defaults are the documented ones)."""

    max_connections: int = 1024  # open connections; also capped at RLIMIT_NOFILE - FD_RESERVE
    max_pipelined: int = 32  # requests parsed but not yet answered on one connection
    max_url_bytes: int = 8 * 1024  # request target → 414
    max_header_bytes: int = 64 * 1024  # all header names + values of one request → 431
    max_headers: int = 100  # header lines of one request → 431
    max_body_bytes: int = 64 * MIB  # any request body (binary tensors) → 413
    max_json_bytes: int = 16 * MIB  # the JSON part of an /infer request → 413
    max_json_elements: int = 4_194_304  # tensor elements of one JSON input → 400
    max_inflight_bytes: int = 256 * MIB  # request bodies received, queued or processed at once → 503
    header_timeout: float = 10.0  # from a request's first byte (or the connection) to its last header → 408
    body_timeout: float = 30.0  # longest gap without progress while receiving a body or sending a response
    idle_timeout: float = 15.0  # keep-alive connection without a request → closed

    @classmethod
    def unlimited(cls) -> ServerLimits:
        """No limits and no timeouts: only for measuring what the limits cost (``bench/bench_serving.py``)."""
        big = 1 << 62
        return cls(big, big, big, big, big, big, big, big, big, 0.0, 0.0, 0.0)

    def with_options(self, options: Mapping[str, Any]) -> ServerLimits:
        """A copy with ``{camelCaseName: value}`` applied; durations as ``"500ms"``/``"10s"`` or seconds.

        Raises ``ValueError`` naming the option for an unknown name or a bad value."""
        changes: dict[str, Any] = {}
        for name, value in options.items():
            field = OPTION_NAMES.get(name)
            if field is None:
                raise ValueError(f"unknown server limit {name!r} (one of: {', '.join(OPTION_NAMES)})")
            try:
                if field.endswith("_timeout"):
                    seconds = _seconds(value)
                    if seconds <= 0:
                        raise ValueError("must be positive")
                    changes[field] = seconds
                else:
                    number = int(value)
                    if isinstance(value, bool) or number < 1:
                        raise ValueError("must be a positive integer")
                    changes[field] = number
            except (TypeError, ValueError) as exc:
                raise ValueError(f"server limit {name}={value!r}: {exc}") from None
        return dataclasses.replace(self, **changes)

    def connection_cap(self, nofile_soft: int | None = -1) -> int:
        """Connections actually allowed: the configured cap, kept ``FD_RESERVE`` below the open-file limit
        (``nofile_soft``: that limit; by default this process's soft ``RLIMIT_NOFILE``; None: unlimited)."""
        if nofile_soft == -1:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            nofile_soft = None if soft == resource.RLIM_INFINITY else soft
        if nofile_soft is None or nofile_soft <= 0:
            return self.max_connections
        return max(8, min(self.max_connections, nofile_soft - FD_RESERVE))


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_duration(value)
    return float(value)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


#: Option name (agent config / ``--limit``) → field name.
OPTION_NAMES: dict[str, str] = {_camel(f.name): f.name for f in dataclasses.fields(ServerLimits)}
