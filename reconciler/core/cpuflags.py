"""The CPU flags a device reports in ``hw.cpuFlags``: the contract between what devices say and what
``requires.cpuFlags`` may ask for.

Devices report only these (``/proc/cpuinfo`` lists ~100 more), so a variant requiring any other flag — a typo
such as ``avx512vnni`` — would never match a device; validation warns about it instead of letting the variant
silently lose. docs/serving.md lists them.
"""

from __future__ import annotations

# Flags worth reporting for variant choice (incl. what reduced precision needs: bf16/fp16/int8 instructions).
REPORTED_CPU_FLAGS: tuple[str, ...] = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "neon",
    "asimd",
    "asimddp",
    "fphp",
    "asimdhp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)
