"""Pure edits of a deployment's YAML text for promote, abort, pause and resume.

The round-trip parser (ruamel.yaml) only *locates* the nodes; the change is made on the text itself — one
scalar replaced, one line inserted, or the ``rollout:`` block cut — so comments, key order, quoting and
formatting elsewhere are untouched and a reviewer sees the smallest diff. Every edit is checked by parsing the
result again and comparing it with the intended data; a mismatch is an :class:`EditError`, never a bad file.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError


class EditError(ValueError):
    """The deployment cannot be edited as asked (not in rollout, no ``from``, unusual layout, ...)."""


@dataclass
class Edit:
    text: str  # the new file content
    summary: str  # one line for the commit subject
    delete: bool = False  # the file is left with no document: remove it


def _load_all(text: str) -> list[Any]:
    try:
        return list(YAML(typ="rt").load_all(io.StringIO(text)))
    except YAMLError as exc:
        raise EditError(f"cannot parse YAML: {str(exc).splitlines()[0]}") from None


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def _find(docs: list[Any], name: str) -> tuple[int, CommentedMap]:
    for i, doc in enumerate(docs):
        if (isinstance(doc, CommentedMap) and doc.get("kind") == "Deployment"
                and isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name") == name):
            return i, doc
    raise EditError(f"no Deployment {name!r} in this file")


def _scalar_span(line: str, col: int) -> tuple[int, int]:
    """Start and end column of the scalar token starting at ``col``."""
    if line[col:col + 1] in ("'", '"'):
        q = line[col]
        end = col + 1
        while end < len(line):
            if line[end] == q:
                if q == "'" and line[end + 1:end + 2] == "'":
                    end += 2
                    continue
                return col, end + 1
            end += 2 if q == '"' and line[end] == "\\" else 1
        raise EditError("unterminated quoted scalar")
    end = line.find(" #", col)
    end = len(line.rstrip("\r\n")) if end < 0 else end
    return col, col + len(line[col:end].rstrip())


def _replace_value(lines: list[str], node: CommentedMap, key: str, value: str) -> None:
    line_no, col = node.lc.value(key)
    line = lines[line_no]
    start, end = _scalar_span(line, col)
    old = line[start:end]
    if isinstance(node[key], (dict, list)):
        raise EditError(f"{key} is not a scalar")
    if old[:1] in ("'", '"'):
        value = f"{old[0]}{value}{old[0]}"
    lines[line_no] = line[:start] + value + line[end:]


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the last line of the block whose key is on line ``start`` at column ``indent``."""
    last = start
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        lead = len(lines[i]) - len(lines[i].lstrip(" "))
        if lead <= indent or stripped in ("---", "..."):
            break
        last = i
    return last + 1


def _remove_key(lines: list[str], node: CommentedMap, key: str) -> None:
    line_no, col = node.lc.key(key)
    del lines[line_no:_block_end(lines, line_no, col)]


def _child_indent(lines: list[str], node: CommentedMap) -> int:
    first = next(iter(node))
    line_no, col = node.lc.key(first)
    if lines[line_no][:col].strip():
        raise EditError("the rollout block is written in flow style ({...}); edit it by hand")
    return col


def _apply(text: str, name: str, change: Callable[[list[str], CommentedMap], None],
           expect: Callable[[dict[str, Any]], None]) -> str:
    docs = _load_all(text)
    index, doc = _find(docs, name)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    change(lines, doc)
    new_text = "".join(lines)
    if not text.endswith("\n"):
        new_text = new_text[:-1]
    wanted = [_plain(d) for d in docs]
    expect(wanted[index])
    got = [_plain(d) for d in _load_all(new_text)]
    if got != wanted:
        raise EditError("the edit did not produce the intended document (unusual YAML layout); edit it by hand")
    return new_text


def _rollout(doc: CommentedMap) -> CommentedMap:
    spec = doc.get("spec")
    rollout = spec.get("rollout") if isinstance(spec, dict) else None
    if not isinstance(rollout, CommentedMap) or not rollout:
        raise EditError(f"deployment {doc['metadata']['name']} is not in a rollout")
    return rollout


def shadow_pending(rollout: Any) -> bool:
    """The current step's devices run the candidate in shadow and the next promote ends that (``switch:
    afterGate``, the default): it writes ``shadowPassed: <step>`` instead of advancing."""
    shadow = rollout.get("shadow")
    return (shadow is not None and rollout.get("from") is not None
            and str((shadow or {}).get("switch", "afterGate")) == "afterGate"
            and rollout.get("shadowPassed") != int(rollout.get("step", 0)))


def promote(text: str, name: str) -> Edit:
    """Advance ``rollout.step``; past the last step, complete: ``rollout`` (and its ``from``) go, ``version`` stays.

    A shadow step under ``switch: afterGate`` is promoted in two commits: the first writes ``shadowPassed: <step>``
    (the step's devices switch from shadow to serving the version), the next advances the step as usual."""
    doc = _find(_load_all(text), name)[1]
    rollout = _rollout(doc)
    step = int(rollout.get("step", 0))
    steps = rollout.get("steps") or []
    version = doc["spec"]["version"]
    if shadow_pending(rollout):
        def passed(lines: list[str], d: CommentedMap) -> None:
            r = d["spec"]["rollout"]
            if "shadowPassed" in r:
                _replace_value(lines, r, "shadowPassed", str(step))
            else:
                indent = _child_indent(lines, r)
                line_no = r.lc.key(next(iter(r)))[0]
                lines.insert(line_no, " " * indent + f"shadowPassed: {step}\n")

        def expect_passed(w: dict[str, Any]) -> None:
            w["spec"]["rollout"]["shadowPassed"] = step

        return Edit(_apply(text, name, passed, expect_passed),
                    f"rollout {name}: shadow of {version} passed at step {step} ({_label(steps[step])}); "
                    f"its devices serve it")
    if step + 1 >= len(steps):
        def complete(lines: list[str], d: CommentedMap) -> None:
            _remove_key(lines, d["spec"], "rollout")

        def expect_done(w: dict[str, Any]) -> None:
            del w["spec"]["rollout"]

        return Edit(_apply(text, name, complete, expect_done), f"rollout {name}: complete {version}")

    def advance(lines: list[str], d: CommentedMap) -> None:
        r = d["spec"]["rollout"]
        if "step" in r:
            _replace_value(lines, r, "step", str(step + 1))
        else:
            indent = _child_indent(lines, r)
            line_no = r.lc.key(next(iter(r)))[0]
            lines.insert(line_no, " " * indent + f"step: {step + 1}\n")

    def expect_step(w: dict[str, Any]) -> None:
        w["spec"]["rollout"]["step"] = step + 1

    label = _label(steps[step + 1])
    return Edit(_apply(text, name, advance, expect_step), f"rollout {name}: promote {version} to step {step + 1} ({label})")


def abort(text: str, name: str) -> Edit:
    """Every device back to ``rollout.from``: ``version`` becomes ``from`` and the rollout goes, in one edit.

    A first rollout (no ``from``: devices outside the steps run nothing for it) goes back to nothing: the
    Deployment document is removed (the file too when it held nothing else), so every device stops serving it;
    ``git revert`` of the commit brings it back."""
    doc = _find(_load_all(text), name)[1]
    rollout = _rollout(doc)
    back = rollout.get("from")
    bad = doc["spec"]["version"]
    if back is None:
        return remove_deployment(text, name, f"rollout {name}: abort {bad}, a first rollout: remove the deployment")

    def change(lines: list[str], d: CommentedMap) -> None:
        # Bottom-up: cutting the rollout block first keeps the version line's position valid either way.
        spec = d["spec"]
        if spec.lc.key("rollout")[0] > spec.lc.value("version")[0]:
            _remove_key(lines, spec, "rollout")
            _replace_value(lines, spec, "version", str(back))
        else:
            _replace_value(lines, spec, "version", str(back))
            _remove_key(lines, spec, "rollout")

    def expect(w: dict[str, Any]) -> None:
        w["spec"]["version"] = back if not isinstance(back, str) else str(back)
        del w["spec"]["rollout"]

    return Edit(_apply(text, name, change, expect), f"rollout {name}: abort {bad}, back to {back}")


_SEPARATOR = re.compile(r"^---(\s|$)")


def remove_deployment(text: str, name: str, summary: str) -> Edit:
    """Cut Deployment ``name``'s document (from its ``---`` to the next) out of ``text``; the rest is untouched."""
    docs = _load_all(text)
    index = _find(docs, name)[0]
    lines = text.splitlines(keepends=True)
    chunks: list[list[str]] = [[]]
    for line in lines:
        if _SEPARATOR.match(line) and chunks[-1]:
            chunks.append([])
        chunks[-1].append(line)
    owner: list[int] = []  # the chunk of each document
    for i, chunk in enumerate(chunks):
        owner += [i] * len(_load_all("".join(chunk)))
    if len(owner) != len(docs):
        raise EditError("cannot find the deployment's document boundaries (unusual YAML layout); edit it by hand")
    new_text = "".join(line for j, chunk in enumerate(chunks) if j != owner[index] for line in chunk)
    wanted = [_plain(d) for j, d in enumerate(docs) if j != index]
    if [_plain(d) for d in _load_all(new_text)] != wanted:
        raise EditError("the edit did not produce the intended documents (unusual YAML layout); edit it by hand")
    return Edit(new_text, summary, delete=all(d is None for d in wanted))


def set_paused(text: str, name: str, paused: bool) -> Edit:
    doc = _find(_load_all(text), name)[1]
    rollout = _rollout(doc)
    verb = "pause" if paused else "resume"
    if bool(rollout.get("paused", False)) == paused:
        raise EditError(f"rollout of {name} is already {'paused' if paused else 'running'}")

    def change(lines: list[str], d: CommentedMap) -> None:
        r = d["spec"]["rollout"]
        if "paused" in r:
            if paused:
                _replace_value(lines, r, "paused", "true")
            else:
                line_no, col = r.lc.key("paused")
                del lines[line_no:_block_end(lines, line_no, col)]
        else:
            indent = _child_indent(lines, r)
            line_no = r.lc.key(next(iter(r)))[0]
            lines.insert(line_no, " " * indent + "paused: true\n")

    def expect(w: dict[str, Any]) -> None:
        if paused:
            w["spec"]["rollout"]["paused"] = True
        else:
            w["spec"]["rollout"].pop("paused", None)

    return Edit(_apply(text, name, change, expect), f"rollout {name}: {verb} at step {int(rollout.get('step', 0))}")


def _label(step: Any) -> str:
    if "percent" in step:
        return str(step.get("name") or f"{step['percent']:g}%")
    return str(step.get("name") or "selector")


def deployment_data(text: str, name: str) -> dict[str, Any]:
    """The plain data of deployment ``name`` in ``text`` (for tests and callers that need a copy)."""
    return copy.deepcopy(_plain(_find(_load_all(text), name)[1]))
