"""The JSON Schemas of every manifest kind, found at run time.

In a wheel they live in ``reconciler/_schemas`` (force-included from the top-level ``schemas/``); in a source
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
    for cand in (here / "_schemas", here.parent / "schemas"):
        if (cand / "common.schema.json").is_file():
            return cand
    raise FileNotFoundError("modelfleet schemas not found (expected reconciler/_schemas or ./schemas)")


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


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for ``kind`` (one of :data:`KINDS`)."""
    schema = load_schema(KINDS[kind])
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)
