"""The README tour and the operations guide are executable documentation (mechanism: tests/_docblocks.py).

Each registered page runs top to bottom in a sandbox against loopback servers; every ``modelfleet`` command in
any page is parsed against the real CLI. To register another page, add it to PAGES with a setup that prepares
what the page assumes (files, servers) and maps documented paths to the sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import click
import pytest

from reconciler.cli.main import cli
from reconciler.devkit import modelgen
from tests._agent_fixtures import World
from tests._docblocks import REPO_ROOT, SHELL_LANGS, Sandbox, blocks, modelfleet_lines, output_matches
from tests._git_fixtures import free_port


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=doc", "-c", "user.email=doc@example.com", *args], cwd=cwd, check=True,
                   capture_output=True)


@contextmanager
def readme(tmp: Path) -> Iterator[Sandbox]:
    """A fresh clone of modelfleet, as far as the tour needs: fleet-repo-example in a Git repository whose
    ``origin/main`` is one commit behind HEAD (no device has pushed a status branch), and a model file to sign."""
    shutil.copytree(REPO_ROOT / "fleet-repo-example", tmp / "fleet-repo-example")
    _git(tmp, "init", "--quiet", "--initial-branch=main")
    _git(tmp, "add", "-A")
    _git(tmp, "commit", "--quiet", "-m", "base")
    _git(tmp, "update-ref", "refs/remotes/origin/main", "HEAD")
    devices = tmp / "fleet-repo-example" / "devices"
    (devices / "cam-berlin-04.yaml").write_text((devices / "cam-berlin-03.yaml").read_text().replace("03", "04"))
    _git(tmp, "add", "-A")
    _git(tmp, "commit", "--quiet", "-m", "a pull request: one more camera")
    (tmp / "model.onnx").write_bytes(modelgen.matmul_model(16, 4, seed=1))
    yield Sandbox(tmp, env={"XDG_CACHE_HOME": str(tmp / ".cache")})  # `fleet status` caches there, not in ~


@contextmanager
def operations(tmp: Path) -> Iterator[Sandbox]:
    """A fleet (git daemon + TUF over HTTP) the documented config points at, via path and URL mapping."""
    world = World(tmp / "world").start()
    try:
        world.publish("1.0.0")
        world.commit_fleet("1.0.0")
        etc = tmp / "etc"
        etc.mkdir()
        shutil.copy(world.trusted_root, etc / "root.json")
        (tmp / "sandbox").mkdir()
        yield Sandbox(tmp / "sandbox", {
            "/etc/modelfleet": str(etc),
            "/var/lib/modelfleet": str(tmp / "state"),
            "ssh://git@git.example.com/edge/fleet.git": world.git_url,
            "port: 8080": f"port: {free_port()}",
        })
    finally:
        world.stop()


@contextmanager
def privacy(tmp: Path) -> Iterator[Sandbox]:
    """A fleet repository whose last commit changes a capture policy, and a device (agent config + state dir)
    holding three sealed batches of the page's campaign, whose private key is in the sandbox."""
    import base64

    import numpy as np
    import yaml

    from reconciler.capture.policy import parse_policy
    from reconciler.capture.service import CaptureService
    from tests.capture._capture import Campaign

    box = tmp / "sandbox"
    shutil.copytree(REPO_ROOT / "fleet-repo-example", box)  # the sandbox is the fleet repository's checkout
    _git(box, "init", "--quiet", "--initial-branch=main")
    _git(box, "add", "-A")
    _git(box, "commit", "--quiet", "-m", "base")
    _git(box, "update-ref", "refs/remotes/origin/main", "HEAD")
    dep = box / "deployments" / "vibration-anomaly.yaml"
    dep.write_text(dep.read_text().replace("sampleRate: 0.01", "sampleRate: 0.05"))
    _git(box, "commit", "--quiet", "-am", "capture 5 % instead of 1 %")
    campaign = Campaign()
    (box / "vibration-2026q4.key").write_text(base64.b64encode(campaign.private).decode() + "\n")
    section = yaml.safe_load(dep.read_text())["spec"]["capture"]
    section.update(recipient=campaign.recipient, sampleRate=1.0, batch={"records": 50})
    svc = CaptureService(tmp / "state", "gw-berlin-01", background=False)
    svc.configure({"vibration": parse_policy(section)}, models={"vibration": "vibration-anomaly"})
    obs = svc.observer_for("vibration", "2.1.0")
    for row in np.random.default_rng(0).standard_normal((120, 1, 16)).astype(np.float32):
        obs.observe({"input": row}, {}, 0.0)
    svc.drain()
    svc.flush(force=True)
    config = tmp / "etc" / "agent.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": {
        "deviceId": "gw-berlin-01", "stateDir": str(tmp / "state"), "source": {"url": "https://git.example.com/f.git"},
        "tuf": {"trustedRoot": str(tmp / "etc" / "root.json")}}}))
    yield Sandbox(box, {"/media/usb": str(tmp / "usb")}, env={"MODELFLEET_AGENT_CONFIG": str(config)})


@contextmanager
def monitoring(tmp: Path) -> Iterator[Sandbox]:
    """The tiny model and a reference sample under the names docs/monitoring.md uses, and deploy/ (the promtool
    checks)."""
    import numpy as np

    shutil.copytree(REPO_ROOT / "deploy", tmp / "deploy")

    (tmp / "mm.onnx").write_bytes(modelgen.matmul_model(16, 4, seed=1))
    rng = np.random.default_rng(0)
    np.savez(tmp / "s.npz", input=rng.normal(size=(2000, 16)).astype(np.float32), labels=rng.integers(0, 4, 2000))
    yield Sandbox(tmp)


PAGES: dict[str, Callable[[Path], AbstractContextManager[Sandbox]]] = {
    "README.md": readme,
    "docs/operations.md": operations,
    "docs/install.md": operations,
    "docs/privacy.md": privacy,
    "docs/monitoring.md": monitoring,
}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_runs(page: str, tmp_path: Path) -> None:
    shell = [b for b in blocks(REPO_ROOT / page) if b.lang in SHELL_LANGS or b.action]
    assert any(b.action in ("run", "output") for b in shell), f"{page}: no block runs"
    with PAGES[page](tmp_path) as sandbox:
        for block in shell:
            sandbox.run(block)
        if page == "docs/operations.md":
            _state_paths_exist(tmp_path / "state")


def _state_paths_exist(state: Path) -> None:
    """Every ``<stateDir>/name`` the docs mention is where the agent that just ran put it."""
    named = {m for p in _all_pages() for m in re.findall(r"<stateDir>/([\w.-]+)", p.read_text())}
    # made when an OpenVINO model is first compiled, when git first needs an extraCaFile bundle
    on_demand = {"ov-cache", "tls"}
    missing = sorted(n for n in named - on_demand if not (state / n).exists())
    assert not missing, f"the docs name <stateDir>/{missing} but the agent has {sorted(os.listdir(state))}"


def _all_pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _parse(argv: list[str]) -> str | None:
    """Resolve ``modelfleet argv`` to its command and parse the options without running it; None if fine."""
    ctx = cli.make_context("modelfleet", list(argv), resilient_parsing=True)
    cmd: click.Command = cli
    args = list(argv)
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.get_command(ctx, args[0])
        if sub is None:
            return f"no command {args[0]!r}"
        cmd, args = sub, args[1:]
    if any(a in ("-h", "--help") for a in args) or isinstance(cmd, click.Group):
        return None
    try:
        cmd.make_context(cmd.name, args)
    except click.MissingParameter as exc:
        return exc.format_message()
    except click.BadParameter as exc:
        if exc.param is not None and isinstance(exc.param.type, click.Path):
            return None  # a documented path that does not exist here: not what this check is about
        return exc.format_message()
    except click.UsageError as exc:
        return exc.format_message()
    return None


@pytest.mark.parametrize("page", [p.relative_to(REPO_ROOT).as_posix() for p in _all_pages()])
def test_every_documented_command_parses(page: str) -> None:
    problems = [f"{page}:{n}: modelfleet {' '.join(argv)}: {why}"
                for n, argv in modelfleet_lines(REPO_ROOT / page) if (why := _parse(argv))]
    assert not problems, "\n".join(problems)


def test_an_unmarked_block_and_a_drifted_command_fail(tmp_path: Path) -> None:
    """The mechanism itself: nothing is skipped silently, and a missing required option is caught."""
    page = tmp_path / "page.md"
    page.write_text("```sh\nmodelfleet validate .\n```\n\n<!-- doc-test: run -->\n```sh\nmodelfleet repo init tuf/\n```\n")
    unmarked, drifted = blocks(page)
    sandbox = Sandbox(tmp_path / "sb")
    with pytest.raises(AssertionError, match="without a `<!-- doc-test"):
        sandbox.run(unmarked)
    with pytest.raises(AssertionError, match="Missing option '--keys'"):
        sandbox.run(drifted)
    assert _parse(["repo", "init", "tuf/"]) is not None and _parse(["repo", "init", "tuf/", "--keys", "k"]) is None
    assert _parse(["validate", "--no-such-flag"]) is not None and _parse(["nope"]) == "no command 'nope'"
    page.write_text("```sh\nmodelfleet validate . > out.txt 2>&1 &\n```\n")
    assert modelfleet_lines(page) == [(2, ["validate", "."])]  # the shell's redirections are not options
    assert output_matches(["device  x  (pid 1)", "Ready  True"], ["device  y  (pid 2)", "Ready  True  Converged"]) is None
    assert output_matches(["applied  abc"], ["device  y"]) is not None
