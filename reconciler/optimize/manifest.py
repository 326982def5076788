"""Writing the new version into the Model manifest: a round-trip edit that keeps comments and formatting.

The file is first read with the fleet's own bounded loader (size, depth and alias limits), then edited with
``ruamel.yaml`` in round-trip mode (comments, key order, quoting and the file's indentation kept), then the
result is validated with the fleet's schemas and semantic checks *before* it replaces the file (atomically).
A manifest that does not exist yet is created from the model's interface.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text
from reconciler.fleet.manifests import FLEET_FILE, load_files, read_dir
from reconciler.fleet.schemas import load_schema
from reconciler.fleet.yamlsafe import MAX_FILE_BYTES, YamlError, load_documents

API_VERSION = "modelfleet/v1"
_FLOW_KEYS = ("targets", "arch", "cpuFlags", "accelerators", "shape")


def schema_accepts(field: str) -> bool:
    """Whether a Model variant may carry ``field`` in the schemas this build ships."""
    return field in load_schema("model.schema.json")["$defs"]["variant"]["properties"]


def new_model_text(name: str, task: str, inputs: Sequence[Mapping[str, Any]],
                   outputs: Sequence[Mapping[str, Any]]) -> str:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"task": task, "inputs": [dict(t) for t in inputs], "outputs": [dict(t) for t in outputs],
                 "versions": []},
    }
    return "# yaml-language-server: $schema=../../schemas/model.schema.json\n" + _dump(_to_commented(doc), 2, 4, 2)


def add_version(text: str, version: Mapping[str, Any], filename: str) -> str:
    """``text`` with ``version`` appended to ``spec.versions``; raises :class:`UserError` for a bad manifest."""
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise UserError(f"{filename}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:  # the bounded loader first: limits and line:column messages
        docs = load_documents(text, filename)
    except YamlError as exc:
        raise UserError(f"{filename}:{exc.line}:{exc.column}: {exc.message}") from None
    if len(docs) != 1 or not isinstance(docs[0].data, dict) or docs[0].data.get("kind") != "Model":
        raise UserError(f"{filename}: expected exactly one document of kind Model")
    indents = guess_indent(text)
    data = _yaml(*indents).load(text)
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise UserError(f"{filename}: the Model has no spec")
    versions = spec.get("versions")
    if versions is None:
        from ruamel.yaml.comments import CommentedSeq

        versions = spec["versions"] = CommentedSeq()
    if any(isinstance(v, dict) and str(v.get("version")) == str(version["version"]) for v in versions):
        raise UserError(f"{filename}: version {version['version']} already exists; choose a new --version")
    versions.append(_to_commented(version))
    return _dump(data, *indents)


def _to_commented(node: Any, key: str | None = None) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, Mapping):
        m = CommentedMap()
        for k, v in node.items():
            m[k] = _to_commented(v, k)
        return m
    if isinstance(node, list | tuple):
        s = CommentedSeq(_to_commented(v) for v in node)
        if key in _FLOW_KEYS:
            s.fa.set_flow_style()
        return s
    if key == "version" and isinstance(node, str):
        from ruamel.yaml.scalarstring import DoubleQuotedScalarString

        return DoubleQuotedScalarString(node)  # "1.10" must stay a string, as the example manifests write it
    return node


def guess_indent(text: str) -> tuple[int, int, int]:
    """The file's mapping indent, sequence indent and ``-`` offset (ruamel cannot keep them by itself)."""
    mapping: int | None = None
    seq: tuple[int, int] | None = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line, nxt in zip(lines, lines[1:], strict=False):
        body = line.split(" #")[0].rstrip()
        if not body.endswith(":"):
            continue
        stripped = line.lstrip()
        key_col = len(line) - len(stripped)
        if stripped.startswith("-"):
            key_col += len(stripped) - len(stripped[1:].lstrip())
        nxt_body = nxt.lstrip()
        step = len(nxt) - len(nxt_body) - key_col
        if step < 0:
            continue
        if nxt_body.startswith("- ") and seq is None:
            seq = (step + 1 + len(nxt_body[1:]) - len(nxt_body[1:].lstrip()), step)
        elif not nxt_body.startswith("-") and step > 0 and mapping is None:
            mapping = step
        if mapping is not None and seq is not None:
            break
    sequence, offset = seq if seq is not None else (4, 2)
    return mapping or 2, sequence, offset


def _yaml(mapping: int, sequence: int, offset: int) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, key order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _dump(data: Any, mapping: int, sequence: int, offset: int) -> str:
    buf = io.StringIO()
    _yaml(mapping, sequence, offset).dump(data, buf)
    return buf.getvalue()


def fleet_root_of(manifest: Path) -> Path | None:
    """The fleet repository holding ``manifest`` (``<root>/models/…`` with ``<root>/fleet.yaml``), if any."""
    for parent in Path(manifest).resolve().parents:
        if parent.name == "models" and (parent.parent / FLEET_FILE).is_file():
            return parent.parent
    return None


def write_version(manifest: Path, version: Mapping[str, Any], *, model_name: str, task: str,
                  inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> str:
    """Add ``version`` to ``manifest`` (created when missing), validate, write atomically; returns the text."""
    manifest = Path(manifest)
    try:
        text = manifest.read_text(encoding="utf-8") if manifest.exists() else new_model_text(
            model_name, task, inputs, outputs)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{manifest}: cannot read: {exc}") from None
    new_text = add_version(text, version, str(manifest))
    root = fleet_root_of(manifest)
    rel = manifest.resolve().relative_to(root).as_posix() if root else f"models/{manifest.name}"
    files = read_dir(root) if root else {}
    files[rel] = new_text.encode("utf-8")
    problems = [d for d in load_files(files).errors if d.file == rel]
    if problems:
        shown = "; ".join(f"{d.line}:{d.column}: {d.message}" for d in problems[:5])
        raise UserError(f"{manifest}: the new version would not validate ({shown}); file left unchanged")
    atomic_write_text(manifest, new_text)
    return new_text
