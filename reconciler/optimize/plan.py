"""Which variants to build, and which hardware each one needs. Pure: no I/O, no runtime.

A :class:`VariantKind` is one way of turning the fp32 ONNX model into a servable file (graph-optimized ONNX,
ONNX Runtime int8, OpenVINO IR fp32/fp16/int8). Each kind lists the hardware it is *meant* for as
:class:`HardwareNeed` alternatives; in the Model manifest each alternative becomes one variant entry (the
schema's ``requires.cpuFlags`` means "all of these", so "VNNI-512 or AVX-VNNI or ARM dot product" takes three
entries pointing at the same file).

The fleet's hardware classes (:func:`~reconciler.fleet.hwclasses.hardware_classes`, from the inventory) decide which kinds are
worth building (:func:`plan_kinds`); :func:`superseded` drops a kept kind that no device would ever pick
because an earlier kept kind of the same runtime needs no more hardware; :func:`class_picks` tells which
variant each class would run, with the device-side choice function itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.fleet.desired import DEFAULT_RUNTIMES, choose_variant, requires_met
from reconciler.fleet.hwclasses import HardwareClass

# int8 matrix kernels pay off only with 8-bit dot-product instructions: VNNI (AVX-512 or AVX) on x86-64, the
# Armv8.2 dot product (``asimddp``) on aarch64. Without them ONNX Runtime's u8s8 kernels can also saturate,
# so the int8 variants are not offered to such CPUs at all; they get an fp32 variant.
X86_VNNI = (
    ("x86-vnni", {"arch": ["x86_64"], "cpuFlags": ["avx512_vnni"]}),
    ("x86-avxvnni", {"arch": ["x86_64"], "cpuFlags": ["avx_vnni"]}),
)
ARM_DOT = (("arm-dot", {"arch": ["aarch64"], "cpuFlags": ["asimddp"]}),)


@dataclass(frozen=True)
class HardwareNeed:
    """One hardware alternative of a kind: manifest variant name suffix and its ``requires``."""

    suffix: str
    requires: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantKind:
    name: str
    runtime: str
    precision: str
    library: str
    needs: tuple[HardwareNeed, ...]
    files: tuple[str, ...]  # file suffixes this kind writes (".onnx", or ".xml" + ".bin")

    def variant_name(self, need: HardwareNeed) -> str:
        return f"{self.name}-{need.suffix}" if need.suffix else self.name


def _needs(pairs: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[HardwareNeed, ...]:
    return tuple(HardwareNeed(s, r) for s, r in pairs)


ANYWHERE = (HardwareNeed(""),)
# Order is preference order inside one runtime: devices take the first variant their hardware satisfies.
KINDS: tuple[VariantKind, ...] = (
    VariantKind("ort-int8-static", "onnxruntime", "int8", "onnxruntime.quantization.quantize_static (QDQ, calibrated)",
                _needs(X86_VNNI + ARM_DOT), (".onnx",)),
    VariantKind("ort-int8-dynamic", "onnxruntime", "int8", "onnxruntime.quantization.quantize_dynamic",
                _needs(X86_VNNI + ARM_DOT), (".onnx",)),
    VariantKind("ort-fp32", "onnxruntime", "fp32", "onnxruntime graph optimization (offline, extended level)",
                ANYWHERE, (".onnx",)),
    VariantKind("ov-int8", "openvino", "int8", "nncf.quantize on the OpenVINO model", _needs(X86_VNNI),
                (".xml", ".bin")),
    VariantKind("ov-fp16", "openvino", "fp16", "openvino.save_model(compress_to_fp16=True)", ANYWHERE,
                (".xml", ".bin")),
    VariantKind("ov-fp32", "openvino", "fp32", "openvino.convert_model + save_model", ANYWHERE, (".xml", ".bin")),
)
KIND_NAMES = tuple(k.name for k in KINDS)
_BY_NAME = {k.name: k for k in KINDS}


def kind(name: str) -> VariantKind:
    return _BY_NAME[name]


# Used when no fleet inventory is given: the classes the project's docs talk about.
DEFAULT_CLASSES = (
    HardwareClass("x86-avx2", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx", "avx2", "fma", "sse4_2"]}),
    HardwareClass("x86-vnni", {"hw.arch": "x86_64", "hw.cpuFlags": ["avx2", "avx512f", "avx512_vnni", "fma"]}),
    HardwareClass("arm64-dot", {"hw.arch": "aarch64", "hw.cpuFlags": ["asimd", "asimddp", "neon"]}),
    HardwareClass("arm64", {"hw.arch": "aarch64", "hw.cpuFlags": ["asimd", "neon"]}),
)


def _has_runtime(facts: Mapping[str, Any], runtime: str) -> bool:
    known = any(k.startswith("runtime.") for k in facts)
    return not known or f"runtime.{runtime}" in facts


def users(k: VariantKind, classes: Sequence[HardwareClass]) -> list[str]:
    """Names of the classes that have ``k``'s runtime and satisfy one of its hardware needs."""
    return [c.name for c in classes
            if _has_runtime(c.facts, k.runtime) and any(requires_met(n.requires, k.runtime, c.facts)[0] for n in k.needs)]


@dataclass(frozen=True)
class PlannedKind:
    kind: VariantKind
    build: bool
    reason: str


def plan_kinds(classes: Sequence[HardwareClass], requested: Sequence[str] | None = None) -> list[PlannedKind]:
    """Which kinds to build: the ``requested`` ones, else every kind some class would use.

    ``ort-fp32`` is always built: it is the variant every device can fall back to.
    """
    out = []
    for k in KINDS:
        names = users(k, classes)
        if requested is not None:
            build = k.name in requested
            reason = "requested" if build else "not requested (--variants)"
        elif k.name == "ort-fp32":
            build, reason = True, "fallback every device with ONNX Runtime can run"
        elif names:
            build, reason = True, "for " + ", ".join(names)
        else:
            build = False
            need = " or ".join(_describe(n.requires) for n in k.needs)
            reason = f"no hardware class has {k.runtime}" + (f" with {need}" if need else "")
        out.append(PlannedKind(k, build, reason))
    return out


def _describe(requires: Mapping[str, Any]) -> str:
    parts = [*requires.get("arch", []), *requires.get("cpuFlags", [])]
    return "+".join(parts)


def superseded(kept: Sequence[str]) -> dict[str, str]:
    """Kinds in ``kept`` that no device would pick, each mapped to the kind that shadows it.

    Within one runtime a device takes the first variant it can run; a later kind is unreachable when every one
    of its hardware needs is implied by a need of an earlier kept kind (same or fewer requirements).
    """
    out: dict[str, str] = {}
    earlier: list[VariantKind] = []
    for k in KINDS:
        if k.name not in kept:
            continue
        for e in earlier:
            if e.runtime == k.runtime and all(any(_implies(n, m) for m in e.needs) for n in k.needs):
                out[k.name] = e.name
                break
        else:
            earlier.append(k)
    return out


def _implies(need: HardwareNeed, earlier: HardwareNeed) -> bool:
    """Every device satisfying ``need`` also satisfies ``earlier`` (``earlier`` asks for no more)."""
    a, b = need.requires, earlier.requires
    if "arch" in b and ("arch" not in a or not set(a["arch"]) <= set(b["arch"])):
        return False
    return set(b.get("cpuFlags", [])) <= set(a.get("cpuFlags", [])) and set(b) <= {"arch", "cpuFlags"}


def manifest_variants(kept: Sequence[str], targets: Mapping[str, list[str]], probes: Mapping[str, str],
                      *, with_precision: bool) -> list[dict[str, Any]]:
    """Variant entries for the kept kinds, in preference order (plain dicts in the manifest's key order)."""
    out = []
    for k in KINDS:
        if k.name not in kept:
            continue
        for n in k.needs:
            v: dict[str, Any] = {"name": k.variant_name(n), "runtime": k.runtime}
            if with_precision:
                v["precision"] = k.precision
            v["targets"] = list(targets[k.name])
            if n.requires:
                v["requires"] = {key: list(val) if isinstance(val, list) else val for key, val in n.requires.items()}
            if k.name in probes:
                v["probe"] = {"target": probes[k.name]}
            out.append(v)
    return out


def class_picks(version: Mapping[str, Any], classes: Sequence[HardwareClass],
                preferences: Sequence[str] = DEFAULT_RUNTIMES) -> dict[str, str]:
    """For each class, the variant a device of that class would run (the device's own choice function)."""
    out = {}
    for c in classes:
        variant, why = choose_variant(version, list(preferences), c.facts)
        out[c.name] = variant["name"] if variant else f"none ({why})"
    return out
