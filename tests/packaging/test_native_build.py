"""hatch_build.py: the C parts are compiled when a compiler is there, and their absence never fails a build —
a module an earlier build left is removed, so the Python path serves rather than a stale build."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
import hatch_build  # noqa: E402


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for source in hatch_build.EXTENSIONS.values():
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / source, root / source)
    return root


def test_with_a_compiler_the_module_is_built_and_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    built, problems = hatch_build.build_extensions(root)
    assert problems == [] and len(built) == len(hatch_build.EXTENSIONS)
    spec = importlib.util.spec_from_file_location("_ringput", root / built[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "Writer")


@pytest.mark.parametrize("env", [{"CC": "/nonexistent/cc"}, {"CC": "false"}, {"MODELFLEET_NATIVE": "0"}])
def test_without_one_the_build_goes_on_and_removes_a_stale_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   env: dict[str, str]) -> None:
    root = _tree(tmp_path)
    built, _ = hatch_build.build_extensions(root)
    stale = root / built[0]
    assert stale.is_file()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    built, problems = hatch_build.build_extensions(root)
    assert built == [] and not stale.exists()
    [problem] = problems
    assert problem.startswith("modelfleet: reconciler/capture/sealer/_ringput not built, its Python path serves")
    assert next(iter(env.values())) in problem
    assert not list(root.rglob("*.tmp"))
