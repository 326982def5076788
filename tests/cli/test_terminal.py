"""Colour only on a terminal and never with NO_COLOR; progress bars only on a terminal, on stderr, never in the
output a script reads. Each case runs the real command with its streams on a pseudo-terminal or on pipes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests._fleet_world import commit_version, fleet_servers
from tests.cli._pty import ROOT, modelfleet

ESC = "\x1b["


@pytest.fixture
def broken_fleet(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet"
    shutil.copytree(ROOT / "fleet-repo-example", fleet)
    dep = next((fleet / "deployments").glob("*.yaml"))
    dep.write_text(dep.read_text() + "  bogusField: 1\n")
    return fleet


def test_colour_on_a_terminal_only(broken_fleet: Path, tmp_path: Path) -> None:
    on_tty = modelfleet("validate", "--repo", str(broken_fleet), cwd=tmp_path, tty_out=True, tty_err=True)
    assert on_tty.code == 1
    assert f"{ESC}31m" in on_tty.err and "error:" in on_tty.err  # red level word on the terminal
    piped = modelfleet("validate", "--repo", str(broken_fleet), cwd=tmp_path, tty_out=False, tty_err=False)
    assert piped.code == 1 and "error:" in piped.err and ESC not in piped.err + piped.out
    # stdout a pipe, stderr a terminal: the summary on stderr is coloured, nothing on stdout is
    mixed = modelfleet("validate", "--repo", str(ROOT / "fleet-repo-example"), cwd=tmp_path, tty_out=False,
                       tty_err=True)
    assert mixed.code == 0 and mixed.out.startswith("valid:") and ESC not in mixed.out
    ok_tty = modelfleet("validate", "--repo", str(ROOT / "fleet-repo-example"), cwd=tmp_path, tty_out=True,
                        tty_err=True)
    assert f"{ESC}32m" in ok_tty.out  # green "valid:"


@pytest.mark.parametrize("no_color", ["1", "yes"])
def test_never_with_no_color(no_color: str, broken_fleet: Path, tmp_path: Path) -> None:
    r = modelfleet("validate", "--repo", str(broken_fleet), cwd=tmp_path, tty_out=True, tty_err=True,
                   NO_COLOR=no_color)
    assert r.code == 1 and "error:" in r.err and ESC not in r.err
    r = modelfleet("validate", "--repo", str(tmp_path / "missing"), cwd=tmp_path, tty_out=True, tty_err=True,
                   NO_COLOR=no_color)
    assert r.code == 2 and "error: " in r.err and ESC not in r.err


def test_an_error_line_is_red_on_a_terminal(tmp_path: Path) -> None:
    r = modelfleet("validate", "--repo", str(tmp_path / "missing"), cwd=tmp_path, tty_out=True, tty_err=True)
    assert r.code == 2 and f"{ESC}31m" in r.err and "no such directory" in r.err


def _tuf_repo(tmp_path: Path) -> tuple[Path, Path, Path]:
    tuf, keys = tmp_path / "tuf", tmp_path / "keys"
    init = modelfleet("repo", "init", str(tuf), "--keys", str(keys), cwd=tmp_path, tty_out=False, tty_err=False)
    assert init.code == 0, init.err
    model = tmp_path / "big.onnx"
    model.write_bytes(b"\0" * (24 << 20))
    return tuf, keys, model


def test_repo_add_progress_on_a_terminal_only(tmp_path: Path) -> None:
    tuf, keys, model = _tuf_repo(tmp_path)
    r = modelfleet("repo", "add", str(tuf), str(model), "--path", "m/1", "--keys", str(keys), cwd=tmp_path,
                   tty_out=False, tty_err=True)
    assert r.code == 0, r.err
    assert "signing 1 file(s)" in r.err and "100%" in r.err and "24.0 MiB/24.0 MiB" in r.err
    assert r.err.endswith("\r\x1b[K")  # the bar erased itself
    assert r.out.startswith("added m/1/big.onnx (25165824 bytes") and "\r" not in r.out and ESC not in r.out
    piped = modelfleet("repo", "add", str(tuf), str(model), "--path", "m/2", "--keys", str(keys), cwd=tmp_path,
                       tty_out=False, tty_err=False)
    assert piped.code == 0 and piped.err == "" and piped.out.startswith("added m/2/big.onnx")
    listed = modelfleet("repo", "list", str(tuf), "--format", "json", cwd=tmp_path, tty_out=True, tty_err=True)
    doc = json.loads(listed.out)  # JSON on a terminal: no colour, no progress
    assert sorted(t["path"] for t in doc["targets"]) == ["m/1/big.onnx", "m/2/big.onnx"]


def test_simulate_progress_goes_to_the_terminal_not_into_the_json(tmp_path: Path) -> None:
    w = fleet_servers(tmp_path / "world", git="daemon")
    try:
        w.publish("1.0.0")
        commit_version(w, "1.0.0")
        r = modelfleet("simulate", "--devices", "3", "--repo", w.git_url, "--tuf", w.http.url, "--trusted-root",
                       str(w.trusted_root), "--poll-interval", "1s", "--duration", "4s", "--report-every", "1s",
                       cwd=tmp_path, tty_out=False, tty_err=True)
        assert r.code == 0, r.err[-2000:]
        lines = [json.loads(line) for line in r.out.splitlines()]  # every stdout line is one JSON document
        assert len(lines) >= 3 and lines[-1]["versions"] == {"1.0.0": 3}
        assert "simulating 3 devices" in r.err and "[" in r.err and "Traceback" not in r.err
        piped = modelfleet("simulate", "--devices", "2", "--repo", w.git_url, "--tuf", w.http.url, "--trusted-root",
                           str(w.trusted_root), "--duration", "2s", "--format", "yaml", cwd=tmp_path,
                           tty_out=False, tty_err=False)
        assert piped.code == 0 and "simulating" not in piped.err
        assert piped.out.startswith("---\n") and "versions:" in piped.out
    finally:
        w.stop()


def test_tuf_download_progress_on_a_terminal(tmp_path: Path) -> None:
    from reconciler.distribution.httpserve import StaticServer

    tuf, keys, model = _tuf_repo(tmp_path)
    added = modelfleet("repo", "add", str(tuf), str(model), "--path", "m/1", "--keys", str(keys), cwd=tmp_path,
                       tty_out=False, tty_err=False)
    assert added.code == 0, added.err
    md = tmp_path / "md"
    init = modelfleet("tuf-client", "--metadata-dir", str(md), "init", str(tuf / "metadata" / "1.root.json"),
                      cwd=tmp_path, tty_out=False, tty_err=False)
    assert init.code == 0, init.err
    server = StaticServer(tuf).start()
    try:
        common = ["tuf-client", "--metadata-dir", str(md), "--metadata-url", f"{server.url}/metadata",
                  "--target-base-url", f"{server.url}/targets", "--target-name", "m/1/big.onnx"]
        r = modelfleet(*common, "--target-dir", str(tmp_path / "t1"), "download", cwd=tmp_path, tty_out=False,
                       tty_err=True)
        assert r.code == 0, r.err
        assert "m/1/big.onnx" in r.err and "24.0 MiB/24.0 MiB" in r.err and "100%" in r.err
        piped = modelfleet(*common, "--target-dir", str(tmp_path / "t2"), "download", cwd=tmp_path, tty_out=False,
                           tty_err=False)
        assert piped.code == 0 and piped.err == "" and piped.out == ""
        assert (tmp_path / "t2" / "m%2F1%2Fbig.onnx").stat().st_size == 24 << 20
    finally:
        server.stop()


def test_optimize_progress_counts_its_steps_on_a_terminal(tmp_path: Path) -> None:
    import numpy as np

    from reconciler.devkit import modelgen

    model = modelgen.tabular_mlp(seed=2)
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "mlp.npz", **modelgen.make_sample(model, 64, seed=1))
    r = modelfleet("optimize", str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "mlp.npz"), "--out",
                   str(tmp_path / "out"), "--variants", "ort-fp32,ort-int8-dynamic", "--runs", "5", "--batch", "2",
                   "--format", "json", cwd=tmp_path, tty_out=False, tty_err=True)
    assert r.code == 0, r.err[-2000:]
    assert json.loads(r.out)["model"] == "mlp"  # the report a script reads: untouched by the bar
    assert "optimize: measuring ort-int8-dynamic" in r.err  # the log lines stay
    # the bar counts the steps: the reference, a build and a measure per variant, the second timing
    assert "optimize: measuring ort-int8-dynamic     [" in r.err and " 50%  3/6 " in r.err and "100%  6/6" in r.err


def test_fleet_status_colours_ready_on_a_terminal(tmp_path: Path) -> None:
    from tests._git_fixtures import Upstream
    from tests.rollout.test_cli import fleet_files, report, targets

    up = Upstream(tmp_path / "up")
    up.commit(fleet_files(0), "fleet")
    report(up, new=targets(up))
    args = ("fleet", "status", "--repo", str(up.bare))
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = modelfleet(*args, cwd=tmp_path, tty_out=True, tty_err=True, **cache)
    assert r.code == 0, r.err
    assert f"{ESC}32mTrue{ESC}0m" in r.out and "dev-000" in r.out
    plain = modelfleet(*args, cwd=tmp_path, tty_out=True, tty_err=True, NO_COLOR="1", **cache)
    assert plain.code == 0 and ESC not in plain.out and " True " in plain.out
    def ages_out(text: str) -> str:  # heartbeat ages move between the two runs
        return re.sub(r"\b\d+[smhd]\b", "N", text)

    assert ages_out(plain.out) == ages_out(r.out.replace(f"{ESC}32m", "").replace(f"{ESC}0m", ""))  # same columns
