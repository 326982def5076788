"""deploy/container/Dockerfile: hadolint-clean, and the facts docs/install.md promises about the image.

Static checks and the HEALTHCHECK's command run as written against a real inference server (fast, everywhere);
tests/packaging/test_image.py builds the image with podman and runs the agent in it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.config import DEFAULT_PORT, DEFAULT_STATE_DIR
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from tests._serving_fixtures import PROBE_V1, spec
from tests.packaging.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "container" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(instrs) if word == "FROM")
    return instrs[last_from:]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_multi_stage_slim_non_root_with_the_state_dir_as_a_volume() -> None:
    instrs = instructions(DOCKERFILE)
    froms = [args for word, args in instrs if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    base = next(args for word, args in instrs if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.\d+-slim-\w+", base)
    stage = final_stage(instrs)
    user = [args for word, args in stage if word == "USER"]
    assert user == ["10001:10001"]
    assert json.loads(next(args for word, args in stage if word == "VOLUME")) == [DEFAULT_STATE_DIR]
    assert json.loads(next(args for word, args in stage if word == "ENTRYPOINT")) == ["modelfleet", "agent", "run"]
    # multi-arch: no instruction names an architecture or downloads anything; no curl/wget in the image
    text = "\n".join(f"{word} {args}" for word, args in instrs).lower()
    for word in ("amd64", "x86_64", "aarch64", "arm64", "armv7", "curl", "wget", "https://"):
        assert word not in text, word
    assert set(re.findall(r"http://[^\s'\"]+", text)) == {f"http://127.0.0.1:{DEFAULT_PORT}/v2/health/ready"}


@pytest.fixture
def ready_server() -> Iterator[InferenceServer]:
    registry = ModelRegistry()
    assert registry.apply(spec(probe=PROBE_V1)).ok
    server = InferenceServer(registry)
    server.start()
    yield server
    server.stop()
    registry.close()


def test_the_healthcheck_command_passes_on_a_ready_server_and_fails_without_one(
        ready_server: InferenceServer) -> None:
    stage = final_stage(instructions(DOCKERFILE))
    health = next(args for word, args in stage if word == "HEALTHCHECK")
    options, _, cmd = health.partition(" CMD ")
    assert "--start-period=" in options
    argv = json.loads(cmd)
    assert argv[0] == "python"  # the image's interpreter: no curl needed
    env_line = next(args for word, args in stage if word == "ENV")
    image_env = dict(tok.split("=", 1) for tok in shlex.split(env_line))
    assert image_env["MODELFLEET_HEALTH_URL"].endswith("/v2/health/ready")

    def check(url: str) -> int:
        env = {**os.environ, "MODELFLEET_HEALTH_URL": url}
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode

    port = ready_server.port
    assert check(f"http://127.0.0.1:{port}/v2/health/ready") == 0
    assert check(f"http://127.0.0.1:{port}/v2/models/absent/ready") != 0  # a 404 is unhealthy
    ready_server.stop()
    assert check(f"http://127.0.0.1:{port}/v2/health/ready") != 0


def test_the_build_stage_copies_all_a_wheel_needs(tmp_path: Path) -> None:
    """What the build stage COPYs (and the .dockerignore lets through) builds a complete wheel on its own."""
    instrs = instructions(DOCKERFILE)
    build_stage = instrs[:max(i for i, (word, _) in enumerate(instrs) if word == "FROM")]
    sources = [src for word, args in build_stage if word == "COPY" for src in args.split()[:-1]]
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore and set(sources) == allowed
    context = tmp_path / "context"
    for src in sources:
        if (REPO_ROOT / src).is_dir():
            shutil.copytree(REPO_ROOT / src, context / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(REPO_ROOT / src, context / src)
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(context)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    assert "reconciler/fleet/_schemas/agentconfig.schema.json" in names and "reconciler/cli/main.py" in names
