"""Loading a fleet repository: files → parsed documents → schema-checked manifests → :class:`FleetRepo`.

Sources: a directory (``load_dir``), a Git revision read from the commit tree without a checkout
(``load_git``), or an in-memory mapping of paths to bytes (``load_files``, what the agent feeds from its Git
source). Which files count: ``fleet.yaml`` and every ``*.yaml``/``*.yml`` below ``models/``, ``deployments/``
and ``devices/``. Each document is checked against its kind's JSON Schema; then the semantic checks of
:mod:`reconciler.fleet.validation` run. Nothing raises for bad input: problems come back as diagnostics.

No input is dropped without a word (:func:`layout_diagnostics`):

- a symlink, submodule or special file where a manifest could be is an **error** naming it (its target is
  never read, and an operator must not believe it is in force);
- an empty manifest file (no YAML document) is an **error**: a truncated file would otherwise silently remove
  what it defined, and devices would prune it — delete the file to remove its objects;
- any other file under the manifest folders (``README.md``, ``x.json``, ``.draft.yaml``) is a **warning**:
  it is not read;
- a YAML file outside the manifest folders that looks like a modelfleet manifest (``apiVersion:
  modelfleet/…`` near its top) is a **warning**: it is not read. Other files outside are not fleet input.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.diagnostics import ERROR, WARNING, Diagnostic
from reconciler.core.redact import redact
from reconciler.fleet.repository import FleetRepo, LoadResult, Manifest, NonRegular, RepoFiles
from reconciler.fleet.schemas import validator
from reconciler.fleet.validation import semantic_checks
from reconciler.fleet.yamlsafe import MAX_FILE_BYTES, Document, YamlError, load_budget, load_documents

if TYPE_CHECKING:
    import jsonschema

MANIFEST_DIRS = ("models", "deployments", "devices")
FLEET_FILE = "fleet.yaml"
REPO_KINDS = ("Fleet", "Model", "Deployment", "Device")
__all__ = ["FleetRepo", "LoadResult", "Manifest", "NonRegular", "load_dir", "load_files", "load_git", "read_dir",
           "read_git"]
MAX_FILES = 50_000
#: Bytes read of a file that is not a manifest: enough to tell whether it looks like one.
PEEK_BYTES = 4096
#: Placeholders that keep an empty folder in Git; not input.
PLACEHOLDERS = (".gitkeep", ".keep")
_LOOKS_LIKE_MANIFEST = re.compile(rb"""^["']?apiVersion["']?\s*:\s*["']?modelfleet/""", re.MULTILINE)


def in_manifest_area(rel: str) -> bool:
    """``fleet.yaml`` or anything below (or being) one of the manifest folders."""
    return rel == FLEET_FILE or rel.split("/", 1)[0] in MANIFEST_DIRS


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


@dataclass(frozen=True)
class SchemaProblem:
    """One JSON-schema error said for people: ``path`` (to the unknown key itself for an unknown field; ``key``:
    point at the key, not its value), the message and the hint (``did you mean 'deviceId'?``, the allowed values)."""

    path: tuple[str | int, ...]
    key: bool
    message: str
    hint: str | None


def schema_problem(err: jsonschema.ValidationError) -> SchemaProblem:
    """What ``validate`` says about a schema error; the agent config (reconciler.agent.config) says the same."""
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
    return SchemaProblem(path, key, message, hint)


def _schema_diagnostics(m: Manifest) -> list[Diagnostic]:
    out = []
    for err in sorted(validator(m.kind).iter_errors(m.data), key=lambda e: list(map(str, e.absolute_path))):
        p = schema_problem(err)
        line, col = m.doc.position(p.path, key=p.key)
        # A schema message quotes the value ("'https://tok@host' does not match …"): never a secret in it.
        out.append(Diagnostic(m.file, line, col, redact(p.message), ERROR, m.kind, m.name, p.hint, "schema"))
    return out


def _closest(word: str, candidates: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def layout_diagnostics(files: RepoFiles) -> list[Diagnostic]:
    """Errors and warnings for entries that are not (readable) manifests; see the module docstring."""
    out: list[Diagnostic] = []
    for rel in sorted(files):
        content = files[rel]
        name = rel.rsplit("/", 1)[-1]
        if not in_manifest_area(rel):
            if (isinstance(content, bytes) and rel.endswith((".yaml", ".yml"))
                    and _LOOKS_LIKE_MANIFEST.search(content[:PEEK_BYTES])):
                out.append(Diagnostic(rel, 1, 1, "a modelfleet manifest outside fleet.yaml, models/, deployments/ "
                                      "and devices/ is not read", WARNING, None, None,
                                      "move it into the folder of its kind", "layout"))
            continue
        if isinstance(content, NonRegular):
            out.append(Diagnostic(rel, 1, 1, f"{content.describe()} where a manifest belongs; it is not read",
                                  ERROR, None, None, "commit the manifest itself as a regular file "
                                  "(`git ls-files -s` shows mode 120000 for a symlink, 160000 for a submodule)",
                                  "layout"))
        elif rel in MANIFEST_DIRS:
            out.append(Diagnostic(rel, 1, 1, f"{rel} is a file; it must be a folder of manifests", ERROR, None,
                                  None, None, "layout"))
        elif name in PLACEHOLDERS:
            continue
        elif not is_manifest_path(rel):
            why = "hidden files are" if any(p.startswith(".") for p in rel.split("/")) else "only .yaml/.yml files are"
            hint = "rename it to .yaml (JSON is valid YAML)" if rel.endswith(".json") else \
                "keep other files outside models/, deployments/ and devices/"
            out.append(Diagnostic(rel, 1, 1, f"not a manifest: {why} read; this file is ignored", WARNING, None,
                                  None, hint, "layout"))
    return out


def load_files(files: RepoFiles, *, tuf_targets: set[str] | None = None) -> LoadResult:
    """Load and validate a fleet repository given as ``{relative/path: content or NonRegular}``."""
    fleet = FleetRepo()
    diags: list[Diagnostic] = layout_diagnostics(files)
    manifests: list[Manifest] = []
    names = sorted(p for p, content in files.items() if is_manifest_path(p) and isinstance(content, bytes))
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
        content = files[rel]
        assert isinstance(content, bytes)
        try:
            docs = load_documents(content, rel, budget)
        except YamlError as exc:
            diags.append(Diagnostic(rel, exc.line, exc.column, exc.message, ERROR, None, None, exc.hint, "yaml"))
            continue
        if not docs:
            diags.append(Diagnostic(rel, 1, 1, "empty manifest file: no YAML document in it", ERROR, None, None,
                                    "delete the file to remove what it defined", "empty"))
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


def read_dir(path: str | os.PathLike[str]) -> dict[str, bytes | NonRegular]:
    """The fleet input below ``path`` as ``{relative: bytes | NonRegular}``; symlinks are reported, never followed.

    Manifests are read to the size limit + 1; other files only to :data:`PEEK_BYTES` (to tell whether they look
    like manifests). FIFOs and devices are never opened.
    """
    root = Path(path)
    out: dict[str, bytes | NonRegular] = {}

    def add(p: Path) -> None:
        rel = p.relative_to(root).as_posix()
        try:
            st = os.lstat(p)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            if in_manifest_area(rel):
                out[rel] = NonRegular("symlink", os.readlink(p)) if stat.S_ISLNK(st.st_mode) else \
                    NonRegular("special file")
        elif in_manifest_area(rel) or rel.endswith((".yaml", ".yml")):
            with open(p, "rb") as fh:
                out[rel] = fh.read(MAX_FILE_BYTES + 1 if is_manifest_path(rel) else PEEK_BYTES)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        inside = here != root and in_manifest_area(here.relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not (here == root and d.startswith(".")) or inside)
        for d in list(dirnames):
            if (here / d).is_symlink():
                add(here / d)
                dirnames.remove(d)
            elif (here / d / ".git").exists() and in_manifest_area((here / d).relative_to(root).as_posix()):
                # A submodule (or nested repository) checkout: Git keeps only a commit id here, so a device
                # reading the commit sees no files; report it as the same error as in Git-revision mode.
                out[(here / d).relative_to(root).as_posix()] = NonRegular("submodule")
                dirnames.remove(d)
        for f in sorted(filenames):
            add(here / f)
        if len(out) > MAX_FILES:
            break
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
    return tree_files(tree)


def tree_files(tree: object) -> dict[str, bytes | NonRegular]:
    """The fleet input in a GitPython tree, like :func:`read_dir`: symlinks and submodules as :class:`NonRegular`."""
    import git

    assert isinstance(tree, git.Tree)
    out: dict[str, bytes | NonRegular] = {}
    for item in tree.traverse():
        rel = item.path[len(tree.path) + 1:] if tree.path else item.path
        if item.type == "tree":
            continue
        if item.type == "submodule":
            if in_manifest_area(rel):
                out[rel] = NonRegular("submodule", item.hexsha)
            continue
        if item.mode & 0o170000 == 0o120000:
            if in_manifest_area(rel):
                out[rel] = NonRegular("symlink", item.data_stream.read(4096).decode("utf-8", "replace"))
        elif in_manifest_area(rel) or rel.endswith((".yaml", ".yml")):
            limit = MAX_FILE_BYTES + 1 if is_manifest_path(rel) else PEEK_BYTES
            out[rel] = item.data_stream.read(limit) if item.size > limit else item.data_stream.read()
        if len(out) > MAX_FILES:
            break
    return out


def load_git(repo_path: str | os.PathLike[str], rev: str, subpath: str | None = None, *,
             tuf_targets: set[str] | None = None) -> LoadResult:
    return load_files(read_git(repo_path, rev, subpath), tuf_targets=tuf_targets)
