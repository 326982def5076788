"""The ``cnn`` and ``batching`` sections of ``bench_serving.py``: camera-sized models through the server vs the
runtime in-process, and adaptive batching vs none, this tree against a baseline tree in the same run.

Two models, both 1×3×224×224 FP32 (a 602 KB binary tensor per image):

- ``mobilenet_v2`` (``modelgen.mobilenet_v2``): the camera model, 3.5 M parameters, 0.30 G multiply-adds per
  image, what a real MobileNetV2 computes;
- ``light_cnn`` (``modelgen.camera_cnn``): 0.65 M parameters, 0.063 G multiply-adds of dense convolutions: the
  case where the 602 KB of HTTP per image weighs most.

Every server and the in-process loop run in processes of their own (``_WORKER``), the server and in-process
sessions with the same intra-op threads (``threads``): CPU time per image is read from /proc (servers) and
``getrusage`` (the in-process loop, every thread; the load generator, a child process of this one). Candidates
alternate round by round; medians and ratios are reported, with the load average, since the machine is shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _loadgen import binary_request, load, stats

from reconciler.devkit.modelgen import camera_cnn, image_mean, mobilenet_v2, model_cost, to_openvino_ir

#: main before this tree's large-body receive and batch gather buffers: the "before" of these two sections.
CNN_BASELINE_REV = "5b858c3"
_CLK = os.sysconf("SC_CLK_TCK")

# One process: "serve" (a registry with endpoint "plain" and, given a policy, "batched"; prints the port, serves
# until stdin closes) or "inproc" (reads "threads batch seconds" lines, answers img/s and CPU ms per image of
# ``threads`` Python threads each running ``batch``-image calls in a loop on one session).
_WORKER = r"""
import json, resource, sys, threading, time
from pathlib import Path
import numpy as np
from reconciler.serving.registry import EndpointSpec, ModelRegistry
mode, runtime, threads, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
files = [Path(f) for f in sys.argv[5:]]
reg = ModelRegistry(cache_dir=Path(files[0]).parent / "regcache")
def spec(name, batching=None):
    kw = {"batching": batching} if batching else {}
    if runtime == "openvino":
        return EndpointSpec(name, "1", runtime="openvino", files=files, threads=threads, **kw)
    return EndpointSpec(name, "1", blobs=[files[0].read_bytes()], threads=threads, **kw)
r = reg.apply(spec("plain"))
assert r.ok, r.message
if policy:
    r = reg.apply(spec("batched", policy))
    assert r.ok, r.message
if mode == "serve":
    from reconciler.serving.http.server import InferenceServer
    srv = InferenceServer(reg)
    srv.start()
    print(srv.port, flush=True)
    sys.stdin.read()
    srv.stop()
    raise SystemExit(0)
infer = reg.get("plain").model.backend.infer
def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
print("ready", flush=True)
for line in sys.stdin:
    par, batch, seconds = line.split()
    par, batch, seconds = int(par), int(batch), float(seconds)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    infer({"image": x})
    counts = [0] * par
    def run(i):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            infer({"image": x})
            counts[i] += batch
    c0, t0 = cpu(), time.perf_counter()
    th = [threading.Thread(target=run, args=(i,)) for i in range(par)]
    for t in th: t.start()
    for t in th: t.join()
    dt, n = time.perf_counter() - t0, sum(counts)
    print(json.dumps({"img_s": n / dt, "cpu_ms_per_img": (cpu() - c0) / n * 1e3}), flush=True)
"""


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class _Worker:
    def __init__(self, src: Path, mode: str, runtime: str, threads: int, files: list[Path],
                 policy: dict[str, Any] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, mode, runtime, str(threads), json.dumps(policy or {}),
             *map(str, files)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(src)})
        first = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not first:
            self.stop()
            raise RuntimeError(f"{mode} worker of {src} did not start")
        self.port = int(first) if mode == "serve" else 0

    def inproc(self, par: int, batch: int, seconds: float) -> dict[str, float]:
        self.proc.stdin.write(f"{par} {batch} {seconds}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def served(self, model: str, x: np.ndarray, conc: int, seconds: float) -> dict[str, float]:
        req = binary_request(self.port, model, "image", x)
        c0, l0 = _proc_cpu(self.proc.pid), _children_cpu()
        samples = load(self.port, req, conc, seconds)
        n = max(1, len(samples)) * x.shape[0]
        return {**stats(samples, seconds), "img_s": len(samples) * x.shape[0] / seconds,
                "cpu_ms_per_img": (_proc_cpu(self.proc.pid) - c0) / n * 1e3,
                "loadgen_cpu_ms_per_img": (_children_cpu() - l0) / n * 1e3}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def _workers(trees: dict[str, Path], runtime: str, threads: int, files: list[Path],
             policy: dict[str, Any] | None = None) -> Iterator[dict[str, _Worker]]:
    """The in-process loop (this tree) and one server per tree, stopped however the block ends."""
    workers: dict[str, _Worker] = {}
    try:
        workers["inprocess"] = _Worker(trees["current"], "inproc", runtime, threads, files)
        for tree, src in trees.items():
            workers[tree] = _Worker(src, "serve", runtime, threads, files, policy)
        yield workers
    finally:
        for w in workers.values():
            w.stop()


def _round_order(workers: dict[str, _Worker], i: int) -> list[tuple[str, _Worker]]:
    """Round ``i``'s order: forwards on even rounds, backwards on odd ones (no candidate always goes first)."""
    items = list(workers.items())
    return items if i % 2 == 0 else items[::-1]


def _models(cache: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name, blob in (("mobilenet_v2", mobilenet_v2(seed=1)), ("light_cnn", camera_cnn(seed=1))):
        onnx = cache / f"{name}.onnx"
        onnx.write_bytes(blob)
        xml, bin_ = to_openvino_ir(blob, cache / f"{name}-ir", name)
        cost = model_cost(blob)
        out[name] = {"files": {"onnxruntime": [onnx], "openvino": [xml, bin_]},
                     "about": {"params_m": round(cost["params"] / 1e6, 2), "gmacs": round(cost["macs"] / 1e9, 3),
                               "mb": round(len(blob) / 1e6, 1)}}
    return out


def http_cost(cache: Path, trees: dict[str, Path], rounds: int = 5, seconds: float = 2.0) -> dict[str, Any]:
    """What one 602 KB camera image costs the server besides the runtime: CPU per request of each tree's server
    for ``modelgen.image_mean`` (a per-channel mean: next to no inference), one request at a time."""
    model = cache / "image_mean.onnx"
    model.write_bytes(image_mean())
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    workers = {tree: _Worker(src, "serve", "onnxruntime", 1, [model]) for tree, src in trees.items()}
    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    try:
        for i in range(rounds):
            for tree in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
                runs[tree].append(workers[tree].served("plain", x, 1, seconds))
    finally:
        for w in workers.values():
            w.stop()
    med = {t: {"server_cpu_us_per_req": round(_med([r["cpu_ms_per_img"] for r in rs]) * 1e3, 1),
               "loadgen_cpu_us_per_req": round(_med([r["loadgen_cpu_ms_per_img"] for r in rs]) * 1e3, 1),
               "p50_us": _med([r["p50_us"] for r in rs]), "req_s": _med([r["img_s"] for r in rs])}
           for t, rs in runs.items()}
    return {**med, "cpu_ratio": _ratio(med["current"]["server_cpu_us_per_req"],
                                       med["baseline"]["server_cpu_us_per_req"]),
            "p50_ratio": _ratio(med["current"]["p50_us"], med["baseline"]["p50_us"])}


def cnn(cache: Path, trees: dict[str, Path], rounds: int = 3, seconds: float = 2.5,
        threads: int | None = None) -> dict[str, Any]:
    """img/s and CPU ms per image: the runtime's own loop vs each tree's server, one request at a time (c=1)
    and two in flight (c=2: the next image arrives while one runs; against two threads calling in-process),
    batch 1 and 8."""
    threads = threads or os.cpu_count() or 2
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "encoding": "binary",
                           "note": "server_vs_inprocess: server img/s at concurrency c over the in-process loop's "
                                   "with c threads calling the session (same intra-op threads); cpu_ratio: server "
                                   "CPU per image over in-process; the load generator's CPU per image is extra, on "
                                   "the same cores", "http_cost_602kb": http_cost(cache, trees)}
    rng = np.random.default_rng(0)
    for model, m in _models(cache).items():
        out[model] = {"about": m["about"]}
        for runtime in ("onnxruntime", "openvino"):
            try:
                with _workers(trees, runtime, threads, m["files"][runtime]) as workers:
                    out[model][runtime] = _cnn_rows(workers, rng, rounds, seconds)
            except Exception as exc:  # noqa: BLE001 - one runtime failing must not lose the others' numbers
                out[model][runtime] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _cnn_rows(workers: dict[str, _Worker], rng: np.random.Generator, rounds: int, seconds: float
              ) -> dict[str, Any]:
    """:func:`cnn`'s rows of one model on one runtime: batch 1 and 8, in-process vs each tree's server."""
    res: dict[str, Any] = {}
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        runs: dict[str, list[dict[str, float]]] = {}
        for i in range(rounds):
            for name, w in _round_order(workers, i):
                if name == "inprocess":
                    for par in (1, 2):
                        runs.setdefault(f"inprocess_c{par}", []).append(w.inproc(par, batch, seconds))
                    continue
                for conc in (1, 2):
                    runs.setdefault(f"{name}_c{conc}", []).append(w.served("plain", x, conc, seconds))
        inp = {par: {f: _med([r[f] for r in runs[f"inprocess_c{par}"]]) for f in ("img_s", "cpu_ms_per_img")}
               for par in (1, 2)}
        row: dict[str, Any] = {f"inprocess_c{par}": v for par, v in inp.items()}
        for key, rs in runs.items():
            if key.startswith("inprocess"):
                continue
            inp1 = inp[int(key[-1])]  # the same number of calls at once: c=2 against two callers
            med = {f: _med([r[f] for r in rs]) for f in
                   ("img_s", "cpu_ms_per_img", "loadgen_cpu_ms_per_img", "p50_us", "errors")}
            row[key] = {**med, "server_vs_inprocess": _ratio(med["img_s"], inp1["img_s"]),
                        "cpu_ratio": _ratio(med["cpu_ms_per_img"], inp1["cpu_ms_per_img"])}
        res[f"b{batch}"] = row
    return res


def batching(cache: Path, trees: dict[str, Path], rounds: int = 3, seconds: float = 4.0, max_batch: int = 8,
             delay_ms: float = 10.0, threads: int | None = None) -> dict[str, Any]:
    """One image per request at concurrency 16: ``plain`` (no batching) vs ``batched`` endpoints of each tree's
    server; the batched endpoint alone (c=1) against its bound (the delay plus the unbatched p99 at c=1); and
    in-process, the same work as the server
    does it: ``workers`` Python threads each calling batch 1 (the unbatched server's pool) vs one thread calling
    batch ``max_batch`` (the batcher), same intra-op threads — the arithmetic ceiling of batching."""
    threads = threads or os.cpu_count() or 2
    pool = min(4, os.cpu_count() or 2)  # InferenceServer's default thread pool
    policy = {"maxBatchSize": max_batch, "maxQueueDelayMs": delay_ms}
    out: dict[str, Any] = {"policy": policy, "concurrency": 16, "threads": threads, "server_pool": pool,
                           "rounds": rounds}
    x1 = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for model, m in _models(cache).items():
        out[model] = {"about": m["about"]}
        for runtime in ("onnxruntime", "openvino"):
            try:
                with _workers(trees, runtime, threads, m["files"][runtime], policy) as workers:
                    out[model][runtime] = _batching_rows(workers, list(trees), x1, rounds, seconds, max_batch,
                                                         delay_ms, pool)
            except Exception as exc:  # noqa: BLE001 - one runtime failing must not lose the others' numbers
                out[model][runtime] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _batching_rows(workers: dict[str, _Worker], trees: list[str], x1: np.ndarray, rounds: int, seconds: float,
                   max_batch: int, delay_ms: float, pool: int) -> dict[str, Any]:
    """:func:`batching`'s rows of one model on one runtime."""
    runs: dict[str, list[dict[str, float]]] = {}
    for i in range(rounds):
        for name, w in _round_order(workers, i):
            if name == "inprocess":
                runs.setdefault("inproc_pool_b1", []).append(w.inproc(pool, 1, seconds / 2))
                runs.setdefault(f"inproc_b{max_batch}", []).append(w.inproc(1, max_batch, seconds / 2))
                runs.setdefault("inproc_b1", []).append(w.inproc(1, 1, seconds / 2))
                continue
            for endpoint in ("plain", "batched"):
                runs.setdefault(f"{name}_{endpoint}", []).append(w.served(endpoint, x1, 16, seconds))
            if name == "current":
                for endpoint in ("plain", "batched"):
                    runs.setdefault(f"current_{endpoint}_c1", []).append(w.served(endpoint, x1, 1, seconds / 2))
    fields = ("img_s", "cpu_ms_per_img", "p50_us", "p99_us", "errors", "loadgen_cpu_ms_per_img")
    med = {k: {f: _med([r[f] for r in rs]) for f in fields if f in rs[0]} for k, rs in runs.items()}
    res: dict[str, Any] = {"inprocess": {k: v for k, v in med.items() if k.startswith("inproc")}}
    res["inprocess"]["batching_ceiling"] = _ratio(med[f"inproc_b{max_batch}"]["img_s"], med["inproc_pool_b1"]["img_s"])
    for tree in trees:
        plain, batched = med[f"{tree}_plain"], med[f"{tree}_batched"]
        res[tree] = {"unbatched": plain, "batched": batched,
                     "rps_ratio": _ratio(batched["img_s"], plain["img_s"]),
                     "cpu_ratio": _ratio(batched["cpu_ms_per_img"], plain["cpu_ms_per_img"]),
                     "p99_ratio": _ratio(batched["p99_us"], plain["p99_us"])}
    # alone, a request waits the whole delay for company, then takes what it takes unbatched
    c1, plain_c1 = med["current_batched_c1"], med["current_plain_c1"]
    bound_us = delay_ms * 1000 + plain_c1["p99_us"]
    res["current_c1"] = {"unbatched": plain_c1, "batched": c1, "p99_bound_us": round(bound_us, 1),
                         "p99_over_bound": _ratio(c1["p99_us"], bound_us)}
    return res

