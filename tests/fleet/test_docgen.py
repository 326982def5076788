"""docs/manifests.md is generated from the schemas; this fails when someone edits a schema and forgets `make docs`."""

from __future__ import annotations

from pathlib import Path

from reconciler.fleet.docgen import generate
from reconciler.fleet.schemas import KINDS, load_schema

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_reference_is_current() -> None:
    assert (ROOT / "docs" / "manifests.md").read_text() == generate(), "docs/manifests.md is stale: run `make docs`"


def _walk(node: object, path: str, missing: list[str]) -> None:
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                missing.append(f"{path}.{name}")
        for key, sub in node.items():
            _walk(sub, f"{path}/{key}", missing)
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            _walk(sub, f"{path}[{i}]", missing)


def test_every_field_in_the_repo_kinds_has_a_description() -> None:
    missing: list[str] = []
    for kind in ("Fleet", "Model", "Deployment", "Device", "AgentConfig"):
        _walk(load_schema(KINDS[kind]), kind, missing)
    assert not missing, missing


def test_every_example_file_names_its_schema() -> None:
    for f in (ROOT / "fleet-repo-example").rglob("*.yaml"):
        if ".github" in f.parts or f.name.startswith("."):
            continue
        assert f.read_text().startswith("# yaml-language-server: $schema="), f
