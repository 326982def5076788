"""docs/quickstart.md runs as written: a reader's one terminal, from an empty directory to three devices serving
the model, then a new version rolled out by a push (mechanism: ``run_session`` in tests/_docblocks.py).

The page's commands run unchanged under ``bash`` with ``set -euo pipefail``; only the ports differ from the
page's defaults (the page reads ``GIT_PORT``, ``TUF_PORT`` and ``DEVICE_PORT`` from the environment), so the
test can run next to the rest of the suite. The devices' answers the page prints are checked against ONNX
Runtime running the model file the page generated.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reconciler.serving.runtimes.telemetry import import_onnxruntime
from tests._docblocks import REPO_ROOT, SHELL_LANGS, Block, Sandbox, blocks, run_session

PAGE = REPO_ROOT / "docs" / "quickstart.md"
DEADLINE_S = 240.0  # the page's own waits give up after two minutes each; this bounds the whole (pytest's is 300 s)


def _free_ports_in_a_row(n: int) -> int:
    """A port p with p .. p+n-1 all free on 127.0.0.1 right now, below the kernel's ephemeral range, where the
    port-0 servers of concurrently running tests cannot take one before the page binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randint(10000, max(10001, low - n - 1))
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} free ports in a row")


def _reader(tmp: Path) -> Sandbox:
    """A reader's terminal after step 1: the venv activated (its python and modelfleet first on PATH), a home
    of its own (``fleet status`` caches under ``~/.cache``), git configured with a name, the ports chosen."""
    base = _free_ports_in_a_row(5)  # the Git server, the model server, three devices
    sandbox = Sandbox(tmp, env={
        "GIT_PORT": str(base), "TUF_PORT": str(base + 1), "DEVICE_PORT": str(base + 2),
        "HOME": str(tmp / "home"), "XDG_CACHE_HOME": str(tmp / "home" / ".cache"),
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Quick Start", "GIT_AUTHOR_EMAIL": "ops@example.com",
        "GIT_COMMITTER_NAME": "Quick Start", "GIT_COMMITTER_EMAIL": "ops@example.com"})
    bindir, venv_bin = sandbox.env["PATH"].split(os.pathsep, 1)[0], str(Path(sys.executable).parent)
    sandbox.env["PATH"] = os.pathsep.join([bindir, venv_bin, os.environ.get("PATH", "")])
    return sandbox


def test_quickstart_runs_as_written_and_three_devices_serve(tmp_path: Path) -> None:
    page_blocks = [b for b in blocks(PAGE) if b.lang in SHELL_LANGS or b.action]
    sandbox = _reader(tmp_path)
    session = run_session(sandbox, page_blocks, DEADLINE_S)

    work = tmp_path / "mf-quickstart"
    # Step 7: each of the three devices answered the inference with what the model computes.
    [(_, infer)] = session.outputs_of("for port in")
    answers = [json.loads(line) for line in infer.splitlines() if line.strip()]
    assert len(answers) == 3, infer
    ort = import_onnxruntime()
    session_1_0 = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 16)
    expected = session_1_0.run(None, {"input": x})[0].ravel()
    for answer in answers:
        assert (answer["model_name"], answer["model_version"]) == ("scorer", "1.0.0"), answer
        np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"], dtype=np.float32), expected, rtol=1e-5,
                                   atol=1e-5)

    # The fleet view, before and after the push of 1.1.0: three devices, all ready, all on the version.
    before, after = [out for cmd, out in session.outputs_of("modelfleet fleet status")]
    for text, version in ((before, "1.0.0"), (after, "1.1.0")):
        assert "3 devices: 3 ready, 0 not ready, 0 stale, 0 behind main" in text, text
        rows = [line.split() for line in text.splitlines() if line.startswith("edge-0")]
        assert sorted(r[0] for r in rows) == ["edge-01", "edge-02", "edge-03"], text
        assert all(f"scorer=scorer@{version}" in r for r in rows), text


def test_the_session_runner_catches_what_a_reader_would_hit(tmp_path: Path) -> None:
    """Variables carry from block to block; a failing or unset-variable command, documented output that differs,
    and a server the page leaves running all fail the page."""
    def page(name: str, text: str) -> list[Block]:
        path = tmp_path / f"{name}.md"
        path.write_text(text)
        return blocks(path)

    ok = page("ok", "<!-- doc-test: run -->\n```bash\nx=41\n```\n\n<!-- doc-test: output -->\n```console\n"
                    "$ echo answer $((x + 1))\nanswer 42\n```\n")
    session = run_session(Sandbox(tmp_path / "ok"), ok, 30)
    assert session.outputs_of("echo") == [("echo answer $((x + 1))", "answer 42\n")]
    cases = {
        "unset": ("<!-- doc-test: run -->\n```bash\necho \"$nope\"\n```\n", "failed"),
        "failing": ("<!-- doc-test: run -->\n```bash\nfalse | cat\necho never\n```\n", "failed"),
        "logged": ("<!-- doc-test: run -->\n```bash\necho the-reason > agent.log\nfalse\n```\n",
                   "agent.log:\nthe-reason"),  # the page's own logs are shown with the failure
        "differs": ("<!-- doc-test: output -->\n```console\n$ echo one\ntwo\n```\n", "no counterpart"),
        "left running": ("<!-- doc-test: run -->\n```bash\nsleep 300 > /dev/null 2>&1 &\n```\n", "still running"),
    }
    for name, (text, why) in cases.items():
        with pytest.raises(AssertionError, match=why):
            run_session(Sandbox(tmp_path / name.replace(" ", "-")), page(name.replace(" ", "-"), text), 30, settle=0.5)


def test_wait_for_fleet_gives_up_and_shows_why(tmp_path: Path) -> None:
    """The page's `wait_for_fleet` used to loop forever with `fleet status`'s errors sent to /dev/null: now it
    gives up after two minutes (the clock is sped up here), showing the last output, its error included, and the
    end of each agent's log, and returns non-zero (so the test session, under `set -e`, stops there)."""
    [block] = [b for b in blocks(PAGE) if "wait_for_fleet() {" in b.text]
    definition = block.text[:block.text.rindex("\n}") + 2]  # the function, not the call after it
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "modelfleet"
    fake.write_text("#!/bin/sh\necho 'error: cannot read status branches from git://127.0.0.1:9/fleet.git: "
                    "Connection refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    for i in (1, 2, 3):
        (tmp_path / f"edge-0{i}").mkdir()
        (tmp_path / f"edge-0{i}" / "agent.log").write_text(f"edge-0{i}: SourceAvailable False: connection refused\n")
    script = (f"set -euo pipefail\n{definition}\n"
              "sleep() { SECONDS=$((SECONDS + 30)); }  # two minutes pass in four polls\n"
              "wait_for_fleet\necho never reached\n")
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}"))
    assert r.returncode == 1 and "never reached" not in r.stdout, r.stdout + r.stderr
    assert "not all Ready after two minutes" in r.stderr and "Connection refused" in r.stderr, r.stderr
    assert all(f"edge-0{i}: SourceAvailable False" in r.stderr for i in (1, 2, 3)), r.stderr
