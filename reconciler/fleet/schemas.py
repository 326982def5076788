"""The JSON Schemas of every manifest kind, found at run time.

In a wheel they live in ``reconciler/fleet/_schemas`` (force-included from the top-level ``schemas/``); in a source
checkout (editable install) the top-level ``schemas/`` is used. Validators are built once and cached.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fastjsonschema
import jsonschema
from referencing import Registry, Resource

KINDS: dict[str, str] = {
    "Fleet": "fleet.schema.json",
    "Model": "model.schema.json",
    "Deployment": "deployment.schema.json",
    "Device": "device.schema.json",
    "AgentConfig": "agentconfig.schema.json",
    "GatewayConfig": "gatewayconfig.schema.json",
    "DeviceStatus": "devicestatus.schema.json",
}
BASE_URI = "https://modelfleet.dev/schemas/"
_BUILD_LOCK = threading.RLock()
T = TypeVar("T")


def _built_once(build: Callable[[str], T]) -> Callable[[str], T]:
    """``functools.cache`` for a validator that many threads may ask for at the same moment: it is built once
    (building one takes a tenth of a second; the threads of a simulated fleet's first status each built their
    own)."""
    built: dict[str, T] = {}

    @functools.wraps(build)
    def get(kind: str) -> T:
        found = built.get(kind)
        if found is None:
            with _BUILD_LOCK:
                found = built.get(kind)
                if found is None:
                    found = built[kind] = build(kind)
        return found
    return get


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


@_built_once
def validator(kind: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for ``kind`` (one of :data:`KINDS`)."""
    schema = load_schema(KINDS[kind])
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    inlined = _inline(schema, schema)
    inlined.pop("$defs", None)
    return cls(inlined, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


# Keywords a compiled check implements exactly as Draft 2020-12 does (no $dynamicRef, unevaluated*, prefixItems,
# format): a schema using any other one keeps the jsonschema path.
_COMPILABLE = {"$schema", "$id", "title", "description", "type", "properties", "additionalProperties", "required",
               "items", "enum", "const", "pattern", "maxLength", "minLength", "maxItems", "minItems", "minimum",
               "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxProperties", "minProperties", "propertyNames",
               "uniqueItems", "oneOf", "anyOf", "allOf", "not", "default", "examples", "deprecated"}


def _keywords(node: Any, props: bool = False) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_keywords(n) for n in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = set() if props else set(node)
    for k, v in node.items():
        found |= _keywords(v, props=(k == "properties" and not props))
    return found


@_built_once
def fast_check(kind: str) -> Callable[[Any], Any]:
    """A compiled validator for ``kind`` (fastjsonschema, ~25x faster than :func:`validator`: an operator reads
    thousands of device statuses per report). Raises ``ValueError`` with one line naming the path; falls back to
    :func:`validator` when the schema uses a keyword the compiled check does not implement identically."""
    inlined = dict(validator(kind).schema)
    if _keywords(inlined) - _COMPILABLE:
        slow = validator(kind)

        def check_slow(doc: Any) -> Any:
            for err in slow.iter_errors(doc):
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                raise ValueError(f"{where}: {err.message[:200]}")
            return doc
        return check_slow
    inlined["$schema"] = "http://json-schema.org/draft-07/schema#"  # same semantics for the keywords above
    inlined.pop("$id", None)
    compiled = fastjsonschema.compile(inlined)

    def check(doc: Any) -> Any:
        try:
            return compiled(doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            where = "/".join(str(p) for p in (exc.path or [])[1:]) or "(root)"
            raise ValueError(f"{where}: {str(exc.message)[:200]}") from None
    return check
