"""The folder layout is the architecture: the import contracts hold and no module imports itself in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _lazy_imports() -> list[tuple[str, str]]:
    """(importer, imported) of every ``importlib.import_module("reconciler.…")`` with a literal name: an import
    made when a command runs is still a dependency (grimp sees only import statements)."""
    out = []
    for path in sorted((ROOT / "reconciler").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and node.args[0].value.startswith("reconciler.")
                    and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
                out.append((module, node.args[0].value))
    return out


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("reconciler", cache_dir=None)
    for importer, imported in _lazy_imports():
        graph.add_import(importer=importer, imported=imported)
    # A package's __init__ importing its own modules is not a cycle between parts; drop those edges.
    for module in list(graph.modules):
        for imported in list(graph.find_modules_directly_imported_by(module)):
            if module.startswith(imported + "."):
                graph.remove_import(importer=module, imported=imported)
    assert _cycles(graph) == []


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "reconciler").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 650}
    assert big == {}, f"modules over ~600 lines: {big}"


def test_pure_core_imports_no_runtime() -> None:
    code = ("import sys, reconciler.fleet.manifests, reconciler.fleet.desired, reconciler.fleet.plan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'tuf')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"
