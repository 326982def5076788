"""The shadow candidate gets only the CPU the live requests leave idle, and live answers never wait for it.

The candidate — real ONNX Runtime and OpenVINO sessions, loaded as the agent loads them — runs in a process of
its own whose every thread is ``SCHED_IDLE`` (an unprivileged agent gets it too) and compares there too: no
thread of the agent works per sample beyond the request path's copy into the ring. A crash there fails the
comparison, not the agent, and a killed agent leaves no candidate behind. A thread lowered for a candidate gets
``SCHED_IDLE`` (else nice 19) and the caller is told what it got. (A candidate that cannot keep up costs samples,
counted, never live answers: tests/shadow/test_shadow_ring.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.agent.shadowproc import CandidateProcess
from reconciler.agent.shadowring import RingMirror
from reconciler.devkit import modelgen
from reconciler.shadow.priority import IDLE, NICE, NORMAL, lower_thread
from reconciler.shadow.spec import ShadowSettings
from tests._agent_fixtures import REPO_ROOT

SETTINGS = ShadowSettings(sample_rate=1.0, min_samples=10_000)


def _wait(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _stat(tid: int) -> list[str]:
    """Fields 3.. of /proc/self/task/<tid>/stat (after the command name): proc(5)'s field n is ``[n - 3]``."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _policy(tid: int) -> int:
    return int(_stat(tid)[41 - 3])


def _cpu_ticks() -> dict[int, int]:
    """utime + stime of every thread of this process, in clock ticks."""
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            f = _stat(int(t))
        except OSError:  # ended meanwhile
            continue
        out[int(t)] = int(f[14 - 3]) + int(f[15 - 3])
    return out


def _one(i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return {"x": np.full((1, 4), float(i), np.float32)}, {"y": np.array([[0.0, 1.0]], np.float32)}


@pytest.mark.parametrize(("want", "policy", "nice"), [(IDLE, os.SCHED_IDLE, 0), (NICE, os.SCHED_OTHER, 19),
                                                      (NORMAL, os.SCHED_OTHER, 0)])
def test_a_lowered_thread_runs_at_the_priority_it_reports(want: str, policy: int, nice: int) -> None:
    go = threading.Event()
    t = threading.Thread(target=go.wait, args=(30,), daemon=True)
    t.start()
    try:
        tid = t.native_id
        assert tid is not None and tid != threading.get_native_id()
        assert lower_thread(tid, want) == want
        assert os.sched_getscheduler(tid) == policy and _policy(tid) == policy
        assert os.getpriority(os.PRIO_PROCESS, tid) == nice
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # the caller is left alone
    finally:
        go.set()
        t.join()


def test_an_unprivileged_agent_gets_idle_priority_too() -> None:
    """Linux lets any thread lower itself to SCHED_IDLE (and not back): the agent need not run as root."""
    code = ("import os, threading; from reconciler.shadow.priority import lower_thread\n"
            "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
            "r = {}; go = threading.Event()\n"
            "def w():\n"
            "    go.wait(); tid = threading.get_native_id(); r['policy'] = os.sched_getscheduler(tid)\n"
            "    try: os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0)); r['back'] = True\n"
            "    except PermissionError: r['back'] = False\n"
            "t = threading.Thread(target=w); t.start(); got = lower_thread(t.native_id); go.set(); t.join()\n"
            "print(got, r['policy'], r['back'], os.geteuid())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    got, policy, back, euid = out.stdout.split()
    assert euid != "0" and (got, int(policy), back) == (IDLE, os.SCHED_IDLE, "False"), out.stdout


def _candidate(runtime: str, tmp_path: Path) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
    onnx_bytes = modelgen.small_cnn(seed=0)
    probe = modelgen.make_probe(onnx_bytes)
    if runtime == "openvino":
        pytest.importorskip("openvino")
        xml, bin_ = modelgen.to_openvino_ir(onnx_bytes, tmp_path, "model")
        return {"runtime": runtime, "precision": "fp32"}, [xml.read_bytes(), bin_.read_bytes()], probe
    return {"runtime": runtime, "precision": "fp32"}, [onnx_bytes], probe


def _feeds(probe: dict[str, Any]) -> dict[str, np.ndarray]:
    t = probe["inputs"][0]
    return {t["name"]: np.asarray(t["data"], np.float32).reshape(t["shape"])}


def _proc_threads(pid: int) -> dict[int, tuple[int, int]]:
    """(policy, utime + stime ticks) of every thread of process ``pid``."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        out[int(t)] = (int(f[41 - 3]), int(f[14 - 3]) + int(f[15 - 3]))
    return out


def _live(probe: dict[str, Any]) -> dict[str, np.ndarray]:
    t = probe["outputs"][0]
    return {t["name"]: np.asarray(t["data"], np.float32).reshape(t["shape"])}


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    os.environ.get("MODELFLEET_SKIP_OPENVINO") == "1", reason="OpenVINO disabled"))])
def test_the_candidate_runs_and_compares_in_its_own_process_at_idle_priority(runtime: str, tmp_path: Path) -> None:
    """The agent's only per-sample work is the request path's copy into the ring: no thread of the agent runs,
    pickles or compares per sample (the old mirror's worker thread did, and cost the live p99)."""
    part, blobs, probe = _candidate(runtime, tmp_path)
    proc, reason, message = CandidateProcess.start(part, blobs, probe, {}, None)
    assert proc is not None, (reason, message)
    feeds, live = _feeds(probe), _live(probe)
    m = RingMirror("ep", "1", "2", SETTINGS, proc)  # as the agent runs it
    try:
        assert proc.priority == IDLE and m.snapshot()["priority"] == IDLE
        assert proc.memory_mb > sum(len(b) for b in blobs) / (1 << 20)  # the process's whole RSS
        me = threading.get_native_id()
        before, mine = _proc_threads(proc.pid), _cpu_ticks()
        for _ in range(25):  # 1000 samples, in bursts the ring holds
            for _ in range(40):
                m.observe(feeds, live, 0.001)
            _wait(m.idle)
        after, ours = _proc_threads(proc.pid), _cpu_ticks()
        snap = m.snapshot()
        assert snap["requests"] == 1000 and snap["agreement"] == 100.0 and snap["dropped"] == 0, snap
        # every thread of the candidate's process, those its runtime started too, runs at SCHED_IDLE
        assert after and {policy for policy, _ in after.values()} == {os.SCHED_IDLE}, after
        spent = sum(t for _, t in after.values()) - sum(t for _, t in before.values())
        others = sum(t - mine.get(tid, 0) for tid, t in ours.items() if tid != me)
        assert spent >= 10, "1000 inferences and comparisons ran in the candidate's process"
        assert others <= 2, f"the agent's other threads spent {others} ticks on 1000 samples (the child {spent})"
    finally:
        m.stop()
        proc.close()


def test_a_candidate_whose_process_dies_fails_the_comparison() -> None:
    part, blobs, probe = _candidate("onnxruntime", Path("."))
    proc, reason, message = CandidateProcess.start(part, blobs, probe, {}, None)
    assert proc is not None, (reason, message)
    verdicts: list[Any] = []
    m = RingMirror("ep", "1", "2", SETTINGS, proc, on_verdict=verdicts.append)
    try:
        m.observe(_feeds(probe), _live(probe), 0.001)
        _wait(m.idle)
        os.kill(proc.pid, signal.SIGSEGV)  # what a runtime crashing on a live input does
        _wait(lambda: bool(verdicts))
        assert verdicts[0].failed and verdicts[0].reason == "ShadowCandidateError", verdicts
        assert "the shadow process ended (killed by SIGSEGV)" in verdicts[0].message, verdicts
        m.observe(_feeds(probe), _live(probe), 0.001)  # final: nothing more is handed over, the offer counted
        snap = m.snapshot()
        assert (snap["offered"], snap["requests"], snap["errors"]) == (2, 2, 1), snap
    finally:
        m.stop(timeout=0)
        proc.close()


def test_a_candidate_that_does_not_load_or_check_is_refused_with_the_reason() -> None:
    part, blobs, probe = _candidate("onnxruntime", Path("."))
    proc, reason, message = CandidateProcess.start(part, [b"not a model"], probe, {}, None)
    assert proc is None and reason == "LoadFailed" and "cannot load the model" in message
    wrong = {**probe, "outputs": [{**o, "data": [v + 1.0 for v in o["data"]]} for o in probe["outputs"]]}
    proc, reason, message = CandidateProcess.start(part, blobs, wrong, {}, None)
    assert proc is None and reason == "ProbeMismatch" and "logits" in message, (reason, message)


def test_the_candidate_process_ends_when_the_agent_is_killed(tmp_path: Path) -> None:
    """kill -9 of the agent leaves no candidate behind: the child reads end-of-file and exits."""
    part, blobs, probe = _candidate("onnxruntime", tmp_path)
    (tmp_path / "model.onnx").write_bytes(blobs[0])
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    code = ("import json, sys, time; from pathlib import Path; from reconciler.agent.shadowproc import CandidateProcess\n"
            f"d = Path({str(tmp_path)!r})\n"
            "proc, reason, message = CandidateProcess.start({'runtime': 'onnxruntime'}, [(d / 'model.onnx').read_bytes()],"
            " json.loads((d / 'probe.json').read_text()), {}, None)\n"
            "print(proc.pid, flush=True); time.sleep(120)")
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        assert _proc_threads(child)  # running
        agent.kill()
        agent.wait()

        def gone() -> bool:
            try:
                with open(f"/proc/{child}/stat") as fh:
                    return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # ended, waiting for init to reap it
            except OSError:
                return True

        _wait(gone)
    finally:
        agent.kill()
        agent.wait()
