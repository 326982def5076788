"""Hardware and runtime facts of this device, reported in status and used to pick a model variant.

``detect_facts()`` returns exactly the keys of ``$defs/facts`` in ``schemas/common.schema.json``. It reads
``/proc/cpuinfo`` and ``/proc/meminfo`` (Linux) and asks the installed runtimes for their versions, execution
providers and devices. The result is cached: OpenVINO's device query loads plugins and is slow.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

from reconciler.core.cpuflags import REPORTED_CPU_FLAGS
from reconciler.serving.runtimes.telemetry import import_onnxruntime, import_openvino

# docs/serving.md lists them for `requires.cpuFlags`; validation warns about any other flag.
INTERESTING_FLAGS = REPORTED_CPU_FLAGS


def parse_cpu_flags(cpuinfo: str, arch: str) -> list[str]:
    """CPU flags from ``/proc/cpuinfo`` text (x86 ``flags``, ARM ``Features``). Pure.

    On aarch64 ``asimd`` is Advanced SIMD, which is what ``neon`` means there, so ``neon`` is added.
    """
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if arch in ("aarch64", "arm64") and "asimd" in flags:
        flags.add("neon")
    return sorted(f for f in flags if f in INTERESTING_FLAGS)


def parse_meminfo_mb(meminfo: str) -> int | None:
    """``MemTotal`` from ``/proc/meminfo`` text in MiB. Pure."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) // 1024
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _memory_mb() -> int:
    mb = parse_meminfo_mb(_read("/proc/meminfo"))
    if mb is not None:
        return mb
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return 0


def _onnxruntime() -> tuple[str | None, list[str]]:
    try:
        ort = import_onnxruntime()
    except ImportError:
        return None, []
    return ort.__version__, [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]


def _openvino() -> tuple[str | None, list[str]]:
    try:
        ov = import_openvino()

        from reconciler.serving.runtimes.openvino import available_devices
    except ImportError:
        return None, []
    version = ov.get_version().split("-")[0]
    try:
        devices = list(available_devices())
    except Exception:  # a broken plugin must not break status reporting
        devices = []
    return version, devices


@functools.cache
def _detect() -> tuple[tuple[str, Any], ...]:
    arch = platform.machine()
    ort_version, providers = _onnxruntime()
    ov_version, devices = _openvino()
    accelerators = sorted(
        {d.split(".")[0] for d in devices if not d.startswith("CPU")}
        | {p for p in providers if p != "CPUExecutionProvider"}
    )
    facts: dict[str, Any] = {
        "hw.arch": arch,
        "hw.cpuFlags": parse_cpu_flags(_read("/proc/cpuinfo"), arch),
        "hw.memoryMB": _memory_mb(),
        "hw.accelerators": accelerators,
        "runtime.onnxruntime.providers": providers,
        "runtime.openvino.devices": devices,
    }
    if ort_version:
        facts["runtime.onnxruntime"] = ort_version
    if ov_version:
        facts["runtime.openvino"] = ov_version
    return tuple(facts.items())


def detect_facts() -> dict[str, Any]:
    """Facts of this device (cached after the first call; a fresh dict each time)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in _detect()}
