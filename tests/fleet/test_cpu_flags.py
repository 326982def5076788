"""A variant requiring a CPU flag no device reports never matches: `validate` warns at its line."""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.core.cpuflags import REPORTED_CPU_FLAGS
from tests._cli import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def repo_with_flags(tmp_path: Path, flags: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "base", repo)
    model = repo / "models" / "tiny.yaml"
    text = model.read_text()
    old = "- {name: onnx, runtime: onnxruntime, targets: [tiny/1.1.0/model.onnx]}"
    assert old in text
    model.write_text(text.replace(old, old[:-1] + f", requires: {{cpuFlags: [{flags}]}}}}"))
    return repo


def test_an_unreported_cpu_flag_is_a_warning_at_its_line(tmp_path: Path) -> None:
    repo = repo_with_flags(tmp_path, "avx2, avx512vnni")
    r = run_cli("validate", str(repo))
    assert r.code == 0, r.text  # a warning: a newer device may one day report it
    line = next(i for i, t in enumerate((repo / "models" / "tiny.yaml").read_text().splitlines(), 1)
                if "avx512vnni" in t)
    assert f"tiny.yaml:{line}" in r.text and "'avx512vnni'" in r.text and "never matches" in r.text, r.text
    assert "'avx2'" not in r.text
    assert "Traceback" not in r.text


def test_reported_flags_give_no_warning(tmp_path: Path) -> None:
    repo = repo_with_flags(tmp_path, ", ".join(REPORTED_CPU_FLAGS[:4]))
    r = run_cli("validate", str(repo))
    assert r.code == 0 and "never matches" not in r.text, r.text
