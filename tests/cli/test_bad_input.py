"""No user-facing command prints a traceback: every command of the tree, given a repository, file or directory
that does not exist, answers with one ``error: …`` line (or click's usage error) and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from tests._cli import run_cli
from tests.cli._tree import leaves

# Below a regular file: nothing can exist or be created there, whoever runs the tests (root included).
MISSING = "{tmp}/a-file/missing"
# Commands whose required inputs are not "a path" in the generic sense below: the bad input given by hand.
BY_HAND: dict[str, list[str]] = {
    "completion": ["completion", "powershell"],
    "docs cli": ["docs", "cli", "--output", f"{MISSING}/cli.md"],
    "docs generate": ["docs", "generate", "--output", f"{MISSING}/manifests.md"],
    "docs reasons": ["docs", "reasons", "--output", f"{MISSING}/operations.md"],
    "render": ["render", "--device", "cam-1", "--repo", MISSING],
    "tuf-client download": ["tuf-client", "--metadata-dir", MISSING, "--metadata-url", "http://127.0.0.1:9/m",
                            "--target-base-url", "http://127.0.0.1:9/t", "--target-dir", MISSING,
                            "--target-name", "a.onnx", "download"],
    "tuf-client init": ["tuf-client", "--metadata-dir", MISSING, "init", f"{MISSING}/root.json"],
    "tuf-client refresh": ["tuf-client", "--metadata-dir", MISSING, "--metadata-url", "http://127.0.0.1:9/m",
                           "refresh"],
}


def bad_invocation(path: str, cmd: click.Command, tmp: Path) -> list[str]:
    """The command with every required input and every repository/config/file option pointing nowhere."""
    (tmp / "a-file").write_text("")
    return [a.replace("{tmp}", str(tmp)) for a in _bad_invocation(path, cmd)]


def _bad_invocation(path: str, cmd: click.Command) -> list[str]:
    if path in BY_HAND:
        return BY_HAND[path]
    args = path.split()
    for p in cmd.params:
        if isinstance(p, click.Argument):
            if p.required:
                args.append(f"{MISSING}/{p.name}")
            continue
        name = p.opts[0]
        if getattr(p, "hidden", False):
            continue
        if name in ("--repo", "--config", "--data", "--trusted-root", "--key") or p.required:
            if isinstance(p.type, click.IntRange):
                args += [name, str(p.type.min or 1)]
            elif isinstance(p.type, click.Choice):
                args += [name, str(p.type.choices[0])]
            else:
                args += [name, f"{MISSING}/{p.name}"]
    return args


@pytest.mark.parametrize("path", [p for p, _, _ in leaves()])
def test_bad_input_is_one_error_line_not_a_traceback(path: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a Git repository, no fleet: the defaults find nothing either
    monkeypatch.delenv("MODELFLEET_REPO", raising=False)
    monkeypatch.setenv("MODELFLEET_AGENT_CONFIG", f"{tmp_path}/a-file/missing/agent.yaml")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cmd = {p: c for p, c, _ in leaves()}[path]
    argv = bad_invocation(path, cmd, tmp_path)
    r = run_cli(*argv)  # an exception escaping the CLI fails the test here, with its traceback
    assert r.code != 0, f"modelfleet {' '.join(argv)}: exit 0 on bad input:\n{r.text}"
    assert "Traceback" not in r.text
    assert r.err.strip(), f"modelfleet {' '.join(argv)}: a silent failure"
    last = r.err.strip().splitlines()[-1]
    assert last.startswith(("error: ", "Error: ")), f"modelfleet {' '.join(argv)}: {r.err}"


def test_the_walk_covers_every_command() -> None:
    assert len(leaves()) >= 40 and set(BY_HAND) <= {p for p, _, _ in leaves()}


def test_a_bug_is_one_line_too_and_the_traceback_is_there_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception no command expects (a bug: injected here, as no input causes one) still reaches the operator
    as one error line; MODELFLEET_DEBUG=1 lets it through for the developer."""
    import reconciler.cli.explain as explain_mod

    def broken(target: str) -> None:
        raise RuntimeError(f"bug while explaining {target}")

    monkeypatch.setattr(explain_mod, "explain", broken)
    r = run_cli("explain", "Fleet")
    assert r.code == 1 and r.out == ""
    assert r.err == "error: unexpected RuntimeError: bug while explaining Fleet (a bug; MODELFLEET_DEBUG=1 shows where)\n"
    monkeypatch.setenv("MODELFLEET_DEBUG", "1")
    with pytest.raises(RuntimeError, match="bug while explaining Fleet"):
        run_cli("explain", "Fleet")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: a connection is refused


@pytest.mark.parametrize("argv", [["fleet", "status"], ["rollout", "status", "tiny"], ["plan", "--base", "HEAD"]])
def test_git_errors_from_an_unreachable_remote_are_one_line(argv: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """git's fatal message spans lines ("unable to connect to 127.0.0.1:" / "127.0.0.1[0: …]: errno=…", or ssh's
    reason, "Could not read from remote repository." and two lines of boilerplate): the user gets one line that
    keeps the reason."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ssh = tmp_path / "ssh"
    ssh.write_text("#!/bin/sh\necho 'ssh: connect to host fleet.example port 22: Connection refused' >&2\nexit 255\n")
    ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(ssh))
    for url, reason in ((f"git://127.0.0.1:{_closed_port()}/fleet.git", "Connection refused"),
                        ("ssh://git@fleet.example/fleet.git", "connect to host fleet.example port 22")):
        r = run_cli(*argv, "--repo", url)
        assert r.code == 1 and "Traceback" not in r.text, r.text
        assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("error: "), r.err
        assert reason in r.err and "Please make sure" not in r.err, r.err


def test_git_message_joins_lines_and_keeps_the_reason() -> None:
    from reconciler.gitops.verify import git_message

    text = ("fatal: unable to access 'https://git.example.com/fleet.git/':\n  The requested URL returned error: 403\n"
            "hint: see the docs\n\nPlease make sure you have the correct access rights\nand the repository exists.\n"
            "fatal: unable to access 'https://git.example.com/fleet.git/':\n  The requested URL returned error: 403\n")
    assert git_message(text) == ("fatal: unable to access 'https://git.example.com/fleet.git/': The requested URL "
                                 "returned error: 403")
    assert git_message("error: one\nerror: two\n") == "error: one; error: two"
    assert git_message("x" * 50, limit=10) == "…" + "x" * 10
