"""Safe, bounded YAML loading with source positions.

Manifests come from a Git repository anyone with push access can write to, so loading is defensive:
only the core schema (no language-specific tags, no ``<<`` merges), duplicate keys rejected, file size,
document count and nesting depth bounded. Aliases (``*ref``) stay allowed (operators use anchors to share
labels and settings) but every node they expand to is counted: one :class:`NodeBudget` per file
(``MAX_NODES``, across all its documents) and, when the caller passes one, one per repository load
(``MAX_NODES_PER_LOAD``), which defeats alias "billion laughs" bombs spread over documents or files. Every
value's position is recorded so validation errors can say ``file:line:column`` — except inside an alias
expansion, whose values take the position of the anchor (one entry, not one per expanded node).

``load_documents(text, filename)`` returns a list of :class:`Document` (data + positions) or raises
:class:`YamlError` carrying the position of the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_DOCUMENTS = 1000
MAX_NODES = 200_000  # per file (all its documents), after alias expansion
MAX_NODES_PER_LOAD = 2_000_000  # per repository load (all its files), after alias expansion
MAX_DEPTH = 64

Path_ = tuple[Any, ...]

_ALLOWED_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:timestamp",  # kept as the original string
}


# libyaml's parser when PyYAML was built with it (same safe composer, ~10x faster), else the pure-Python one.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(Exception):
    def __init__(self, message: str, line: int = 1, column: int = 1, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint


@dataclass
class Document:
    data: Any
    line: int  # where the document starts (1-based)
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # value positions
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)  # mapping-key positions

    def position(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Best position for ``path``: the key (if asked and known), else the value, else the nearest parent."""
        p = tuple(path)
        while True:
            if key and p in self.key_positions:
                return self.key_positions[p]
            if p in self.positions:
                return self.positions[p]
            if not p:
                return (self.line, 1)
            p = p[:-1]


class NodeBudget:
    """YAML nodes (after alias expansion) still allowed for a file or a repository load."""

    def __init__(self, limit: int, scope: str) -> None:
        self.limit = limit
        self.left = limit
        self.scope = scope  # "file" or "repository load", for the message

    @property
    def exhausted(self) -> bool:
        return self.left <= 0

    def spend(self, node: Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise YamlError(
                f"the {self.scope} expands to more than {self.limit} YAML nodes",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                "aliases (&anchor / *ref) that multiply content are not allowed to expand this far",
            )


class _Builder:
    def __init__(self, doc: Document, budgets: tuple[NodeBudget, ...]) -> None:
        self.doc = doc
        self.budgets = budgets
        self._built: set[int] = set()  # ids of nodes built once: meeting one again means an alias
        self._scalar = yaml.SafeLoader("")  # only used for its scalar constructors

    def build(self, node: Node, path: Path_, depth: int = 0, record: bool = True) -> Any:
        for budget in self.budgets:
            budget.spend(node)
        if depth > MAX_DEPTH:
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", node.start_mark.line + 1, node.start_mark.column + 1)
        if record:
            self.doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
            if id(node) in self._built:
                record = False  # an alias: its expansion records no positions of its own
            else:
                self._built.add(id(node))
        if node.tag not in _ALLOWED_TAGS:
            raise YamlError(
                f"YAML tag {node.tag!r} is not allowed",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                "manifests use plain YAML: remove the tag",
            )
        if isinstance(node, ScalarNode):
            if node.tag == "tag:yaml.org,2002:timestamp":
                return node.value
            return self._scalar.construct_object(node, deep=True)
        if isinstance(node, SequenceNode):
            return [self.build(child, path + (i,), depth + 1, record) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                kline, kcol = knode.start_mark.line + 1, knode.start_mark.column + 1
                if knode.tag == "tag:yaml.org,2002:merge":
                    raise YamlError("merge keys (<<) are not supported", kline, kcol, "write the keys out")
                if not isinstance(knode, ScalarNode):
                    raise YamlError("mapping keys must be plain scalars", kline, kcol)
                key = self.build(knode, path + ("<key>",), depth + 1, record)
                if not isinstance(key, str):
                    key = str(key) if not isinstance(key, bool) and key is not None else knode.value
                if key in out:
                    first = self.doc.key_positions.get(path + (key,), (kline, kcol))
                    raise YamlError(
                        f"duplicate key {key!r} (first defined at line {first[0]})",
                        kline,
                        kcol,
                        "remove one of the two entries",
                    )
                if record:
                    self.doc.key_positions[path + (key,)] = (kline, kcol)
                out[key] = self.build(vnode, path + (key,), depth + 1, record)
            return out
        raise YamlError(f"unsupported YAML node {type(node).__name__}", node.start_mark.line + 1, 1)


def _mark_error(exc: yaml.YAMLError, text: str = "") -> YamlError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    msg = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    hint = None
    # libyaml (CSafeLoader) does not name the character; look at the source line the error points at.
    src = text.split("\n")[line - 1] if mark is not None and 0 < line <= text.count("\n") + 1 else ""
    at_tab = "\t" in src[: len(src) - len(src.lstrip())] or src[col - 1:col] == "\t"
    if at_tab or "\\t" in problem or "tab" in problem.lower():
        hint = "YAML does not allow tabs for indentation; use spaces"
    elif "mapping values are not allowed" in problem:
        hint = "check the indentation, or quote a value containing ': '"
    elif "could not find expected ':'" in problem:
        hint = "a key is missing its ':' or the indentation is off"
    return YamlError(msg, line, col, hint)


def load_documents(
    data: bytes | str, filename: str = "<string>", load_budget: NodeBudget | None = None
) -> list[Document]:
    """Parse every document in ``data``. Empty documents are skipped.

    ``load_budget`` is shared by all files of one repository load (see :func:`load_budget`)."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise YamlError(f"file is {len(data)} bytes; manifests are limited to {MAX_FILE_BYTES} bytes", 1, 1,
                            "split it into several files")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"file is not valid UTF-8 (byte offset {exc.start})", 1, 1) from None
    else:
        text = data
        if len(text.encode("utf-8")) > MAX_FILE_BYTES:
            raise YamlError(f"file exceeds {MAX_FILE_BYTES} bytes", 1, 1, "split it into several files")
    docs: list[Document] = []
    budgets = (NodeBudget(MAX_NODES, "file"),) + ((load_budget,) if load_budget is not None else ())
    loader = _Loader(text)
    try:
        while loader.check_node():
            if len(docs) >= MAX_DOCUMENTS:
                raise YamlError(f"more than {MAX_DOCUMENTS} documents in one file", 1, 1)
            node = loader.get_node()
            if node is None:
                continue
            doc = Document(data=None, line=node.start_mark.line + 1)
            doc.data = _Builder(doc, budgets).build(node, ())
            if doc.data is None:
                continue
            docs.append(doc)
    except yaml.YAMLError as exc:
        raise _mark_error(exc, text) from None
    except RecursionError:
        raise YamlError("YAML nesting too deep", 1, 1) from None
    finally:
        loader.dispose()
    return docs


def load_budget() -> NodeBudget:
    """A fresh node budget for one repository load (pass it to every :func:`load_documents` of the load)."""
    return NodeBudget(MAX_NODES_PER_LOAD, "repository load")


def _expanded_nodes(node: Node, memo: dict[int, int], depth: int = 0) -> int:
    """How many nodes ``node`` expands to with its aliases followed (memoized per node: shared anchors cost one
    visit), checking depth, tags and merge keys on the way."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if depth > MAX_DEPTH:
        raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", node.start_mark.line + 1, node.start_mark.column + 1)
    if node.tag not in _ALLOWED_TAGS:
        raise YamlError(f"YAML tag {node.tag!r} is not allowed", node.start_mark.line + 1, node.start_mark.column + 1)
    memo[id(node)] = 1  # a recursive alias (not producible by the core schema) counts once
    total = 1
    if isinstance(node, SequenceNode):
        total += sum(_expanded_nodes(child, memo, depth + 1) for child in node.value)
    elif isinstance(node, MappingNode):
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or not isinstance(knode, ScalarNode):
                raise YamlError("mapping keys must be plain scalars (no merge keys)", knode.start_mark.line + 1,
                                knode.start_mark.column + 1)
            total += 1 + _expanded_nodes(vnode, memo, depth + 1)
    memo[id(node)] = total
    return total


def load_data(data: bytes, max_nodes: int = MAX_NODES, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """One YAML document from another machine (a device's status), without positions: composed by libyaml, its
    expansion counted against ``max_nodes`` *before* anything is constructed, then built by the safe constructor.
    ~5x cheaper than :func:`load_documents` for the thousands of documents a fleet report reads."""
    if len(data) > max_bytes:
        raise YamlError(f"document is {len(data)} bytes (limit {max_bytes})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"not valid UTF-8 (byte offset {exc.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # Without an anchor or a tag nothing can expand or construct anything but the core types: the node count
        # is bounded by the size, which is bounded above. Otherwise count every node an alias expands to.
        count = 0 if "&" not in text and "!" not in text else _expanded_nodes(node, {})
        if count > max_nodes:
            raise YamlError(f"the document expands to {count} YAML nodes (limit {max_nodes})", 1, 1,
                            "aliases (&anchor / *ref) that multiply content are not allowed to expand this far")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _mark_error(exc, text) from None
    except RecursionError:
        raise YamlError("YAML nesting too deep", 1, 1) from None
    finally:
        loader.dispose()
