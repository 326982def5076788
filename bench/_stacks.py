"""The ``stacks`` section of ``bench_serving.py``: our HTTP layer against other Python HTTP stacks carrying the
same request handler, each in a process of its own, in alternating rounds of the same run.

- ``modelfleet``: ``modelfleet serve --threads 1`` (asyncio ``Protocol`` + httptools on uvloop, ``serving/http/http1.py``);
- ``granian_rsgi`` / ``granian_asgi``: Granian, a Rust HTTP server (hyper on tokio) calling Python, with its own
  RSGI interface and with ASGI — the "Rust-based ASGI server" issue 17 asks us to measure against;
- ``uvicorn_asgi``: uvicorn with httptools and uvloop, a raw ASGI app (no framework);
- ``stdlib``: ``http.server.ThreadingHTTPServer``.

All of them call the same ``V2App.handle`` on the same tiny model with one intra-op thread (``_stack_apps.py``),
and every answer body is checked to be byte for byte ours before anything is timed. Per candidate: p50 at
concurrency 1 and requests/s at concurrency 16, each with the Python client and with wrk (a C client, which
leaves the server more of the two cores), and CPU per request of the whole process tree (a Rust server runs its
I/O on threads of its own, so the cores each keeps busy are reported too).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _floor
from _loadgen import _request, load, stats

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_CLK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (Granian serves from a child process)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class StackProc:
    """One candidate stack serving the tiny model on a port of its own."""

    def __init__(self, name: str, model: Path) -> None:
        self.name = name
        self.port = _free_port()
        env = {**os.environ, "MF_BENCH_MODEL": str(model), "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}"}
        if name == "modelfleet":
            cmd = [sys.executable, "-m", "reconciler.cli", "serve", str(model), "--name", "tiny", "--threads", "1",
                   "--port", str(self.port)]
        elif name.startswith("granian_"):
            granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
            if not Path(granian).is_file():
                raise RuntimeError("granian is not installed (pip install -e '.[bench]')")
            iface = name.split("_", 1)[1]
            cmd = [granian, "--interface", iface, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                   "--runtime-threads", "1", "--no-ws", "--log-level", "error", f"_stack_apps:{iface}"]
        else:
            cmd = [sys.executable, str(HERE / "_stack_apps.py"), name.split("_", 1)[0], str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO,
                                     start_new_session=True)
        if not _floor.wait_listening(self.proc, self.port, 60):
            raise RuntimeError(f"{name} did not start: {self.stop()[-300:]}")

    def cpu_s(self) -> float:
        return _tree_cpu_s(self.proc.pid)

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""


STACKS = ("modelfleet", "granian_rsgi", "granian_asgi", "uvicorn_asgi", "stdlib")


def _case(stack: StackProc, req: bytes, conc: int, seconds: float) -> dict[str, float]:
    c0, t0 = stack.cpu_s(), time.perf_counter()
    samples = load(stack.port, req, conc, seconds)
    cpu, wall = stack.cpu_s() - c0, time.perf_counter() - t0
    return {**stats(samples, seconds), "cpu_us_per_req": round(cpu / max(1, len(samples)) * 1e6, 1),
            "cores_busy": round(cpu / wall, 2)}


def _wrk_case(stack: StackProc, script: Path, conc: int, seconds: float) -> dict[str, float]:
    c0, t0 = stack.cpu_s(), time.perf_counter()
    w = _floor.wrk_latency(stack.port, script, seconds, conc=conc)
    cpu, wall = stack.cpu_s() - c0, time.perf_counter() - t0
    return {**w, "cpu_us_per_req": round(cpu / max(1, w["rps"] * seconds) * 1e6, 1), "cores_busy": round(cpu / wall, 2)}


def stacks(cache: Path, model_bytes: bytes, probe: dict[str, Any], rounds: int = 3,
           seconds: float = 2.0) -> dict[str, Any]:
    """The candidates on the tiny model (binary tensors), alternating round by round; medians and ratios to ours."""
    model = cache / "stacks-tiny.onnx"
    model.write_bytes(model_bytes)
    procs: dict[str, StackProc] = {}
    out: dict[str, Any] = {"rounds": rounds, "seconds": seconds}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for name in STACKS:
            try:
                procs[name] = StackProc(name, model)
            except RuntimeError as exc:  # a stack that is not installed must not lose the others' numbers
                out[name] = {"error": str(exc)}
        ours = procs["modelfleet"]
        expected = _floor.fetch(ours.port, _request(ours.port, "tiny", probe, True)).partition(b"\r\n\r\n")[2]
        for name, p in procs.items():
            got = _floor.fetch(p.port, _request(p.port, "tiny", probe, True)).partition(b"\r\n\r\n")[2]
            if got != expected:
                raise RuntimeError(f"{name} answered {got[:80]!r}, not our {expected[:80]!r}")
        script = _floor.wrk_script(_request(ours.port, "tiny", probe, True), cache / "stacks-wrk.lua")
        have_wrk = shutil.which("wrk") is not None
        order = list(procs)
        for i in range(rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                p = procs[name]
                req = _request(p.port, "tiny", probe, True)
                r = runs.setdefault(name, {})
                r.setdefault("c1", []).append(_case(p, req, 1, seconds))
                r.setdefault("c16", []).append(_case(p, req, 16, seconds))
                if have_wrk:  # a C client leaves the server more of the two cores than the Python one
                    r.setdefault("wrk_c1", []).append(_wrk_case(p, script, 1, seconds))
                    r.setdefault("wrk_c16", []).append(_wrk_case(p, script, 16, seconds))
    finally:
        for p in procs.values():
            p.stop()
    for name, cases in runs.items():
        out[name] = {case: {f: round(sorted(x[f] for x in rs)[len(rs) // 2], 2) for f in rs[0]}
                     for case, rs in cases.items()}
    ours_m = out.get("modelfleet", {})
    for name in runs:
        if name != "modelfleet" and "c16" in ours_m:
            m = out[name]
            m["rps_c16_vs_ours"] = round(m["c16"]["rps"] / ours_m["c16"]["rps"], 2)
            m["p50_c1_vs_ours"] = round(m["c1"]["p50_us"] / ours_m["c1"]["p50_us"], 2)
            m["cpu_per_req_c16_vs_ours"] = round(m["c16"]["cpu_us_per_req"] / ours_m["c16"]["cpu_us_per_req"], 2)
            if "wrk_c16" in m:
                m["rps_wrk_c16_vs_ours"] = round(m["wrk_c16"]["rps"] / ours_m["wrk_c16"]["rps"], 2)
                m["p50_wrk_c1_vs_ours"] = round(m["wrk_c1"]["p50_us"] / ours_m["wrk_c1"]["p50_us"], 2)
    return out
