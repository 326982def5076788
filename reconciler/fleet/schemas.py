"""The JSON Schemas of every manifest kind, found at run time.

In a wheel they live in ``reconciler/fleet/_schemas`` (force-included from the top-level ``schemas/``); in a source
checkout (editable install) the top-level ``schemas/`` is used. Validators are built once and cached.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

KINDS: dict[str, str] = {
    "Fleet": "fleet.schema.json",
    "Model": "model.schema.json",
    "Deployment": "deployment.schema.json",
    "Device": "device.schema.json",
    "AgentConfig": "agentconfig.schema.json",
    "DeviceStatus": "devicestatus.schema.json",
}
BASE_URI = "https://modelfleet.dev/schemas/"


@functools.cache
def schema_dir() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "_schemas", here.parents[1] / "schemas"):
        if (cand / "common.schema.json").is_file():
            return cand
    raise FileNotFoundError("modelfleet schemas not found (expected reconciler/fleet/_schemas or ./schemas)")


@functools.cache
def load_schema(filename: str) -> dict[str, Any]:
    return json.loads((schema_dir() / filename).read_text(encoding="utf-8"))


@functools.cache
def _registry() -> Registry:
    resources = []
    for path in sorted(schema_dir().glob("*.schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((BASE_URI + path.name, Resource.from_contents(contents)))
    return Registry().with_resources(resources)


def _inline(node: Any, doc: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` replaced by its target (the schemas are not recursive). Reference lookups
    dominate validation time on large inventories; validating against the inlined schema is ~2x faster."""
    if isinstance(node, list):
        return [_inline(n, doc) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        file, _, pointer = node["$ref"].partition("#")
        target_doc = load_schema(file) if file else doc
        target: Any = target_doc
        for part in [p for p in pointer.split("/") if p]:
            target = target[part]
        merged = {k: v for k, v in target.items() if k not in ("$id", "$schema")}
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return _inline(merged, target_doc)
    return {k: (v if k == "$defs" else _inline(v, doc)) for k, v in node.items()}


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for ``kind`` (one of :data:`KINDS`)."""
    schema = load_schema(KINDS[kind])
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    inlined = _inline(schema, schema)
    inlined.pop("$defs", None)
    return cls(inlined, registry=_registry(), format_checker=cls.FORMAT_CHECKER)
