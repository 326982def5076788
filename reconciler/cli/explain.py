"""``modelfleet explain KIND[.field[.sub]]``: a manifest field's documentation from the JSON Schemas, like
``kubectl explain``.

The schemas are the one source (docs/manifests.md is generated from the same ones), so what ``explain`` prints is
what ``validate`` enforces. A list field's children are its items' fields (``Deployment.spec.rollout.steps.name``),
a map's are its values'. An unknown kind or field is one error line listing the valid ones.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import click

from reconciler.cli.options import emit, format_option
from reconciler.core.errors import UserError


@dataclass
class Field:
    kind: str
    path: str
    type: str
    required: bool
    description: str
    default: Any = None
    enum: list[Any] | None = None
    children: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.path, "type": self.type, "required": self.required,
                "default": self.default, "enum": self.enum, "description": self.description,
                "fields": self.children}


def _container(node: dict[str, Any], local: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The object whose properties are ``node``'s children: itself, a list's items or a map's values."""
    from reconciler.fleet.docgen import resolve

    node, local = resolve(node, local)
    for _ in range(3):
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            node, local = resolve(node["items"], local)
        elif "properties" not in node and isinstance(node.get("additionalProperties"), dict):
            node, local = resolve(node["additionalProperties"], local)
        else:
            break
    return node, local


def _kind(name: str) -> str:
    from reconciler.fleet.schemas import KINDS

    for kind in KINDS:
        if kind.lower() == name.lower():
            return kind
    raise UserError(f"unknown kind {name!r} (kinds: {', '.join(KINDS)})")


def explain(target: str) -> Field:
    """The documentation of ``KIND[.field…]``; raises UserError naming the valid choices."""
    from reconciler.fleet.docgen import resolve, type_name
    from reconciler.fleet.schemas import KINDS, load_schema

    kind_name, *parts = [p for p in target.split(".")]
    if not kind_name or any(not p for p in parts):
        raise UserError(f"{target!r}: expected KIND[.field[.sub]], e.g. Deployment.spec.rollout")
    kind = _kind(kind_name)
    schema = load_schema(KINDS[kind])
    node, local = resolve(schema, schema)
    required = True
    walked = kind
    for part in parts:
        parent, parent_local = _container(node, local)
        props = parent.get("properties") or {}
        if part not in props:
            if not props:
                raise UserError(f"{walked} is <{type_name(node, local)}>: it has no fields")
            raise UserError(f"{walked} has no field {part!r} (fields: {', '.join(props)})")
        required = part in (parent.get("required") or [])
        node, local = props[part], parent_local
        walked += "." + part
    resolved, rlocal = resolve(node, local)
    desc = node.get("description") or resolved.get("description") or ""
    children = []
    container, clocal = _container(node, local)
    if container is not resolved or "properties" in container:
        for name, sub in (container.get("properties") or {}).items():
            sub_r, _ = resolve(sub, clocal)
            children.append({"name": name, "type": type_name(sub, clocal),
                             "required": name in (container.get("required") or []),
                             "description": sub.get("description") or sub_r.get("description") or ""})
    return Field(kind, ".".join(parts), type_name(node, local), required, desc, resolved.get("default"),
                 resolved.get("enum"), children)


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100, initial_indent=indent, subsequent_indent=indent)


def render_text(f: Field) -> str:
    lines = [f"KIND:     {f.kind}"]
    if f.path:
        lines.append(f"FIELD:    {f.path} <{f.type}>")
        lines.append(f"REQUIRED: {'yes' if f.required else 'no'}")
    if f.default is not None:
        lines.append(f"DEFAULT:  {f.default}")
    if f.enum:
        lines.append(f"ENUM:     {', '.join(str(v) for v in f.enum)}")
    lines += ["", "DESCRIPTION:", _wrap(f.description or "(none)", "    ")]
    if f.children:
        lines += ["", "FIELDS:"]
        for c in f.children:
            lines.append(f"    {c['name']}  <{c['type']}>" + ("  -required-" if c["required"] else ""))
            if c["description"]:
                lines.append(_wrap(c["description"], "      "))
    return "\n".join(lines)


@click.command("explain")
@click.argument("target", metavar="KIND[.FIELD[.SUB]]")
@format_option("table", help="table: for people (like kubectl explain); json/yaml for scripts.")
def explain_cmd(target: str, fmt: str) -> None:
    """Document a manifest field: type, required, default, allowed values, description and its fields.

    KIND is Fleet, Model, Deployment, Device, AgentConfig or DeviceStatus (any case); list fields continue
    with their items' fields (Deployment.spec.rollout.steps.name).
    """
    f = explain(target)
    if fmt in ("json", "yaml"):
        emit(f.to_dict(), fmt)
    else:
        click.echo(render_text(f))
