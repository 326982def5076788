"""The built wheel, installed into a fresh venv without extras, is a working ``modelfleet`` (docs/install.md).

Every command runs from the installed console script, with no PYTHONPATH and from a directory outside the
checkout, so the package, its schemas and its dependencies can only come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from reconciler.devkit import modelgen
from tests._agent_fixtures import ENDPOINT, IN_DIM, MODEL, OUT_DIM, World, read_status
from tests.packaging.conftest import REPO_ROOT, Dist, clean_env

INSTALL_DOC = REPO_ROOT / "docs" / "install.md"
MISSING_OPENVINO = "OpenVINO runtime requested{by} but not installed: pip install 'modelfleet[openvino]'"


def run(dist: Dist, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(dist.modelfleet), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_build_gives_a_wheel_with_the_schemas_and_an_sdist_with_the_sources(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    assert "reconciler/fleet/_schemas/deployment.schema.json" in names
    assert "reconciler/cli/main.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "modelfleet = reconciler.cli.main:main" in zipfile.ZipFile(dist.wheel).read(entry_points).decode()
    assert not [n for n in names if n.startswith("tests/")]
    members = {m.split("/", 1)[1] for m in tarfile.open(dist.sdist).getnames() if "/" in m}
    assert {"pyproject.toml", "schemas/deployment.schema.json", "reconciler/cli/main.py"} <= members
    # capture's C ring writer: its source in the sdist, compiled into the wheel (make test brings a compiler),
    # and the wheel tagged for this interpreter and platform
    assert {"hatch_build.py", "reconciler/capture/sealer/_ringput.c"} <= members
    assert [n for n in names if n.startswith("reconciler/capture/sealer/_ringput.") and n.endswith(".so")]
    assert not dist.wheel.name.endswith("-none-any.whl"), dist.wheel.name


def test_the_wheels_capture_rings_are_written_by_the_c_writer(dist: Dist, tmp_path: Path) -> None:
    code = ("import numpy as np, os; from reconciler.capture.sealer import ring; "
            "from reconciler.capture.sealer.rows import layout_of; "
            "x = {'x': np.ones((1, 4), np.float32)}; r, fd = ring.RowRing.create(layout_of(x, {})); "
            "print(ring.NATIVE, r._writer is not None, r.put(1.0, 1, x, {}))")
    r = subprocess.run([str(dist.python), "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "1"]


def test_the_installed_package_is_the_wheel_and_has_no_extras(dist: Dist, tmp_path: Path) -> None:
    code = ("import json, importlib.util, reconciler; from reconciler.fleet.schemas import schema_dir; "
            "print(json.dumps([reconciler.__file__, str(schema_dir()), importlib.util.find_spec('openvino') is None]))")
    r = subprocess.run([str(dist.python), "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    module_file, schemas, no_openvino = json.loads(r.stdout)
    assert Path(module_file).is_relative_to(dist.site_packages())
    assert Path(schemas) == dist.site_packages() / "reconciler" / "fleet" / "_schemas"
    assert no_openvino


def test_validate_and_render_from_the_wheel(dist: Dist, tmp_path: Path) -> None:
    repo = shutil.copytree(REPO_ROOT / "fleet-repo-example", tmp_path / "fleet")
    r = run(dist, ["validate"], cwd=repo)
    assert r.returncode == 0, r.stderr
    assert "0 errors" in r.stdout
    r = run(dist, ["render", "--device", "cam-austin-01"], cwd=repo)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)
    (repo / "deployments" / "broken.yaml").write_text("apiVersion: modelfleet/v1\nkind: Deployment\nspec: {}\n")
    r = run(dist, ["validate"], cwd=repo)
    assert r.returncode == 1 and "broken.yaml" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_serve_answers_ready_from_the_wheel(dist: Dist, tmp_path: Path) -> None:
    (tmp_path / "scorer.onnx").write_bytes(modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1))
    proc = subprocess.Popen([str(dist.modelfleet), "serve", "scorer.onnx", "--port", "0"], cwd=tmp_path,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving scorer (onnxruntime) at http://127.0.0.1:"), line + proc.stderr.read()
        base = line.split(" at ", 1)[1].split("/v2/", 1)[0]
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"{base}/v2/models/scorer/ready", timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_serve_without_the_openvino_extra_names_it_in_one_line(dist: Dist, tmp_path: Path) -> None:
    xml, _bin = modelgen.to_openvino_ir(modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1), tmp_path, "scorer")
    r = run(dist, ["serve", xml.name, "--port", "0"], cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == f"error: {xml.name}: {MISSING_OPENVINO.format(by='')}\n"
    assert r.stderr in INSTALL_DOC.read_text()  # docs/install.md shows this very line


def _two_deployments(world: World) -> None:
    """``det-all`` runs the ONNX Runtime variant; ``det-ov`` the same version on OpenVINO only."""
    world.commit_fleet("1.0.0")
    model = yaml.safe_load((world.upstream.work / f"models/{MODEL}.yaml").read_text())
    model["spec"]["versions"][0]["variants"].append(
        {"name": "ov", "runtime": "openvino", "targets": [f"{MODEL}/1.0.0/model.onnx"]})
    dep = yaml.safe_load((world.upstream.work / "deployments/det-all.yaml").read_text())
    dep["metadata"]["name"] = "det-ov"
    dep["spec"].update(serveAs=f"{ENDPOINT}-ov", runtime={"preferences": ["openvino"], "threads": 1})
    world.commit_raw({f"models/{MODEL}.yaml": yaml.safe_dump(model, sort_keys=False),
                      "deployments/det-ov.yaml": yaml.safe_dump(dep, sort_keys=False)}, "det-ov on OpenVINO")


def _endpoints(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    assert status is not None
    return {e["name"]: e for e in status["status"]["endpoints"]}


def test_agent_once_from_the_wheel_reports_a_missing_extra_as_a_condition(dist: Dist, tmp_path: Path) -> None:
    world = World(tmp_path / "world").start()
    try:
        world.publish("1.0.0")
        world.commit_fleet("1.0.0")
        config = world.agent_config(tmp_path / "dev")
        r = run(dist, ["agent", "once", "--config", str(config)], cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _endpoints(read_status(tmp_path / "dev"))[ENDPOINT]["state"] == "Serving"

        _two_deployments(world)
        r = run(dist, ["agent", "once", "--config", str(config)], cwd=tmp_path)
    finally:
        world.stop()
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: device not converged"
    endpoints = _endpoints(read_status(tmp_path / "dev"))
    assert endpoints[ENDPOINT]["state"] == "Serving"  # the ONNX Runtime endpoint keeps serving
    failed = endpoints[f"{ENDPOINT}-ov"]
    assert failed["state"] == "Failed"
    assert failed["message"] == "RuntimeNotInstalled: " + MISSING_OPENVINO.format(by=" by deployment det-ov")
    assert f"    {failed['message']}\n" in INSTALL_DOC.read_text()


def test_optimize_and_plots_without_their_extras_name_them(dist: Dist, tmp_path: Path) -> None:
    import numpy as np

    model = modelgen.tabular_mlp()
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "mlp.npz", **modelgen.make_sample(model, 8))
    r = run(dist, ["optimize", "mlp.onnx", "--data", "mlp.npz", "--out", "o", "--variants", "ort-fp32,ov-fp32"],
            cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == ("error: building ov-fp32 needs openvino: install the optional extra with "
                                         "`pip install 'modelfleet[optimize]'` (or leave those variants out with "
                                         "--variants)")
    assert not (tmp_path / "o").exists()

    repo = shutil.copytree(REPO_ROOT / "fleet-repo-example", tmp_path / "fleet")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fleet"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    r = run(dist, ["fleet", "drift", "--png", "drift.png"], cwd=repo)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == "error: plots need matplotlib: pip install 'modelfleet[plots]'"


def test_a_grpc_port_without_the_grpc_extra_names_it(dist: Dist, tmp_path: Path) -> None:
    """The base install has no grpcio (docs/install.md: the ``grpc`` extra); asking for a gRPC port says so."""
    (tmp_path / "mm.onnx").write_bytes(modelgen.matmul_model(seed=1))
    r = run(dist, ["serve", "mm.onnx", "--port", "0", "--grpc-port", "0"], cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == ("error: --grpc-port needs gRPC, which is not installed: "
                                         "pip install 'modelfleet[grpc]'")
