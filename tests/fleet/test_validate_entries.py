"""No input silently ignored: entries that are not manifests, generated per case (they cannot live in this
repository's own Git tree), validated as a directory and as a Git revision.

Errors: a symlink (to a file or a folder), a submodule (gitlink), a FIFO where a manifest belongs, an empty
manifest file. Warnings (exit 0, exit 1 with ``--strict``): other files under the manifest folders, hidden
files there, and modelfleet manifests outside the manifest folders. Each names the file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.fleet.manifests import load_git, read_dir
from reconciler.fleet.repository import NonRegular
from tests._cli import run_cli
from tests.fleet.test_validate_corpus import CORPUS, git_commit_all, make_repo

DEVICE = b"apiVersion: modelfleet/v1\nkind: Device\nmetadata: {name: dev-2}\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def make(repo: Path) -> None:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).symlink_to(target)

    return make


def linked_folder(repo: Path) -> None:
    outside = repo.parent / "elsewhere"
    outside.mkdir()
    (outside / "dev-2.yaml").write_bytes(DEVICE)
    (repo / "devices" / "more").symlink_to(outside, target_is_directory=True)


def submodule_checkout(repo: Path) -> None:
    sub = repo / "models" / "vendor"
    sub.mkdir()
    (sub / ".git").write_text("gitdir: ../../.git/modules/vendor\n")
    (sub / "m.yaml").write_bytes(DEVICE)


def write(rel: str, content: bytes) -> Callable[[Path], None]:
    def make(repo: Path) -> None:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(content)

    return make


@dataclass
class Case:
    name: str
    make: Callable[[Path], None]
    file: str  # the path the diagnostic must name
    expect: str
    error: bool = True
    modes: tuple[str, ...] = ("dir", "git")


CASES = [
    Case("symlink_to_etc_passwd", symlink("models/x.yaml", "/etc/passwd"), "models/x.yaml", "a symbolic link"),
    Case("symlink_to_a_valid_manifest", symlink("deployments/copy.yaml", "../models/tiny.yaml"),
         "deployments/copy.yaml", "a symbolic link (to '../models/tiny.yaml')"),
    Case("symlink_fleet_yaml", lambda r: (os.replace(r / "fleet.yaml", r / "real.yaml"),
                                          (r / "fleet.yaml").symlink_to("real.yaml")), "fleet.yaml", "a symbolic link"),
    Case("symlinked_folder", linked_folder, "devices/more", "a symbolic link"),
    # A submodule's checkout on disk (its gitlink in a commit: test_submodule_gitlink_in_git_mode).
    Case("submodule_checkout", submodule_checkout, "models/vendor", "a submodule", modes=("dir",)),
    Case("empty_file", write("devices/empty.yaml", b""), "devices/empty.yaml", "empty manifest file"),
    Case("readme_in_models", write("models/README.md", b"# models\n"), "models/README.md",
         "not a manifest: only .yaml/.yml files are read", error=False),
    Case("json_manifest", write("devices/dev-2.json", b'{"apiVersion": "modelfleet/v1"}'), "devices/dev-2.json",
         "not a manifest", error=False),
    Case("hidden_draft", write("deployments/.draft.yaml", DEVICE), "deployments/.draft.yaml",
         "hidden files are read", error=False),
    Case("manifest_at_the_root", write("deployment.yaml", DEVICE), "deployment.yaml",
         "outside fleet.yaml, models/, deployments/ and devices/", error=False),
    Case("manifest_in_a_misspelt_folder", write("device/dev-2.yml", DEVICE), "device/dev-2.yml",
         "is not read", error=False),
]


@pytest.mark.parametrize("case,mode", [(c, m) for c in CASES for m in c.modes],
                         ids=[f"{c.name}-{m}" for c in CASES for m in c.modes])
def test_entry_is_reported(case: Case, mode: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "models/.gitkeep", b"")  # a placeholder is not input: no diagnostic
    case.make(repo)
    if mode == "git":
        args = ["--rev", git_commit_all(repo), str(repo)]
        where = f"{case.file}:1:1: {'error' if case.error else 'warning'}: "
    else:
        args = [str(repo)]
        where = f"{repo / case.file}:1:1: {'error' if case.error else 'warning'}: "
    r = run_cli("validate", *args)
    assert "Traceback" not in r.text
    assert r.code == (1 if case.error else 0), r.text
    hits = [m for m in r.text.splitlines() if m.startswith(where) and case.expect in m[len(where):]]
    assert hits, f"expected {where}…{case.expect!r}; got:\n{r.text}"
    assert ".gitkeep" not in r.text
    if not case.error:
        assert run_cli("validate", "--strict", *args).code == 1


def test_submodule_gitlink_in_git_mode(tmp_path: Path) -> None:
    """A real gitlink (mode 160000) in the commit tree: the device would see no files, so it is an error."""
    repo = make_repo(tmp_path, "models/.gitkeep", b"")
    head = git_commit_all(repo)
    _git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},models/vendor")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "submodule")
    r = run_cli("validate", "--rev", "HEAD", str(repo))
    assert r.code == 1, r.text
    assert f"models/vendor:1:1: error: a submodule (commit {head[:12]}) where a manifest belongs" in r.err
    result = load_git(repo, "HEAD")
    assert [d.file for d in result.errors] == ["models/vendor"]


def test_fifo_is_reported_and_never_opened(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "models/.gitkeep", b"")
    os.mkfifo(repo / "models" / "pipe.yaml")  # opening it for reading would block forever
    assert read_dir(repo)["models/pipe.yaml"] == NonRegular("special file")
    r = run_cli("validate", str(repo))
    assert r.code == 1 and "models/pipe.yaml:1:1: error: a special file where a manifest belongs" in r.err


def test_files_outside_that_are_not_manifests_are_not_input(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "README.md", b"# fleet\n")
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "validate.yml").write_text("on: push\njobs: {}\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "notes.yaml").write_text("title: notes\n")
    (repo / "docs" / "link.yaml").symlink_to("/etc/passwd")
    for args in ([str(repo)], ["--rev", git_commit_all(repo), str(repo)]):
        r = run_cli("validate", "--strict", *args)
        assert r.code == 0 and "warning:" not in r.text, r.text


def test_base_corpus_has_no_diagnostics_at_all() -> None:
    r = run_cli("validate", "--strict", str(CORPUS / "base"))
    assert r.code == 0 and "warning:" not in r.text, r.text
