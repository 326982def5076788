"""Sections of ``bench_serving.py`` for issue 17: per-request overhead against a baseline tree, the peer servers, and
where the server's time goes (py-spy). The camera-sized CNN and adaptive batching are in ``_cnn_sections.py``.

Each section returns a dict for the JSON line; comparisons alternate between candidates round by round and
report medians and ratios, so a busy shared machine slows both sides alike.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import _floor
import _peers
import numpy as np
from _loadgen import _request, load, stats

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.registry import EndpointSpec, ModelRegistry

REPO = Path(__file__).resolve().parents[1]
#: The "before" of ``overhead``: main before the per-request overhead cut (issue 17's orjson codec, bound
#: metric children and batching were in; ``c3daff1`` is main before all of issue 17).
BASELINE_REV = "5b858c3"
TINY = matmul_model(seed=1)
TINY_PROBE = make_probe(TINY, batch=1)
_CLK = os.sysconf("SC_CLK_TCK")


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def baseline_tree(rev: str, cache: Path) -> Path:
    """``git archive REV reconciler`` unpacked under ``cache`` (reused)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    dest = cache / f"tree-{sha[:12]}"
    if not (dest / "reconciler").is_dir():
        data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha, "reconciler"], check=True,
                              capture_output=True).stdout
        tmp = Path(tempfile.mkdtemp(dir=cache))
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


class ServeProc:
    """``modelfleet serve`` of the tree at ``src`` in its own process; its CPU time is read from /proc."""

    def __init__(self, src: Path, model_file: Path, name: str = "tiny", extra: tuple[str, ...] = ()) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", str(model_file), "--name", name, "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=src)  # cwd: sys.path[0] beats PYTHONPATH
        line = self.proc.stdout.readline().decode()  # type: ignore[union-attr]
        m = re.search(r":(\d+)/v2/", line)
        if m is None:
            self.stop()
            raise RuntimeError(f"modelfleet serve from {src} did not start: {line!r}")
        self.port = int(m.group(1))

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLK

    def rss_mb(self) -> float:
        return _peers.Peer("", self.proc, 0, "", Path()).rss_mb()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _run_case(port: int, req: bytes, conc: int, seconds: float, cpu: Callable[[], float] | None) -> dict[str, float]:
    c0 = cpu() if cpu else 0.0
    samples = load(port, req, conc, seconds)
    s = stats(samples, seconds)
    if cpu:
        s["cpu_us_per_req"] = round((cpu() - c0) / max(1, len(samples)) * 1e6, 1)
    return s


def cpu_s() -> float:
    """CPU time of this process, every thread (runtime pools included; the load generator is another process)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def inprocess_p50_us(infer: Callable[[dict[str, np.ndarray]], Any], feeds: dict[str, np.ndarray], n: int,
                     gap_s: float = 0.0) -> float:
    """p50 of ``infer`` back to back, or after a pause of ``gap_s`` each (as a server's runtime sees requests at
    concurrency 1: the CPU ran the client and the kernel in between, the runtime's code and data are cold)."""
    lat = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        infer(feeds)
        lat.append(time.perf_counter() - t0)
    return round(statistics.median(lat) * 1e6, 1)


# --- overhead: this tree vs the baseline tree, tiny model ----------------------------------------------------


def overhead(cache: Path, rev: str, rounds: int = 4, seconds: float = 2.0) -> dict[str, Any]:
    """This tree's and the baseline tree's server, and the floor under both: a bare uvloop + httptools server and
    nginx answering a constant response, each at c=1 with this module's Python client and with wrk."""
    trees = {"baseline": baseline_tree(rev, cache), "current": REPO}
    model = cache / "tiny.onnx"
    model.write_bytes(TINY)
    procs = {k: ServeProc(src, model) for k, src in trees.items()}
    cases = ("json_c1", "binary_c1", "json_c16", "binary_c16")
    encodings = ("json", "binary")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {c: [] for c in cases} for k in procs}
    reg = ModelRegistry()
    assert reg.apply(EndpointSpec("tiny", "1", blobs=[TINY], probe=TINY_PROBE)).ok
    with reg.get("tiny") as m:
        x = np.array(TINY_PROBE["inputs"][0]["data"], np.float32).reshape(TINY_PROBE["inputs"][0]["shape"])
        inproc = inprocess_p50_us(m.backend.infer, {"input": x}, 3000)
        inproc_gap = inprocess_p50_us(m.backend.infer, {"input": x}, 2000, gap_s=0.0002)
    reg.close()
    floors: dict[str, dict[str, Any]] = {"floor_uvloop": {}, "floor_nginx": {}}
    scripts: dict[str, Path] = {}
    try:
        for enc in encodings:
            req = _request(procs["current"].port, "tiny", TINY_PROBE, enc == "binary")
            answer = _floor.fetch(procs["current"].port, req)
            floors["floor_uvloop"][enc] = _floor.FloorProc(answer)
            floors["floor_nginx"][enc] = _floor.NginxFloor(len(answer.partition(b"\r\n\r\n")[2]))
            scripts[enc] = _floor.wrk_script(req, cache / f"wrk-{enc}.lua")
        ports = {**{k: {e: p.port for e in encodings} for k, p in procs.items()},
                 **{k: {e: f.port for e, f in fl.items()} for k, fl in floors.items()}}
        cpus = {**{k: {e: p.cpu_s for e in encodings} for k, p in procs.items()},
                **{k: {e: f.cpu_s for e, f in fl.items()} for k, fl in floors.items()}}
        wrk: dict[str, dict[str, list[dict[str, float]]]] = {k: {e: [] for e in encodings} for k in ports}
        floor_py: dict[str, dict[str, list[dict[str, float]]]] = {k: {e: [] for e in encodings} for k in floors}
        for i in range(rounds):  # ABBA: no candidate always runs first
            for name in (list(ports) if i % 2 == 0 else list(ports)[::-1]):
                for enc in encodings:
                    port, cpu = ports[name][enc], cpus[name][enc]
                    req = _request(port, "tiny", TINY_PROBE, enc == "binary")
                    if name in procs:
                        for conc in (1, 16):
                            runs[name][f"{enc}_c{conc}"].append(_run_case(port, req, conc, seconds, cpu))
                    else:
                        floor_py[name][enc].append(_run_case(port, req, 1, seconds, cpu))
                    wrk[name][enc].append(_floor.wrk_latency(port, scripts[enc], seconds))
        rss = {k: p.rss_mb() for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
        for fl in floors.values():
            for f in fl.values():
                f.stop()
    out: dict[str, Any] = {"baseline_rev": rev, "rounds": rounds, "inprocess_p50_us": inproc,
                           "inprocess_p50_us_after_200us_pause": inproc_gap, "rss_mb": rss,
                           "app_handle": app_cost(trees)}
    fields = ("p50_us", "p99_us", "rps", "cpu_us_per_req")
    for case in cases:
        m = {k: {f: med([r[f] for r in runs[k][case]]) for f in fields} for k in procs}
        out[case] = {**{f"{k}_{f}": v for k, vals in m.items() for f, v in vals.items()},
                     "rps_ratio": ratio(m["current"]["rps"], m["baseline"]["rps"]),
                     "p50_ratio": ratio(m["current"]["p50_us"], m["baseline"]["p50_us"]),
                     "cpu_ratio": ratio(m["current"]["cpu_us_per_req"], m["baseline"]["cpu_us_per_req"])}
        if case.endswith("_c1"):
            enc = case.split("_")[0]
            fl = {k: {f: med([r[f] for r in floor_py[k][enc]]) for f in fields} for k in floors}
            out[case]["current_p50_overhead_us"] = round(m["current"]["p50_us"] - inproc, 1)
            out[case]["baseline_p50_overhead_us"] = round(m["baseline"]["p50_us"] - inproc, 1)
            for k, vals in fl.items():
                out[case].update({f"{k}_{f}": v for f, v in vals.items()})
            # what is ours: the server's p50 above the bare uvloop server's (same loopback, same client)
            out[case]["current_above_floor_us"] = round(m["current"]["p50_us"] - fl["floor_uvloop"]["p50_us"], 1)
            out[case]["baseline_above_floor_us"] = round(m["baseline"]["p50_us"] - fl["floor_uvloop"]["p50_us"], 1)
    out["wrk_c1"] = {}
    for enc in encodings:
        w = {k: {f: med([r[f] for r in wrk[k][enc]]) for f in ("p50_us", "p99_us", "rps", "errors")} for k in wrk}
        out["wrk_c1"][enc] = {**w, "current_p50_overhead_us": round(w["current"]["p50_us"] - inproc, 1),
                              "baseline_p50_overhead_us": round(w["baseline"]["p50_us"] - inproc, 1),
                              "current_above_floor_us": round(w["current"]["p50_us"] - w["floor_uvloop"]["p50_us"], 1)}
    return out


_APP_LOOP = r"""
import json, sys, time
import numpy as np
from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.app.v2app import V2App
m = matmul_model(seed=1)
probe = make_probe(m, batch=1)
reg = ModelRegistry()
assert reg.apply(EndpointSpec("tiny", "1", blobs=[m], probe=probe)).ok
app = V2App(reg)
t = probe["inputs"][0]
raw = np.array(t["data"], np.float32).tobytes()
hdr = json.dumps({"inputs": [{"name": t["name"], "datatype": "FP32", "shape": t["shape"],
                              "parameters": {"binary_data_size": len(raw)}}],
                  "parameters": {"binary_data_output": True}}).encode()
wide = matmul_model(in_dim=256, out_dim=1000, seed=1)
assert reg.apply(EndpointSpec("wide", "1", blobs=[wide], probe=make_probe(wide, batch=1))).ok
x = np.random.default_rng(0).standard_normal(256).astype(np.float32).tolist()
cases = {"binary": ({"inference-header-content-length": str(len(hdr))}, hdr + raw),
         "json": ({}, json.dumps({"inputs": probe["inputs"]}).encode()),
         "json_256_to_1000": ({}, json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256],
                                                          "data": x}]}).encode())}
out = {}
for k, (h, b) in cases.items():
    target = "/v2/models/wide/infer" if k == "json_256_to_1000" else "/v2/models/tiny/infer"
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(2000):
            r = app.handle("POST", target, h, b)
        best = min(best, (time.process_time() - t0) / 2000 * 1e6)
    assert r.status == 200, r.body
    out[k] = best
print(json.dumps(out))
"""


def app_cost(trees: dict[str, Path], rounds: int = 4) -> dict[str, Any]:
    """CPU µs per ``V2App.handle`` of an /infer (decode, run, encode, metrics; no sockets), per tree: the tiny
    model in binary and JSON, and a 256→1000 MatMul in JSON (tensor data the size of a classifier's logits).
    The best of 5 loops of 2,000 in each process, processes of the two trees alternating."""
    kinds = ("binary", "json", "json_256_to_1000")
    runs: dict[str, dict[str, list[float]]] = {k: {c: [] for c in kinds} for k in trees}
    for i in range(rounds):
        for name, src in (list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]):
            r = subprocess.run([sys.executable, "-c", _APP_LOOP], capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(src)}, cwd=src)  # not the caller's tree
            if r.returncode != 0:
                return {"error": f"{name}: {r.stderr.strip()[-300:]}"}
            for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
                runs[name][k].append(v)
    out: dict[str, Any] = {}
    for k in kinds:
        b, c = med(runs["baseline"][k]), med(runs["current"][k])
        out[k] = {"baseline_cpu_us": b, "current_cpu_us": c, "ratio": ratio(c, b)}
    return out


# --- peers: MLflow models serve and MLServer -------------------------------------------------------------------


def peers(cache: Path, rounds: int = 2, seconds: float = 2.0) -> dict[str, Any]:
    model = cache / "tiny.onnx"
    model.write_bytes(TINY)
    ours = ServeProc(REPO, model)
    started: dict[str, Any] = {}
    out: dict[str, Any] = {"model": "tiny MatMul, JSON tensors", "rounds": rounds}
    for name in ("mlflow", "mlserver"):
        peer, why = _peers.start(name, model, cache / "peer-run" / name, threads=1)
        if peer is None:
            out[name] = {"error": why}
        else:
            started[name] = peer
    try:
        reqs: dict[str, tuple[int, bytes, Callable[[], float] | None]] = {
            "modelfleet": (ours.port, _request(ours.port, "tiny", TINY_PROBE, False), ours.cpu_s)}
        for name, peer in started.items():
            reqs[name] = (peer.port, peer.request(TINY_PROBE["inputs"]), None)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {"c1": [], "c16": []} for k in reqs}
        for _ in range(rounds):
            for name, (port, req, _cpu) in reqs.items():
                for conc in (1, 16):
                    runs[name][f"c{conc}"].append(stats(load(port, req, conc, seconds), seconds))
        rss = {"modelfleet": ours.rss_mb(), **{k: p.rss_mb() for k, p in started.items()}}
    finally:
        ours.stop()
        for p in started.values():
            p.stop()
    ref = {c: {f: med([r[f] for r in runs["modelfleet"][c]]) for f in ("p50_us", "rps", "errors")}
           for c in ("c1", "c16")}
    out["modelfleet"] = {**ref, "rss_mb": rss["modelfleet"]}
    for name in started:
        mine = {c: {f: med([r[f] for r in runs[name][c]]) for f in ("p50_us", "rps", "errors")} for c in ("c1", "c16")}
        out[name] = {**mine, "rss_mb": rss[name],
                     "modelfleet_rps_ratio_c16": ratio(ref["c16"]["rps"], mine["c16"]["rps"]),
                     "modelfleet_p50_ratio_c1": ratio(ref["c1"]["p50_us"], mine["c1"]["p50_us"])}
    return out


# --- profile: where the server's time goes ---------------------------------------------------------------------


@contextmanager
def _loaded(port: int, req: bytes, seconds: float) -> Iterator[None]:
    th = threading.Thread(target=load, args=(port, req, 16, seconds))
    th.start()
    try:
        yield
    finally:
        th.join()


def _summarise(raw: Path, top: int = 10) -> dict[str, Any]:
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        self_time[stack.split(";")[-1].split(" (")[0] or "?"] += n
    return {"samples": total, "self_pct": {k: round(100 * v / max(1, total), 1) for k, v in self_time.most_common(top)}}


def profile(cache: Path, rev: str, seconds: float = 6.0) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).is_file():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    model = cache / "tiny.onnx"
    model.write_bytes(TINY)
    out: dict[str, Any] = {"note": "self time by function; HttpConnection._write is the socket send, "
                                   "InferenceServer._run the event loop waiting in epoll"}
    for name, src in (("baseline", baseline_tree(rev, cache)), ("current", REPO)):
        p = ServeProc(src, model)
        try:
            for enc in ("binary", "json"):
                raw = cache / f"profile-{name}-{enc}.txt"
                with _loaded(p.port, _request(p.port, "tiny", TINY_PROBE, enc == "binary"), seconds + 2):
                    time.sleep(1)
                    r = subprocess.run([spy, "record", "-d", str(int(seconds)), "-r", "250", "--format", "raw",
                                        "-o", str(raw), "--pid", str(p.proc.pid), "--nonblocking"],
                                       capture_output=True, text=True)
                out[f"{name}_{enc}_c16"] = (_summarise(raw) if r.returncode == 0 and raw.is_file()
                                            else {"error": r.stderr.strip()[-200:]})
        finally:
            p.stop()
    return out
