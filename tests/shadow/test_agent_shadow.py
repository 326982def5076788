"""Shadow evaluation on real agents: git daemon, TUF over HTTP, ONNX Runtime (and OpenVINO) sessions, KServe v2
requests, the device's signed status read back by `modelfleet rollout status` / `promote`.

A candidate that agrees reaches >= 99 % and `promote` passes (first writing `shadowPassed`, then the device serves
it); one that disagrees on ~20 % of inputs is refused with the agreement named; one that crashes or returns NaN on
live inputs never serves and is reported; a device without room reports it and keeps serving; `switch:
onAgreement` switches the device itself (and survives a restart); serving workers with batching mirror too, and
every answer a client gets is the serving version's; data capture beside a shadow seals only live answers, each
sampling on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.capture.batch import open_batch
from reconciler.devkit import modelgen
from reconciler.fleet.schemas import validator
from tests._agent_fixtures import ENDPOINT, IN_DIM, MODEL, OUT_DIM, REPO_ROOT, World, wait_for, which_version
from tests._git_fixtures import env
from tests.capture._capture import Campaign, wait_until

DEPLOYMENT = "det-all"
MIN_SAMPLES = 300


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0")
    yield w
    w.stop()


def shadow_deployment(switch: str = "afterGate", **extra: Any) -> dict[str, Any]:
    shadow = {"sampleRate": 1.0, "minSamples": MIN_SAMPLES, "switch": switch, **extra}
    return {"rollout": {"from": "1.0.0", "steps": [{"name": "all", "percent": 100}], "shadow": shadow}}


def start(world: World, tmp_path: Path, *, switch: str = "afterGate", agent_extra: dict[str, Any] | None = None,
          deployment: dict[str, Any] | None = None, files: dict[str, str] | None = None) -> Agent:
    dev = tmp_path / "dev"
    dep = shadow_deployment(switch)
    dep.update(deployment or {})
    fleet = files or world.fleet_files("1.1.0", deployment=dep)
    world.commit_raw({**fleet, **world.provision_identity(dev)}, "det 1.1.0 in shadow beside 1.0.0")
    cfg = world.agent_config(dev, status=True, extra=agent_extra)
    agent = Agent(load_agent_config(cfg))
    agent.boot()
    return agent


def send(url: str, rows: np.ndarray, batch: int = 10) -> np.ndarray:
    """Infer ``rows`` in requests of ``batch`` rows; the answers' ``output`` rows, in order."""
    answers = []
    for i in range(0, len(rows), batch):
        x = rows[i:i + batch].astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/{ENDPOINT}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            (out,) = json.loads(resp.read())["outputs"]
        answers.append(np.asarray(out["data"], np.float32).reshape(out["shape"]))
    return np.concatenate(answers)


def answers_of(world: World, version: str, x: np.ndarray) -> np.ndarray:
    """What the published ``version`` answers for ``x`` (its own ONNX Runtime session over the built file)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(world.root / "build" / version / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x.astype(np.float32)})[0]


def shadow_of(agent: Agent, offered: int | None = None) -> dict[str, Any]:
    """The endpoint's shadow section after the mirror caught up and a pass ran (validated against the schema)."""
    sup = agent.c.shadow
    m = sup.mirrors.get(ENDPOINT)
    if m is not None:
        if offered is not None:
            wait_for(lambda: m.snapshot()["offered"] >= offered, 30, what=f"{offered} requests mirrored")
        wait_for(m.idle, 30, what="the shadow queue drained")
    agent.reconcile_once()
    doc = agent.status_document()
    assert not list(validator("DeviceStatus").iter_errors(doc))
    (ep,) = [e for e in doc["status"]["endpoints"] if e["name"] == ENDPOINT]
    return ep


def modelfleet(world: World, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args, "--repo", world.git_url], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env=env(XDG_CACHE_HOME=str(tmp_path / ".cache"), PYTHONPATH=str(REPO_ROOT),
                                  MODELFLEET_INSECURE_SKIP_VERIFY="1"))


def pushed(agent: Agent) -> None:
    assert agent.c.status_writer.flush(30), "status not pushed"


def rows(n: int, seed: int = 3, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, IN_DIM)) * scale


def test_agreeing_candidate_passes_promote_then_serves(world: World, tmp_path: Path) -> None:
    world.publish("1.1.0", bias=2e-3, noise=5e-4)  # "retrained": the same model with small noise
    agent = start(world, tmp_path)
    try:
        ep = shadow_of(agent)
        assert ep["version"] == "1.0.0" and ep["state"] == "Serving"
        sh = ep["shadow"]
        assert (sh["version"], sh["state"], sh["samples"]) == ("1.1.0", "Comparing", 0), sh
        assert sh["memoryMB"] is not None and sh["estimatedMemoryMB"] > 0
        # the candidate runs in a process of its own, every thread of it at SCHED_IDLE
        pid = agent.c.shadow.runs[ENDPOINT].backend.pid
        assert sh["priority"] == "idle" and pid != os.getpid()
        assert {os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{pid}/task")} == {os.SCHED_IDLE}
        send(agent.c.url, rows(400))
        sh = shadow_of(agent, offered=40)["shadow"]
        assert sh["state"] == "Agreeing" and sh["samples"] == 400 and sh["agreement"] >= 99.0, sh
        assert sh["errors"] == sh["nanOutputs"] == sh["dropped"] == 0
        assert sh["latencyMs"]["p50"] > 0 and sh["latencyMs"]["liveP99"] > 0
        assert sh["outputs"]["output"]["maxAbsError"] > 0
        metrics = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
        lines = [ln for ln in metrics.splitlines() if ln.startswith("modelfleet_shadow")]
        assert f'modelfleet_shadow_samples_total{{candidate="1.1.0",endpoint="{ENDPOINT}"}} 400.0' in lines, lines
        assert 'modelfleet_shadow_state{candidate="1.1.0",endpoint="detector",state="Agreeing"} 1.0' in lines
        assert which_version(agent.c.url, world) == "1.0.0"  # the candidate never answered (this one is mirrored)
        pushed(agent)

        st = modelfleet(world, tmp_path, "rollout", "status", DEPLOYMENT, "--format", "json")
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        gate = next(g for g in doc["gates"] if g["name"] == "minShadowAgreement")
        assert doc["phase"] == "Ready" and gate["passed"] and gate["value"] >= 99.0, doc
        assert doc["devices"][0]["shadow"]["state"] == "Agreeing" and doc["shadow"]["pending"]
        assert doc["devices"][0]["shadow"]["mirrored"] == 100.0 and not doc["devices"][0]["shadow"]["stopped"]
        table = modelfleet(world, tmp_path, "rollout", "status", DEPLOYMENT)
        assert "Shadow (1): dev-1 (Agreeing, 400 samples" in table.stdout, table.stdout

        p = modelfleet(world, tmp_path, "rollout", "promote", DEPLOYMENT)
        assert p.returncode == 0 and "shadow of det-all 1.1.0 passed at step 0" in p.stdout, p.stdout + p.stderr
        ep = shadow_of(agent)  # the next pass: the device serves the candidate
        assert ep["version"] == "1.1.0" and "shadow" not in ep
        assert which_version(agent.c.url, world) == "1.1.0"
        assert agent.c.shadow.runs == {} and agent.journal.shadows == {}
        assert not Path(f"/proc/{pid}").exists()  # the candidate's process ended with the comparison
    finally:
        agent.close()


def test_disagreeing_candidate_is_refused_with_its_agreement_named(world: World, tmp_path: Path) -> None:
    world.publish("1.1.0", noise=0.08)  # changes the arg-max of ~20 % of the rows
    agent = start(world, tmp_path)
    try:
        shadow_of(agent)
        send(agent.c.url, rows(600))
        sh = shadow_of(agent, offered=60)["shadow"]
        assert sh["state"] == "Disagreeing" and sh["reason"] == "ShadowDisagreement", sh
        assert 70.0 < sh["agreement"] < 90.0
        pushed(agent)
        p = modelfleet(world, tmp_path, "rollout", "promote", DEPLOYMENT)
        assert p.returncode == 3, p.stdout + p.stderr
        assert "minShadowAgreement" in p.stderr and f"lowest agreement {sh['agreement']:.2f}% (dev-1" in p.stderr
        assert which_version(agent.c.url, world) == "1.0.0"
    finally:
        agent.close()


def _model(nodes: list[Any], inits: list[Any], out_shape: list[int]) -> bytes:
    graph = helper.make_graph(nodes, "shadow-test", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   [-1, IN_DIM])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    return modelgen._finish(graph, "tests.shadow")


def _weights() -> Any:
    w = np.random.default_rng(1).standard_normal((IN_DIM, OUT_DIM)).astype(np.float32) / np.float32(np.sqrt(IN_DIM))
    return numpy_helper.from_array(w, "W")


def nan_on_large_inputs() -> bytes:
    """``input @ W`` plus ``0 × sqrt(3 - x)`` summed per row: finite on the probe, NaN for rows with an x > 3."""
    return _model([helper.make_node("MatMul", ["input", "W"], ["xw"]),
                   helper.make_node("Sub", ["three", "input"], ["d"]),
                   helper.make_node("Sqrt", ["d"], ["s"]),
                   helper.make_node("ReduceSum", ["s", "axes"], ["r"], keepdims=1),
                   helper.make_node("Mul", ["r", "zero"], ["z"]),
                   helper.make_node("Add", ["xw", "z"], ["output"])],
                  [_weights(), numpy_helper.from_array(np.float32(3.0).reshape(()), "three"),
                   numpy_helper.from_array(np.array([1], np.int64), "axes"),
                   numpy_helper.from_array(np.float32(0.0).reshape(()), "zero")], [-1, OUT_DIM])


def crashes_beyond_batch_two() -> bytes:
    """``input @ W`` reshaped to [2, 4]: passes its probe (batch 2), raises on any other batch."""
    return _model([helper.make_node("MatMul", ["input", "W"], ["xw"]),
                   helper.make_node("Reshape", ["xw", "shape"], ["output"])],
                  [_weights(), numpy_helper.from_array(np.array([2, OUT_DIM], np.int64), "shape")], [-1, OUT_DIM])


@pytest.mark.parametrize("kind", ["nan", "crash"])
def test_a_candidate_that_fails_in_shadow_never_serves_and_is_reported(world: World, tmp_path: Path,
                                                                         kind: str) -> None:
    world.publish("1.1.0", model=nan_on_large_inputs() if kind == "nan" else crashes_beyond_batch_two())
    agent = start(world, tmp_path, switch="onAgreement")  # even a self-switching device never serves it
    try:
        assert shadow_of(agent)["shadow"]["state"] == "Comparing"
        send(agent.c.url, rows(100, scale=2.0))
        ep = shadow_of(agent, offered=10)
        sh = ep["shadow"]
        want = "ShadowNonFiniteOutput" if kind == "nan" else "ShadowCandidateError"
        assert (sh["state"], sh["reason"]) == ("Failed", want), sh
        assert ep["version"] == "1.0.0" and ep["state"] == "Serving" and which_version(agent.c.url, world) == "1.0.0"
        assert ENDPOINT not in agent.c.shadow.runs  # unloaded
        failures = agent.status_document()["status"]["failures"]
        assert [(f["version"], f["reason"].split(":")[0]) for f in failures] == [("1.1.0", want)]
        for _ in range(2):  # held back: not loaded again, still reported, never applied
            assert shadow_of(agent)["shadow"]["state"] == "Failed" and ENDPOINT not in agent.c.shadow.runs
        assert which_version(agent.c.url, world) == "1.0.0"
        pushed(agent)
        st = json.loads(modelfleet(world, tmp_path, "rollout", "status", DEPLOYMENT, "--format", "json").stdout)
        assert st["phase"] == "Failed" and st["devices"][0]["state"] == "failed", st
    finally:
        agent.close()


def test_a_device_without_room_reports_it_and_keeps_serving(world: World, tmp_path: Path) -> None:
    world.publish("1.1.0", bias=2e-3)
    agent = start(world, tmp_path, agent_extra={"shadow": {"maxMemoryMB": 1}})
    try:
        ep = shadow_of(agent)
        sh = ep["shadow"]
        assert (sh["state"], sh["reason"]) == ("Refused", "ShadowNoMemory"), sh
        assert "shadow.maxMemoryMB 1" in sh["message"] and sh["estimatedMemoryMB"] > 1
        assert ep["state"] == "Serving" and which_version(agent.c.url, world) == "1.0.0"
        assert ENDPOINT not in agent.c.shadow.runs
        pushed(agent)
        st = json.loads(modelfleet(world, tmp_path, "rollout", "status", DEPLOYMENT, "--format", "json").stdout)
        assert st["devices"][0]["state"] == "pending" and "ShadowNoMemory" in st["devices"][0]["reason"]
        assert st["phase"] == "Progressing"
    finally:
        agent.close()


def test_on_agreement_the_device_switches_itself_and_remembers(world: World, tmp_path: Path) -> None:
    world.publish("1.1.0", bias=2e-3, noise=5e-4)
    agent = start(world, tmp_path, switch="onAgreement")
    try:
        shadow_of(agent)
        send(agent.c.url, rows(400))
        shadow_of(agent, offered=40)  # the verdict: agreed, recorded, a full pass asked for
        ep = shadow_of(agent)
        assert ep["version"] == "1.1.0" and ep["shadow"]["state"] == "Switched", ep
        assert ep["shadow"]["samples"] == 400 and ep["shadow"]["agreement"] >= 99.0
        assert which_version(agent.c.url, world) == "1.1.0"
        assert agent.journal.shadow_agreed() == {DEPLOYMENT: "1.1.0"}
    finally:
        agent.close()
    again = Agent(load_agent_config(tmp_path / "dev" / "agent.yaml"))  # restart: the agreement is remembered
    again.boot()
    try:
        ep = shadow_of(again)
        assert ep["version"] == "1.1.0" and ep["shadow"]["state"] == "Switched"
        assert which_version(again.c.url, world) == "1.1.0"
    finally:
        again.close()


def test_serving_workers_with_batching_mirror_to_the_shadow(world: World, tmp_path: Path) -> None:
    world.publish("1.1.0", bias=2e-3, noise=5e-4)
    batching = {"runtime": {"preferences": ["onnxruntime"], "threads": 1,
                            "batching": {"maxBatchSize": 32, "maxQueueDelayMs": 2}}}
    agent = start(world, tmp_path, agent_extra={"serving": {"workers": 2}}, deployment=batching)
    try:
        shadow_of(agent)
        x = rows(400)
        got = send(agent.c.url, x)
        sh = shadow_of(agent, offered=40)["shadow"]
        assert sh["state"] == "Agreeing" and sh["samples"] == 400, sh
        # every answer a client got is the serving version's, none the candidate's (2e-3 apart)
        np.testing.assert_allclose(got, answers_of(world, "1.0.0", x), atol=1e-5)
        assert not np.allclose(got, answers_of(world, "1.1.0", x), atol=1e-3)
        assert which_version(agent.c.url, world) == "1.0.0"
        assert "drift" in shadow_of(agent) or "operational" in shadow_of(agent)  # drift monitoring side by side
    finally:
        agent.close()


def test_capture_beside_a_shadow_seals_only_live_answers_and_each_samples_on_its_own(world: World,
                                                                                     tmp_path: Path) -> None:
    world.publish("1.1.0", bias=5.0)  # the candidate's every output is 5 away from the serving version's
    campaign = Campaign()
    deployment = {"rollout": {"from": "1.0.0", "steps": [{"name": "all", "percent": 100}],
                              "shadow": {"sampleRate": 0.5, "minSamples": 5}},
                  "capture": campaign.section(batch={"records": 5})}  # capture samples every request
    agent = start(world, tmp_path, deployment=deployment)
    try:
        assert shadow_of(agent)["shadow"]["state"] == "Comparing"
        x = rows(40, seed=11)
        got = send(agent.c.url, x, batch=1)
        np.testing.assert_allclose(got, answers_of(world, "1.0.0", x), atol=1e-5)
        sh = shadow_of(agent, offered=40)["shadow"]
        # the shadow drew its own half: some requests mirrored, some sampled out, whatever capture took
        assert sh["offered"] == 40 and 0 < sh["sampledOut"] < 40, sh
        assert sh["requests"] + sh["dropped"] + sh["sampledOut"] == 40 and sh["requests"] > 0, sh
        assert sh["mirrored"] == round(100.0 * sh["requests"] / 40, 2)
        assert 4.9 < sh["outputs"]["output"]["maxAbsError"] < 5.1  # the candidate really ran on them
        svc = agent.c.capture
        # (in the spool once the uploader's first try failed: nothing listens at the destination; until then the
        # uploader holds them in memory)
        wait_until(lambda: svc.counts["captured"] == 40 and svc.counts["sealed"] == 8 and len(svc.spool.list()) == 8,
                   20, "eight sealed batches in the spool")
        batches = sorted((agent.config.state_dir / "capture" / "batches").glob("*.mfcap"))
        opened = [open_batch(p.read_bytes(), campaign.private, name=p.name) for p in batches]
        captured_in = np.concatenate([b.arrays["input"] for b in opened])
        captured_out = np.concatenate([b.arrays["output"] for b in opened])
        assert len(captured_in) == 40 and {b.meta["modelVersion"] for b in opened} == {"1.0.0"}
        # the sealed records are the live requests and the live answers: never the candidate's outputs
        np.testing.assert_allclose(captured_out, answers_of(world, "1.0.0", captured_in), atol=1e-5)
        assert sorted(map(tuple, captured_in.tolist())) == sorted(map(tuple, x.astype(np.float32).tolist()))
        # both keep going: more traffic is compared and captured
        send(agent.c.url, rows(10, seed=12), batch=1)
        wait_until(lambda: svc.counts["captured"] == 50 and svc.counts["sealed"] == 10, 20, "ten sealed batches")
        shadow_of(agent, offered=50)  # (the status numbers refresh once a minute; /metrics reads them now)
        metrics = urllib.request.urlopen(f"{agent.c.url}/metrics", timeout=5).read().decode()
        labels = f'{{candidate="1.1.0",endpoint="{ENDPOINT}"}}'
        assert f"modelfleet_shadow_offered_requests_total{labels} 50.0" in metrics
        ran = float(metrics.split(f"modelfleet_shadow_requests_total{labels} ")[1].split()[0])
        assert sh["requests"] <= ran < 50
    finally:
        agent.close()


@pytest.mark.skipif(os.environ.get("MODELFLEET_SKIP_OPENVINO") == "1", reason="OpenVINO disabled")
def test_openvino_candidate_beside_an_onnx_runtime_version(world: World, tmp_path: Path) -> None:
    """The candidate's only variant is OpenVINO IR: it is compiled in the agent beside the ONNX Runtime version."""
    from reconciler.distribution import tufrepo

    pytest.importorskip("openvino")
    build = world.root / "build" / "1.1.0-ov"
    onnx_bytes = modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1, bias=2e-3, noise=5e-4)
    xml, bin_ = modelgen.to_openvino_ir(onnx_bytes, build, "model")
    (build / "probe.json").write_text(json.dumps(modelgen.make_probe(onnx_bytes)))
    tufrepo.add_targets(world.tuf_dir, [world.keys], [xml, bin_, build / "probe.json"], f"{MODEL}/1.1.0")
    files = world.fleet_files("1.1.0", versions=["1.0.0"], deployment={
        **shadow_deployment(), "runtime": {"preferences": ["onnxruntime", "openvino"], "threads": 1}})
    model = yaml.safe_load(files[f"models/{MODEL}.yaml"])
    model["spec"]["versions"].append({"version": "1.1.0", "variants": [
        {"name": "ov", "runtime": "openvino", "targets": [f"{MODEL}/1.1.0/model.xml", f"{MODEL}/1.1.0/model.bin"]}],
        "probe": {"target": f"{MODEL}/1.1.0/probe.json"}})
    files[f"models/{MODEL}.yaml"] = yaml.safe_dump(model, sort_keys=False)
    agent = start(world, tmp_path, files=files)
    try:
        sh = shadow_of(agent)["shadow"]
        assert (sh["runtime"], sh["variant"], sh["state"]) == ("openvino", "ov", "Comparing"), sh
        send(agent.c.url, rows(400))
        t0 = time.monotonic()
        sh = shadow_of(agent, offered=40)["shadow"]
        assert sh["state"] == "Agreeing" and sh["agreement"] >= 99.0, (sh, time.monotonic() - t0)
        assert which_version(agent.c.url, world) == "1.0.0"
    finally:
        agent.close()
