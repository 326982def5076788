"""How a loaded model's tensors compare with the Model manifest's ``inputs``/``outputs``. Pure.

:func:`interface_problems` is what the registry refuses a version for (reason ``InterfaceMismatch``: a
declared tensor the model lacks, another datatype, another rank); the registry reports the first one.
``modelfleet validate --tuf-repo`` reports all of them, and :func:`shape_findings` besides: dimensions the
device does not refuse at load but that make requests shaped as declared fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.serving.v2.codec import TensorMeta


def interface_problems(
    declared_inputs: Sequence[Mapping[str, Any]],
    declared_outputs: Sequence[Mapping[str, Any]],
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
) -> list[str]:
    """Why a device refuses the model for these declarations (empty: it does not), in declaration order."""
    out: list[str] = []
    for kind, declared, reported in (("input", declared_inputs, inputs), ("output", declared_outputs, outputs)):
        have = {m.name: m for m in reported}
        for d in declared:
            m = have.get(d["name"])
            if m is None:
                out.append(f"declared {kind} {d['name']!r} is not in the model ({', '.join(have)})")
                continue
            if m.datatype != d["datatype"]:
                out.append(f"{kind} {d['name']!r} is {m.datatype} in the model, declared {d['datatype']}")
            shape = d.get("shape") or []
            if shape and len(shape) != len(m.shape):
                out.append(f"{kind} {d['name']!r} has rank {len(m.shape)} in the model, declared {len(shape)}")
    return out


def shape_findings(
    declared_inputs: Sequence[Mapping[str, Any]],
    declared_outputs: Sequence[Mapping[str, Any]],
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
) -> list[tuple[bool, str]]:
    """``(is_error, message)`` for what loads on a device but fails (or may fail) requests shaped as declared.

    Errors: a fixed dimension declared with another size than the model's. Warnings: a dimension declared
    variable (``-1``) that the model fixes, and a model input the Model does not declare (unless a declared one
    is missing). Tensors whose name or rank differ are :func:`interface_problems` and not judged here."""
    out: list[tuple[bool, str]] = []
    for kind, declared, reported in (("input", declared_inputs, inputs), ("output", declared_outputs, outputs)):
        have = {m.name: m for m in reported}
        for d in declared:
            m = have.get(d["name"])
            shape = [int(x) for x in d.get("shape") or []]
            if m is None or not shape or len(shape) != len(m.shape):
                continue
            for i, (want, got) in enumerate(zip(shape, m.shape, strict=True)):
                if want >= 0 and got >= 0 and want != got:
                    out.append((True, f"{kind} {d['name']!r} dimension {i} is {got} in the model, declared {want}"))
                elif want < 0 <= got:
                    out.append((False, f"{kind} {d['name']!r} dimension {i} is fixed to {got} in the model, declared "
                                       "-1 (variable): requests of another size fail"))
    names = {d["name"] for d in declared_inputs}
    if not names <= {m.name for m in inputs}:
        return out  # a declared input the model lacks (interface_problems) is most likely this one renamed
    for m in inputs:
        if m.name not in names:
            out.append((False, f"the model also takes input {m.name!r} ({m.datatype} {list(m.shape)}), which the "
                               "Model does not declare: requests without it fail"))
    return out
