"""`make test` on a fresh machine: the one script that installs the system tools (scripts/install-deps.sh) is what
`make test`, `make demo` and .ci/run call, the README names what to install before `make` can run, and the
script installs only what is missing, says what to do when it cannot, and never writes a git identity.

The whole path, on a fresh minimal Debian, is scripts/check-fresh-debian.sh (too slow for the suite; its last
result is in docs/install.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-deps.sh"


def test_make_test_make_demo_and_ci_call_the_one_script() -> None:
    make = subprocess.run(["make", "-n", "test", "demo"], cwd=ROOT, capture_output=True, text=True, check=True,
                          env=dict(os.environ, MAKEFLAGS=""))
    lines = make.stdout.splitlines()
    assert "scripts/install-deps.sh test" in lines and "scripts/install-deps.sh demo" in lines
    assert lines.index("scripts/install-deps.sh test") < next(i for i, x in enumerate(lines) if "pytest" in x)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^scripts/install-deps\.sh$", ci, re.M) and ci.rstrip().endswith("make test")
    assert "apt-get" not in ci and "git config" not in ci
    assert "git config" not in (ROOT / "Makefile").read_text() and "git config" not in SCRIPT.read_text()


def test_readme_names_the_prerequisites_and_what_make_test_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"^sudo apt-get install ([^#\n]*)", readme, re.M)
    assert first, "README.md: the `sudo apt-get install …` line scripts/check-fresh-debian.sh runs"
    assert first.group(1).split() == ["make", "git"]
    installs = set(re.findall(r"need\+=\(([\w.-]+)\)", SCRIPT.read_text()))
    named = {p for p in installs if re.search(rf"\b{re.escape(p)}\b", readme)}
    # git-daemon-sysvinit only on a system whose git has no daemon; make and git come first (above)
    assert installs - named <= {"git-daemon-sysvinit", "python3"}, installs - named


def _shims(tmp: Path, tools: list[str], uid: int) -> Path:
    """A PATH holding only ``tools`` (each exits 0; git's --exec-path is this directory), an ``id`` that says
    ``uid``, and an apt-get that logs its arguments."""
    bindir = tmp / "bin"
    bindir.mkdir()
    for tool in [*tools, "id", "apt-get"]:
        body = {"id": f"echo {uid}", "apt-get": f'echo "apt-get $*" >> {tmp}/apt.log', "git": 'echo "${0%/*}"',
                "sudo": 'while case $1 in *=*) export "$1" ;; *) false ;; esac; do shift; done; "$@"',
                }.get(tool, "exit 0")
        (bindir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / tool).chmod(0o755)
    return bindir


def _run(tmp: Path, *args: str, tools: list[str], uid: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    bindir = _shims(tmp, tools, uid)
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bindir), "HOME": str(tmp), **env})


def _installed(tmp: Path) -> list[str]:
    update, install = (tmp / "apt.log").read_text().splitlines()
    assert update == "apt-get update -q"
    return install.split()[install.split().index("-q") + 1:]


ALL = ["make", "git", "git-daemon", "python3", "ssh-keygen", "gpg", "sshd", "nginx", "fcgiwrap", "openssl", "tinyproxy",
       "systemd-analyze", "chromium", "prometheus", "promtool", "curl", "ps", "podman", "runc", "debootstrap", "gcc"]


def test_nothing_missing_means_no_apt_get(tmp_path: Path) -> None:
    if not Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        pytest.skip("no CA bundle on this machine: the script would install ca-certificates")
    r = _run(tmp_path, tools=ALL)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not (tmp_path / "apt.log").exists()


def test_missing_tools_installed_with_apt_get_as_root(tmp_path: Path) -> None:
    r = _run(tmp_path, tools=["git", "git-daemon", "ssh-keygen"])
    assert r.returncode == 0, r.stderr
    wanted = _installed(tmp_path)
    assert {"make", "python3", "python3-venv", "gnupg", "chromium", "prometheus", "curl", "procps"} <= set(wanted)
    assert not {"git", "git-daemon-sysvinit", "openssh-client"} & set(wanted)
    assert "install-deps: missing: " in r.stderr


def test_demo_needs_less(tmp_path: Path) -> None:
    r = _run(tmp_path, "demo", tools=["git", "ssh-keygen"])
    assert r.returncode == 0, r.stderr
    assert set(_installed(tmp_path)) - {"ca-certificates"} == {"make", "python3", "python3-venv"}


def test_not_root_uses_sudo(tmp_path: Path) -> None:
    r = _run(tmp_path, tools=[*(t for t in ALL if t != "curl"), "sudo"], uid=1000)
    assert r.returncode == 0, r.stderr
    assert _installed(tmp_path) == ["curl"] and "+ sudo apt-get update" in r.stderr


def test_not_root_without_sudo_says_what_to_run(tmp_path: Path) -> None:
    r = _run(tmp_path, tools=[t for t in ALL if t != "curl"], uid=1000)
    assert r.returncode == 1 and not (tmp_path / "apt.log").exists()
    assert "not root and no sudo" in r.stderr and "apt-get install -y curl" in r.stderr


def test_skip_system_deps(tmp_path: Path) -> None:
    r = _run(tmp_path, tools=[], uid=1000, SKIP_SYSTEM_DEPS="1")
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.parametrize("outcome", [0, 1])
def test_make_test_removes_its_temp_dir_when_the_tests_pass_and_keeps_it_when_they_fail(tmp_path: Path,
                                                                                         outcome: int) -> None:
    """Left behind, a run's ~1 GB filled the disk CI installs on (pip: ENOSPC). The recipe runs as written, with a
    python in a stand-in venv that writes into --basetemp as pytest would and exits ``outcome``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text("#!/bin/sh\nfor a; do case $a in --basetemp=*) base=${a#--basetemp=} ;; esac; done\n"
                    f'echo "$base" > {tmp_path}/base; mkdir -p "$base/popen-gw0" && touch "$base/popen-gw0/x"\n'
                    f"exit {outcome}\n")
    fake.chmod(0o755)
    stamp = venv / ".installed"
    stamp.touch()
    os.utime(stamp, (4_000_000_000, 4_000_000_000))  # newer than its prerequisites: no install
    r = subprocess.run(["make", "--no-print-directory", "test", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, SKIP_SYSTEM_DEPS="1", MAKEFLAGS=""))
    base = Path((tmp_path / "base").read_text().strip())
    assert base.name.startswith("mft.")
    if outcome == 0:
        assert r.returncode == 0, r.stderr
        assert not base.exists()
    else:
        assert r.returncode != 0
        assert (base / "popen-gw0" / "x").is_file() and f"the tests' files are kept in {base}" in r.stderr
        shutil.rmtree(base)
