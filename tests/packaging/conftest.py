"""The wheel and sdist of this checkout, built once per test session, and the wheel installed into a fresh venv.

``python -m build --no-isolation`` builds the sdist and then the wheel *from the sdist* (so a file missing from
the sdist breaks the wheel), with the build backend already in the test venv (no download per build). The venv
is created without pip and without the test venv's site-packages; the test venv's pip installs the wheel and
its declared dependencies into it (``pip --python``) from PyPI or pip's cache, so a dependency missing from
``pyproject.toml`` fails here. It gets no extras: it is also the "device without ``modelfleet[openvino]``".

With pytest-xdist the workers share one build through a lock file in the session's base temp directory.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    venv: Path

    @property
    def modelfleet(self) -> Path:
        return self.venv / "bin" / "modelfleet"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3*/site-packages"))


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the installed CLI: no PYTHONPATH (it would point at this checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def _build(out: Path) -> None:
    dist_dir = out / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist_dir), str(REPO_ROOT)], cwd=out)
    wheel = next(dist_dir.glob("modelfleet-*.whl"))
    venv = out / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=out)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
          "--disable-pip-version-check", str(wheel)], cwd=out)


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Dist:
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent
    out = root / "packaging"
    with open(root / "packaging.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "ready").exists():
            out.mkdir(exist_ok=True)
            _build(out)
            (out / "ready").write_text("")
    wheel = next((out / "dist").glob("modelfleet-*.whl"))
    return Dist(wheel=wheel, sdist=next((out / "dist").glob("modelfleet-*.tar.gz")), venv=out / "venv")
