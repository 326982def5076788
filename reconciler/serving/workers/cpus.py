"""Which CPUs the serving workers keep to, and how many runtime threads each gets (pure, but for reading the
process's affinity mask).

With one worker per CPU each worker is pinned (``sched_setaffinity``) so the scheduler does not move workers,
their caches and their connections' wake-ups between cores; the mask a cgroup cpuset or ``taskset`` narrows is
what counts, never the machine's CPU count.
"""

from __future__ import annotations

import os


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on: its affinity mask (which a cgroup cpuset or ``taskset`` narrows), not
    the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def worker_cpus(workers: int, allowed: list[int], pin: bool | None) -> list[int] | None:
    """The CPUs the workers keep to (worker ``i`` to ``cpus[i % len(cpus)]``), or None: not pinned. Pure.

    ``pin`` None (auto): pinned when there is one worker per allowed CPU and more than one worker — on a single
    CPU, or with fewer or more workers than CPUs, the scheduler places them. ``pin`` True pins anyway, only ever
    to CPUs in ``allowed``."""
    if not allowed:
        return None
    if pin is None:
        pin = workers > 1 and workers == len(allowed)
    return list(allowed) if pin else None


def session_threads(workers: int, allowed: int, cpus: list[int] | None) -> int:
    """Intra-op threads of each worker's model sessions when the spec names none: the allowed CPUs shared out
    between the workers, one for a worker kept to one CPU (more threads there would only take turns). Pure."""
    if cpus is not None:
        return 1
    return max(1, allowed // workers)
