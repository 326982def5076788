"""Every broken manifest in tests/corpus/broken gives exit 1 and a file:line message — never a traceback.

A case file starts with ``# path: <where it goes in the repo>`` and ``# expect: <message substring>``; the line
marked ``#<<`` is where the error must be reported (line 1 when unmarked). It is dropped into a copy of the
valid repository tests/corpus/base.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._cli import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted((CORPUS / "broken").glob("*.yaml"))


def make_repo(tmp_path: Path, rel: str, content: bytes) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "base", repo)
    target = repo / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return repo


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_base_repo_is_valid() -> None:
    r = run_cli("validate", str(CORPUS / "base"))
    assert r.code == 0, r.text
    assert "valid:" in r.out


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_broken_manifest(case: Path, tmp_path: Path) -> None:
    text = case.read_text()
    lines = text.splitlines()
    rel = lines[0].removeprefix("# path:").strip()
    expect = lines[1].removeprefix("# expect:").strip()
    marked = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith("#<<")]
    line = marked[0] if marked else 1
    repo = make_repo(tmp_path, rel, text.encode())
    r = run_cli("validate", str(repo))
    assert r.code == 1, r.text
    assert "Traceback" not in r.text
    wanted = f"{repo / rel}:{line}:"
    hits = [m for m in r.err.splitlines() if m.startswith(wanted) and expect in m]
    assert hits, f"expected an error at {wanted} containing {expect!r}; got:\n{r.text}"


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("huge", b"apiVersion: modelfleet/v1\nkind: Device\nmetadata: {name: x}\n" + b"# pad\n" * 200_000,
         "manifests are limited to"),
        ("not_utf8", b"apiVersion: modelfleet/v1\nkind: Device\nmetadata: {name: \xff\xfe}\n", "not valid UTF-8"),
        ("deep", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nest"),
    ],
)
def test_generated_hostile_files(name: str, content: bytes, expect: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, f"devices/{name}.yaml", content)
    r = run_cli("validate", str(repo))
    assert r.code == 1, r.text
    assert "Traceback" not in r.text
    assert any(f"devices/{name}.yaml:" in m and expect in m for m in r.err.splitlines()), r.text


def test_python_tag_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    content = (f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n"
               f"  name: !!python/object/apply:os.system ['touch {marker}']\n").encode()
    repo = make_repo(tmp_path, "devices/evil.yaml", content)
    r = run_cli("validate", str(repo))
    assert r.code == 1
    assert not marker.exists()


def test_cli_subprocess_exit_codes_and_formats(tmp_path: Path) -> None:
    case = CORPUS / "broken" / "dangling_model.yaml"
    repo = make_repo(tmp_path, "deployments/x.yaml", case.read_bytes())
    exe = [sys.executable, "-m", "reconciler.cli"]
    gh = subprocess.run(exe + ["validate", "--format", "github", str(repo)], capture_output=True, text=True)
    assert gh.returncode == 1
    assert f"::error file={repo}/deployments/x.yaml,line=7," in gh.stdout
    assert "Traceback" not in gh.stderr
    js = subprocess.run(exe + ["validate", "--format", "json", str(repo)], capture_output=True, text=True)
    assert js.returncode == 1
    import json

    doc = json.loads(js.stdout)
    assert doc["valid"] is False
    assert any(d["line"] == 7 and "unknown model" in d["message"] for d in doc["diagnostics"])
    usage = subprocess.run(exe + ["validate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    ok = subprocess.run(exe + ["validate", str(CORPUS.parent.parent / "fleet-repo-example")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
