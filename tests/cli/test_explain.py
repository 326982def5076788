"""``modelfleet explain KIND[.field[.sub]]``: a field's documentation from the JSON Schemas, like kubectl explain."""

from __future__ import annotations

import json

import pytest
import yaml

from reconciler.fleet.schemas import KINDS, load_schema
from tests._cli import run_cli


def test_a_kind_lists_its_top_level_fields() -> None:
    r = run_cli("explain", "deployment")  # any case
    assert r.code == 0, r.err
    assert r.out.startswith("KIND:     Deployment\n") and "\nFIELDS:\n" in r.out
    assert "    spec  <object>  -required-" in r.out and "    apiVersion  <modelfleet/v1>  -required-" in r.out


def test_a_nested_field_with_type_required_enum_and_children() -> None:
    r = run_cli("explain", "Deployment.spec.rollout.steps")
    assert r.code == 0, r.err
    assert "FIELD:    spec.rollout.steps <list of object>\nREQUIRED: yes\n" in r.out
    assert "    percent  <number>" in r.out and "    name  <string>" in r.out  # a list's children: its items'
    r = run_cli("explain", "Model.spec.versions.variants.precision")
    assert "FIELD:    spec.versions.variants.precision <fp32 | fp16 | bf16 | int8>" in r.out
    assert "ENUM:     fp32, fp16, bf16, int8" in r.out and "REQUIRED: no" in r.out


def test_json_and_yaml_hold_the_same_document() -> None:
    doc = json.loads(run_cli("explain", "AgentConfig.spec.source", "--format", "json").out)
    assert doc["kind"] == "AgentConfig" and doc["field"] == "spec.source" and doc["required"] is True
    url = next(f for f in doc["fields"] if f["name"] == "url")
    assert url == {"name": "url", "type": "string", "required": True, "description": url["description"]}
    assert "password" in url["description"]
    assert yaml.safe_load(run_cli("explain", "AgentConfig.spec.source", "--format", "yaml").out) == doc


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_top_level_field_of_every_kind_is_documented(kind: str) -> None:
    schema = load_schema(KINDS[kind])
    for name in schema["properties"]:
        r = run_cli("explain", f"{kind}.{name}", "--format", "json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["description"], f"{kind}.{name} has no description"


@pytest.mark.parametrize(("target", "message"), [
    ("Deploy", "error: unknown kind 'Deploy' (kinds: Fleet, Model, Deployment, Device, AgentConfig, GatewayConfig, "
                "DeviceStatus)"),
    ("Deployment.spec.rolout", "error: Deployment.spec has no field 'rolout' (fields: model, version, serveAs, "),
    ("Deployment.metadata.name.first", "error: Deployment.metadata.name is <string>: it has no fields"),
    ("Deployment..spec", "error: 'Deployment..spec': expected KIND[.field[.sub]], e.g. Deployment.spec.rollout"),
])
def test_unknown_kinds_and_fields_list_the_valid_ones(target: str, message: str) -> None:
    r = run_cli("explain", target)
    assert r.code == 1 and r.out == "" and r.err.startswith(message) and "Traceback" not in r.err
