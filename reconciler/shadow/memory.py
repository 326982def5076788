"""Is there room for a second model beside the serving one? Pure: the agent reads the numbers, this decides.

The candidate's memory is estimated before it is loaded, from its files' size: a runtime holds the weights once
more in its own layout plus buffers for activations and (OpenVINO) compiled kernels, so the estimate is
``factor × model bytes + overhead`` per runtime (measured for the generated test models and MobileNet-class
classifiers with ``bench/bench_footprint.py``; deliberately on the high side). The room is what the agent may
still take: the smaller of the system's ``MemAvailable`` and the agent's cgroup limit minus its usage
(``MemoryMax=`` of the systemd unit, a container's limit), minus ``shadow.reserveMB`` the agent config keeps
free for everything else; ``shadow.maxMemoryMB`` caps a candidate whatever the room. The candidate runs in a
process of its own (:mod:`reconciler.agent.shadowproc`), so the estimate adds that process's interpreter and
runtime (:data:`PROCESS_MB`) and the shared ring the samples reach it through (:data:`RING_MB`, pages that
count towards both processes' cgroup once a busy endpoint has filled it). After the load, that process's measured RSS is what the status reports
(``memoryMB``) and is checked against the same bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.shadow.spec import QUEUE_BYTES

#: (factor, overhead MiB) per runtime.
ESTIMATE = {"onnxruntime": (2.0, 8.0), "openvino": (3.0, 48.0)}
DEFAULT_ESTIMATE = (3.0, 48.0)
#: The candidate's own process (a Python interpreter with numpy and the runtime), whatever the model: its whole
#: RSS measured 57 MiB with ONNX Runtime and a tiny model, 105 MiB with OpenVINO and the small CNN (with the
#: per-runtime overhead above, the estimate stays on the high side).
PROCESS_MB = {"onnxruntime": 64.0, "openvino": 88.0}
DEFAULT_PROCESS_MB = 88.0
DEFAULT_RESERVE_MB = 64.0
#: The shared-memory ring between the agent and the candidate's process, whole.
RING_MB = QUEUE_BYTES / (1 << 20)


def estimate_mb(model_bytes: int, runtime: str) -> float:
    """The memory a loaded candidate of ``model_bytes`` is expected to take in its process, in MiB."""
    factor, overhead = ESTIMATE.get(runtime, DEFAULT_ESTIMATE)
    return (factor * model_bytes / (1 << 20) + overhead + PROCESS_MB.get(runtime, DEFAULT_PROCESS_MB)
            + RING_MB)


@dataclass(frozen=True)
class Room:
    available_mb: float | None  # the system's MemAvailable
    cgroup_limit_mb: float | None = None  # memory.max of the agent's cgroup (None: no limit)
    cgroup_used_mb: float | None = None  # memory.current
    reserve_mb: float = DEFAULT_RESERVE_MB
    max_memory_mb: float | None = None  # shadow.maxMemoryMB

    def free_mb(self) -> float | None:
        """What a candidate may take (None: unknown, no bound)."""
        bounds = []
        if self.available_mb is not None:
            bounds.append(self.available_mb - self.reserve_mb)
        if self.cgroup_limit_mb is not None and self.cgroup_used_mb is not None:
            bounds.append(self.cgroup_limit_mb - self.cgroup_used_mb - self.reserve_mb)
        if self.max_memory_mb is not None:
            bounds.append(self.max_memory_mb)
        return min(bounds) if bounds else None


def refusal(need_mb: float, room: Room, *, measured: bool = False) -> str | None:
    """Why a candidate needing ``need_mb`` does not fit (None: it fits)."""
    free = room.free_mb()
    if free is None or need_mb <= free:
        return None
    what = "takes" if measured else "needs an estimated"
    parts = []
    if room.max_memory_mb is not None:
        parts.append(f"shadow.maxMemoryMB {room.max_memory_mb:g}")
    if room.available_mb is not None:
        parts.append(f"{room.available_mb:.0f} MB available")
    if room.cgroup_limit_mb is not None and room.cgroup_used_mb is not None:
        parts.append(f"cgroup {room.cgroup_used_mb:.0f} of {room.cgroup_limit_mb:.0f} MB used")
    parts.append(f"reserve {room.reserve_mb:g} MB")
    return f"the candidate {what} {need_mb:.1f} MB; room for it: {max(free, 0.0):.1f} MB ({', '.join(parts)})"
