"""``modelfleet completion bash|zsh|fish``: the bash script, sourced in a real bash, completes through click's
COMP_WORDS/COMP_CWORD protocol by calling the real ``modelfleet`` back."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests._cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``modelfleet`` that runs this checkout (the completion script calls it by name)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "modelfleet"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m reconciler.cli "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))


def complete(script: Path, env: dict[str, str], *words: str) -> list[str]:
    """What bash offers after ``words`` (the last one is being completed)."""
    argv = " ".join(f"'{w}'" for w in words)
    body = (f"source {script}\nCOMP_WORDS=({argv})\nCOMP_CWORD={len(words) - 1}\n"
            "_modelfleet_completion modelfleet\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", body], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return [line for line in p.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_choices(tmp_path: Path, shell_env: dict[str, str]) -> None:
    r = run_cli("completion", "bash")
    assert r.code == 0 and "_MODELFLEET_COMPLETE=bash_complete" in r.out
    script = tmp_path / "modelfleet.bash"
    script.write_text(r.out)
    assert complete(script, shell_env, "modelfleet", "roll") == ["rollout"]
    assert set(complete(script, shell_env, "modelfleet", "rollout", "")) == {
        "abort", "pause", "promote", "resume", "status", "watch"}
    assert complete(script, shell_env, "modelfleet", "rollout", "pro") == ["promote"]
    assert "--dry-run" in complete(script, shell_env, "modelfleet", "rollout", "promote", "--")
    assert set(complete(script, shell_env, "modelfleet", "validate", "--format", "")) == {
        "table", "github", "json", "yaml"}
    assert complete(script, shell_env, "modelfleet", "fleet", "dr") == ["drift"]  # a lazily loaded command
    # --repo: the answer tells bash to complete directory names itself (`compopt -o dirnames`)
    words = f"modelfleet validate --repo {tmp_path}/flee"
    p = subprocess.run(["modelfleet"], env=dict(shell_env, _MODELFLEET_COMPLETE="bash_complete", COMP_WORDS=words,
                                                COMP_CWORD="3"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.splitlines() == [f"dir,{tmp_path}/flee"], p.stderr


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(shell: str, tmp_path: Path, shell_env: dict[str, str]) -> None:
    r = run_cli("completion", shell)
    assert r.code == 0 and f"_MODELFLEET_COMPLETE={shell}_complete" in r.out.replace('"', "")
    if shell == "zsh" and shutil.which("zsh"):
        script = tmp_path / "_modelfleet"
        script.write_text(r.out)
        p = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit; compinit -u; source {script}"],
                           capture_output=True, text=True, env=shell_env, timeout=60)
        assert p.returncode == 0, p.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    r = run_cli("completion", "tcsh")
    assert r.code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in r.err
