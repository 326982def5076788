"""Safe, bounded YAML loading with source positions.

Manifests come from a Git repository anyone with push access can write to, so loading is defensive:
only the core schema (no language-specific tags, no ``<<`` merges), duplicate keys rejected, file size,
document count and node count (which defeats alias "billion laughs" bombs) bounded. Every value's position
is recorded so validation errors can say ``file:line:column``.

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
MAX_NODES = 200_000  # per file, after alias expansion
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


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0
        self._scalar = yaml.SafeLoader("")  # only used for its scalar constructors

    def build(self, node: Node, path: Path_, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlError(
                f"document expands to more than {MAX_NODES} nodes",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                "aliases (&anchor / *ref) that multiply content are not allowed to expand this far",
            )
        if depth > MAX_DEPTH:
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", node.start_mark.line + 1, node.start_mark.column + 1)
        self.doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
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
            return [self.build(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                kline, kcol = knode.start_mark.line + 1, knode.start_mark.column + 1
                if knode.tag == "tag:yaml.org,2002:merge":
                    raise YamlError("merge keys (<<) are not supported", kline, kcol, "write the keys out")
                if not isinstance(knode, ScalarNode):
                    raise YamlError("mapping keys must be plain scalars", kline, kcol)
                key = self.build(knode, path + ("<key>",), depth + 1)
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
                self.doc.key_positions[path + (key,)] = (kline, kcol)
                out[key] = self.build(vnode, path + (key,), depth + 1)
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


def load_documents(data: bytes | str, filename: str = "<string>") -> list[Document]:
    """Parse every document in ``data``. Empty documents are skipped."""
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
    loader = _Loader(text)
    try:
        while loader.check_node():
            if len(docs) >= MAX_DOCUMENTS:
                raise YamlError(f"more than {MAX_DOCUMENTS} documents in one file", 1, 1)
            node = loader.get_node()
            if node is None:
                continue
            doc = Document(data=None, line=node.start_mark.line + 1)
            doc.data = _Builder(doc).build(node, ())
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
