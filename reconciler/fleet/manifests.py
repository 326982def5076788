"""Loading a fleet repository: files → parsed documents → schema-checked manifests → :class:`FleetRepo`.

Sources: a directory (``load_dir``), a Git revision read from the commit tree without a checkout
(``load_git``), or an in-memory mapping of paths to bytes (``load_files``, what the agent feeds from its Git
source). Which files count: ``fleet.yaml`` and every ``*.yaml``/``*.yml`` below ``models/``, ``deployments/``
and ``devices/``. Each document is checked against its kind's JSON Schema; then the semantic checks of
:mod:`reconciler.fleet.validation` run. Nothing raises for bad input: problems come back as diagnostics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.diagnostics import ERROR, Diagnostic
from reconciler.fleet.repository import FleetRepo, LoadResult, Manifest
from reconciler.fleet.schemas import validator
from reconciler.fleet.validation import semantic_checks
from reconciler.fleet.yamlsafe import MAX_FILE_BYTES, Document, YamlError, load_budget, load_documents

MANIFEST_DIRS = ("models", "deployments", "devices")
FLEET_FILE = "fleet.yaml"
REPO_KINDS = ("Fleet", "Model", "Deployment", "Device")
__all__ = ["FleetRepo", "LoadResult", "Manifest", "load_dir", "load_files", "load_git", "read_dir", "read_git"]
MAX_FILES = 50_000


def is_manifest_path(rel: str) -> bool:
    parts = rel.split("/")
    if rel == FLEET_FILE:
        return True
    return (
        len(parts) >= 2
        and parts[0] in MANIFEST_DIRS
        and not any(p.startswith(".") for p in parts)
        and rel.endswith((".yaml", ".yml"))
    )


def _schema_diagnostics(m: Manifest) -> list[Diagnostic]:
    out = []
    for err in sorted(validator(m.kind).iter_errors(m.data), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(err.absolute_path)
        hint = None
        key = False
        message = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            extra = sorted(k for k in err.instance if k not in allowed)
            if extra:
                path = path + (extra[0],)
                key = True
                message = f"unknown field {'.'.join(map(str, path))!s}"
                close = _closest(extra[0], allowed)
                hint = f"did you mean {close!r}?" if close else f"allowed fields: {', '.join(sorted(allowed))}"
        elif err.validator == "required":
            hint = "add the missing field"
            key = True
        elif err.validator in ("enum", "const"):
            hint = f"allowed: {', '.join(map(repr, err.validator_value if err.validator == 'enum' else [err.validator_value]))}"
        elif err.validator == "pattern":
            desc = err.schema.get("description")
            hint = desc.split(".")[0] if desc else None
        where = ".".join(map(str, err.absolute_path)) or "(document)"
        if not message.startswith("unknown field"):
            message = f"{where}: {message}"
        line, col = m.doc.position(path, key=key)
        out.append(Diagnostic(m.file, line, col, message, ERROR, m.kind, m.name, hint, "schema"))
    return out


def _closest(word: str, candidates: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def load_files(files: Mapping[str, bytes], *, tuf_targets: set[str] | None = None) -> LoadResult:
    """Load and validate a fleet repository given as ``{relative/path: content}``."""
    fleet = FleetRepo()
    diags: list[Diagnostic] = []
    manifests: list[Manifest] = []
    names = sorted(p for p in files if is_manifest_path(p))
    if len(names) > MAX_FILES:
        diags.append(Diagnostic(".", 1, 1, f"{len(names)} manifest files; the limit is {MAX_FILES}"))
        names = names[:MAX_FILES]
    budget = load_budget()
    for i, rel in enumerate(names):
        if budget.exhausted:
            diags.append(Diagnostic(rel, 1, 1, f"not loaded: the repository load's YAML node budget ({budget.limit}) "
                                    f"is spent; {len(names) - i} files left", ERROR, None, None,
                                    "aliases (&anchor / *ref) that multiply content are not allowed to expand this far",
                                    "yaml"))
            break
        try:
            docs = load_documents(files[rel], rel, budget)
        except YamlError as exc:
            diags.append(Diagnostic(rel, exc.line, exc.column, exc.message, ERROR, None, None, exc.hint, "yaml"))
            continue
        for doc in docs:
            m = _to_manifest(rel, doc, diags)
            if m is not None:
                manifests.append(m)
    for m in manifests:
        sd = _schema_diagnostics(m)
        diags.extend(sd)
        if sd:
            continue
        if m.kind == "Fleet":
            if fleet.fleet is not None:
                diags.append(m.diag(f"a second Fleet (first in {fleet.fleet.file})", "kind",
                                    hint="a repository has exactly one Fleet, in fleet.yaml", code="duplicate"))
            else:
                fleet.fleet = m
            continue
        index = {"Model": fleet.models, "Deployment": fleet.deployments, "Device": fleet.devices}[m.kind]
        if m.name in index:
            first = index[m.name]
            diags.append(m.diag(f"duplicate {m.kind} name {m.name!r} (first defined at {first.file}:{first.doc.line})",
                                "metadata", "name", hint="names must be unique per kind", code="duplicate"))
        else:
            index[m.name] = m
    if fleet.fleet is None and not any(d.file == FLEET_FILE for d in diags):
        diags.append(Diagnostic(FLEET_FILE, 1, 1, "no Fleet manifest found", ERROR, "Fleet", None,
                                "create fleet.yaml with kind: Fleet", "missing"))
    diags.extend(semantic_checks(fleet, tuf_targets=tuf_targets))
    diags.sort(key=lambda d: (d.file, d.line, d.column))
    return LoadResult(fleet, diags, len(names))


def _to_manifest(rel: str, doc: Document, diags: list[Diagnostic]) -> Manifest | None:
    data = doc.data
    if not isinstance(data, dict):
        diags.append(Diagnostic(rel, doc.line, 1, "a manifest must be a mapping with apiVersion, kind, metadata, spec",
                                code="schema"))
        return None
    kind = data.get("kind")
    if kind not in REPO_KINDS:
        line, col = doc.position(("kind",))
        hint = f"one of: {', '.join(REPO_KINDS)}"
        msg = "missing 'kind'" if kind is None else f"unknown kind {kind!r}"
        diags.append(Diagnostic(rel, line, col, msg, ERROR, None, None, hint, "schema"))
        return None
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if kind == "Fleet" and rel != FLEET_FILE:
        diags.append(Diagnostic(rel, doc.line, 1, "the Fleet manifest belongs in fleet.yaml", ERROR, kind,
                                str(name), "move it to fleet.yaml at the repository root", "layout"))
        return None
    return Manifest(kind, str(name) if name is not None else "?", data, rel, doc)


def read_dir(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The manifest files below ``path`` as ``{relative: bytes}``. Oversized files are read only to the limit+1."""
    root = Path(path)
    out: dict[str, bytes] = {}
    fleet_file = root / FLEET_FILE
    candidates = [fleet_file] if fleet_file.is_file() else []
    for d in MANIFEST_DIRS:
        base = root / d
        if base.is_dir():
            candidates.extend(p for p in sorted(base.rglob("*")) if p.is_file() and not p.is_symlink())
    for p in candidates:
        rel = p.relative_to(root).as_posix()
        if not is_manifest_path(rel):
            continue
        with open(p, "rb") as fh:
            out[rel] = fh.read(MAX_FILE_BYTES + 1)
    return out


def load_dir(path: str | os.PathLike[str], *, tuf_targets: set[str] | None = None) -> LoadResult:
    return load_files(read_dir(path), tuf_targets=tuf_targets)


def read_git(repo_path: str | os.PathLike[str], rev: str, subpath: str | None = None) -> dict[str, bytes]:
    """The manifest files at ``rev`` read from the commit tree (no checkout, no hooks)."""
    import git

    repo = git.Repo(repo_path, search_parent_directories=True)
    try:
        tree = repo.commit(rev).tree
    except (git.BadName, ValueError) as exc:
        from reconciler.core.errors import UserError

        raise UserError(f"unknown revision {rev!r} in {repo_path}: {exc}") from None
    if subpath:
        tree = tree / subpath.strip("/")
    out: dict[str, bytes] = {}
    for item in tree.traverse():
        if item.type != "blob":
            continue
        rel = item.path[len(tree.path) + 1:] if tree.path else item.path
        if not is_manifest_path(rel):
            continue
        if item.mode == 0o120000:  # symlink
            continue
        out[rel] = item.data_stream.read(MAX_FILE_BYTES + 1) if item.size > MAX_FILE_BYTES else item.data_stream.read()
    return out


def load_git(repo_path: str | os.PathLike[str], rev: str, subpath: str | None = None, *,
             tuf_targets: set[str] | None = None) -> LoadResult:
    return load_files(read_git(repo_path, rev, subpath), tuf_targets=tuf_targets)
