"""The quantizers' options a publisher can set: an options file, each key overridable by a CLI flag. Pure.

File (YAML or JSON, ``--quantize-options FILE``); every key is optional:

.. code-block:: yaml

    onnxruntime:                 # ort-int8-static and ort-int8-dynamic
      preprocess: auto           # auto | full | no-symbolic | off
      perChannel: true           # static only: one scale per output channel of a weight
      calibrationMethod: minmax  # static only: minmax | entropy | percentile | distribution
      opTypes: [Conv, MatMul]    # quantize only these operator types (default: all the quantizer supports)
      excludeNodes: [head/fc]    # leave these nodes in fp32
    nncf:                        # ov-int8
      preset: performance        # performance | mixed
      subsetSize: 300            # calibration samples NNCF uses (default: all of the calibration part)
      ignoredScope: {names: [], patterns: [], types: []}
      accuracyControl: false     # nncf.quantize_with_accuracy_control on the labelled calibration part

``preprocess``: ``full`` is ``quant_pre_process`` with symbolic shape inference, ``no-symbolic`` without it,
``off`` quantizes the model as given; ``auto`` tries them in that order and keeps the first whose quantized
model loads and runs in ONNX Runtime (real models fail each of the first two in different ways).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from reconciler.core.errors import UserError

PREPROCESS = ("auto", "full", "no-symbolic", "off")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile",
                       "distribution": "Distribution"}
PRESETS = ("performance", "mixed")
SCOPE_KINDS = ("names", "patterns", "types")


@dataclass(frozen=True)
class QuantOptions:
    preprocess: str = "auto"
    per_channel: bool = True
    calibration_method: str = "minmax"
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    preset: str | None = None  # None: NNCF's own default (performance, mixed for transformers)
    subset_size: int | None = None
    ignored_names: tuple[str, ...] = ()
    ignored_patterns: tuple[str, ...] = ()
    ignored_types: tuple[str, ...] = ()
    accuracy_control: bool = False

    def merged(self, **overrides: Any) -> QuantOptions:
        """These options with every override that is not None (the CLI flags over the file)."""
        given = {k: v for k, v in overrides.items() if v is not None and v != ()}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        return replace(self, **given)

    def ignored_scope(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in (("names", self.ignored_names), ("patterns", self.ignored_patterns),
                                        ("types", self.ignored_types)) if v}

    def summary(self) -> dict[str, Any]:
        """The options that differ from the defaults (what the report says was asked for)."""
        default = QuantOptions()
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


_ORT_KEYS = {"preprocess": "preprocess", "perChannel": "per_channel", "calibrationMethod": "calibration_method",
             "opTypes": "op_types", "excludeNodes": "exclude_nodes"}
_NNCF_KEYS = {"preset": "preset", "subsetSize": "subset_size", "ignoredScope": None,
              "accuracyControl": "accuracy_control"}


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: expected a list of names")
    return tuple(value)


def _choice(where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where}: expected true or false")
    return value


def _section(doc: Mapping[str, Any], key: str, allowed: Mapping[str, str | None], where: str) -> dict[str, Any]:
    sec = doc.get(key) or {}
    if not isinstance(sec, Mapping):
        raise UserError(f"{where}: {key}: expected a mapping")
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise UserError(f"{where}: {key}.{unknown[0]}: unknown option (one of {', '.join(allowed)})")
    return dict(sec)


def from_document(doc: Any, where: str) -> QuantOptions:
    """Options from a parsed options file (raises :class:`UserError` naming the key)."""
    if doc is None:
        return QuantOptions()
    if not isinstance(doc, Mapping):
        raise UserError(f"{where}: expected a mapping with onnxruntime: and/or nncf:")
    unknown = sorted(set(doc) - {"onnxruntime", "nncf"})
    if unknown:
        raise UserError(f"{where}: {unknown[0]}: unknown section (onnxruntime or nncf)")
    ort, nncf = _section(doc, "onnxruntime", _ORT_KEYS, where), _section(doc, "nncf", _NNCF_KEYS, where)
    out: dict[str, Any] = {}
    w = f"{where}: onnxruntime"
    if "preprocess" in ort:
        out["preprocess"] = _choice(f"{w}.preprocess", ort["preprocess"], PREPROCESS)
    if "perChannel" in ort:
        out["per_channel"] = _bool(f"{w}.perChannel", ort["perChannel"])
    if "calibrationMethod" in ort:
        out["calibration_method"] = _choice(f"{w}.calibrationMethod", ort["calibrationMethod"],
                                            list(CALIBRATION_METHODS))
    for key in ("opTypes", "excludeNodes"):
        if key in ort:
            out[_ORT_KEYS[key]] = _strings(f"{w}.{key}", ort[key])
    w = f"{where}: nncf"
    if "preset" in nncf:
        out["preset"] = _choice(f"{w}.preset", nncf["preset"], PRESETS)
    if "subsetSize" in nncf:
        size = nncf["subsetSize"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UserError(f"{w}.subsetSize: expected a whole number >= 1")
        out["subset_size"] = size
    if "accuracyControl" in nncf:
        out["accuracy_control"] = _bool(f"{w}.accuracyControl", nncf["accuracyControl"])
    if "ignoredScope" in nncf:
        scope = nncf["ignoredScope"]
        if not isinstance(scope, Mapping) or set(scope) - set(SCOPE_KINDS):
            raise UserError(f"{w}.ignoredScope: expected a mapping with names, patterns and/or types")
        for kind in SCOPE_KINDS:
            if kind in scope:
                out[f"ignored_{kind}"] = _strings(f"{w}.ignoredScope.{kind}", scope[kind])
    return QuantOptions(**out)


def parse_scope_items(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["name:conv1", "type:Softmax", "pattern:.*head.*"]`` → ignored_names/ignored_types/ignored_patterns."""
    out: dict[str, list[str]] = {}
    for item in items:
        kind, sep, value = item.partition(":")
        field = {"name": "ignored_names", "pattern": "ignored_patterns", "type": "ignored_types"}.get(kind.strip())
        if not sep or field is None or not value.strip():
            raise UserError(f"--ignored-scope {item!r}: expected name:NODE, pattern:REGEX or type:OP", exit_code=2)
        out.setdefault(field, []).append(value.strip())
    return {k: tuple(v) for k, v in out.items()}


def split_list(values: Sequence[str]) -> tuple[str, ...]:
    """Repeatable, comma-separated CLI values as one tuple."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())
