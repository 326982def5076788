"""What the control plane and its worker processes share: the generation board and the settings message.

The **board** is one small file mapped into every process (``mmap``): word 0 is the generation the workers
serve, word 1 is 1 while every worker serves that generation's desired set (``/v2/health/ready``). Only the
control plane writes it; a worker reads word 0 on every request (an aligned 8-byte load, atomic on every
CPU we run on), so one write switches all workers at once. The control channel (a ``socketpair`` per worker,
pickled messages between our own processes) carries the bulky parts: model specs, replies, samples.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.serving.limits import ServerLimits

_BOARD = struct.Struct("<QQ")

#: Events a worker forwards to the control plane before it drops (and counts) the next ones.
SAMPLE_QUEUE_MAX = 4096
SAMPLE_QUEUE_MAX_BYTES = 32 * 1024 * 1024


class Board:
    """The shared generation word and ready flag (see the module docstring)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, mmap.PAGESIZE)
        else:
            fd = os.open(path, os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if create else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, mmap.PAGESIZE, access=access)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("Q")

    @property
    def generation(self) -> int:
        return int(self._words[0])

    @generation.setter
    def generation(self, value: int) -> None:
        self._words[0] = value

    @property
    def ready(self) -> bool:
        return bool(self._words[1])

    @ready.setter
    def ready(self, value: bool) -> None:
        self._words[1] = int(value)

    def words(self) -> memoryview:
        """The raw words, for the per-request read (``words[0]``) without a property call."""
        return self._words

    def close(self) -> None:
        self._words.release()
        self._map.close()


@dataclass
class WorkerSettings:
    """Everything a worker process needs to serve, sent as the first control message (never in argv: the
    bearer token is here)."""

    index: int
    board: Path
    host: str
    port: int | None
    unix_socket: str | None
    auth_token: str | None
    tls_cert: str | None
    tls_key: str | None
    limits: ServerLimits
    cache_dir: Path | None
    generation: int
    sample_queue_max: int = SAMPLE_QUEUE_MAX
    #: (spec, observed) of each endpoint's active version, then of its kept previous version (rollbacks stay
    #: instant after a restart).
    desired: list[tuple[Any, bool]] = field(default_factory=list)
    previous: list[tuple[Any, bool]] = field(default_factory=list)
    #: The gRPC front's port (shared like the HTTP one), or None: no gRPC front.
    grpc_port: int | None = None
    #: The CPU this worker keeps to, or None (the scheduler places it).
    cpu: int | None = None


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB (empty when it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5].lower()] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return {}
    return out
