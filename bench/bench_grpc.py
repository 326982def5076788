"""gRPC vs REST binary benchmark: the server's CPU per request for the same models, and grpcio's own floor, same run.

One server process (``_SERVER``: a registry, the HTTP front and the gRPC front over one application core, every
session with one intra-op thread) serves two models: the tiny generated MatMul (16→4 FP32, inline on the
fronts' event loops) and the light camera CNN (``modelgen.camera_cnn``, a 1×3×224×224 FP32 image: 602 KB per
request, run in the thread pool). Each is loaded over REST with the binary tensor extension (``_loadgen``: a
raw-socket keep-alive client, uvloop, a forked process) and over gRPC with raw contents (a ``grpc.aio`` client in
a forked process: what tritonclient sends, one connection per 4 calls in flight), at concurrency 1 and 16.

The floor, driven by the same clients with the same requests: bare grpcio servers whose ``ModelInfer`` returns
the bytes our server answered to that request and does nothing else — ``grpc.aio`` on uvloop (the kind our front
is) and the thread-pool ``grpc.server`` (4 threads) — and for REST the bare uvloop + httptools server of
``_floor.py``. ``--baseline-rev`` (default: main before this round of cuts) also runs that revision's gRPC front.

The server's CPU time (utime + stime of its process, from /proc) over the requests answered is the figure;
the servers take turns round by round (the order rotates and flips), medians of the rounds, ratios within the
same run: the machine is shared, so absolute numbers are context only (the load average is reported). Prints
ONE JSON line.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_grpc.py [--rounds 3] [--seconds 2] [--baseline-rev REV|none]``
(needs modelfleet[grpc]; about 4.5 minutes, 3 without the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _floor import FloorProc, fetch  # noqa: E402
from _loadgen import binary_request, load, stats  # noqa: E402
from _serving_sections import baseline_tree  # noqa: E402

from reconciler.devkit.modelgen import camera_cnn, make_probe, matmul_model  # noqa: E402
from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402  (protobuf only: no grpc here)

#: main before the gRPC front's copies and executor hops were cut (``--baseline-rev``)
GRPC_BASELINE_REV = "64baf16"
_CLK = os.sysconf("SC_CLK_TCK")
_SERVER = r"""
import sys
from pathlib import Path
from reconciler.serving.fronts import Fronts
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
reg = ModelRegistry()
for name in ("tiny", "cnn"):
    r = reg.apply(EndpointSpec(name, "1", blobs=[Path(sys.argv[1], name + ".onnx").read_bytes()], threads=1))
    assert r.ok, r.message
with Fronts(InferenceServer(reg), grpc_port=0) as f:
    print(f.port, f.grpc_port, flush=True)
    sys.stdin.read()
reg.close()
"""
#: A bare grpcio server (argv[1]: aio or sync): ModelInfer answers the bytes our server gave to a request of that
#: length (one line of hex pairs on stdin), nothing else; same message size limit as ours (64 MiB).
_GRPC_FLOOR = r"""
import asyncio, concurrent.futures, sys
import grpc
ANSWERS = {int(n): bytes.fromhex(r) for n, r in (line.split() for line in sys.stdin.readline().split(";"))}
def answer(req, ctx):
    return ANSWERS[len(req)]
async def answer_async(req, ctx):
    return ANSWERS[len(req)]
opts = [("grpc.max_receive_message_length", 64 << 20)]
def handlers(fn):
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                {"ModelInfer": grpc.unary_unary_rpc_method_handler(fn)})
if sys.argv[1] == "sync":
    s = grpc.server(concurrent.futures.ThreadPoolExecutor(4), handlers=(handlers(answer),), options=opts)
    print(s.add_insecure_port("127.0.0.1:0"), flush=True)
    s.start()
    s.wait_for_termination()
else:
    async def main():
        s = grpc.aio.server(options=opts)
        s.add_generic_rpc_handlers((handlers(answer_async),))
        print(s.add_insecure_port("127.0.0.1:0"), flush=True)
        await s.start()
        await s.wait_for_termination()
    import uvloop
    uvloop.install()
    asyncio.run(main())
"""


def _grpc_client(port: int, req: bytes, conc: int, duration: float, conn: Any) -> None:
    import grpc  # imported in the forked child only: grpc must not be initialised before a fork

    async def main() -> list[tuple[float, float, int]]:
        own = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel (grpc would share one)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own) for _ in range(max(1, conc // 4))]
        calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer") for ch in channels]
        out: list[tuple[float, float, int]] = []
        end = time.perf_counter() + duration

        async def one(i: int) -> None:
            call = calls[i % len(calls)]
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await call(req)
                    status = 200
                except grpc.RpcError:
                    status = 500
                out.append((t0, time.perf_counter() - t0, status))

        await asyncio.gather(*(one(i) for i in range(conc)))
        for ch in channels:
            await ch.close()
        return out

    conn.send(asyncio.run(main()))


def _grpc_once(port: int, req: bytes, conn: Any) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]) as ch:
        conn.send(ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(req, timeout=30))


def _in_child(target: Callable[..., None], *args: Any) -> Any:
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=target, args=(*args, b))
    p.start()
    out = a.recv()
    p.join()
    return out


def grpc_load(port: int, req: bytes, conc: int, duration: float) -> list[tuple[float, float, int]]:
    return _in_child(_grpc_client, port, req, conc, duration)  # type: ignore[no-any-return]


def grpc_request(model: str, name: str, arr: np.ndarray) -> bytes:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name=name, datatype="FP32", shape=list(arr.shape))], raw_input_contents=[arr.tobytes()]).SerializeToString()


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _start(args: list[str], src: Path, stdin: str | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(src)}, cwd=src)  # cwd: sys.path[0] beats PYTHONPATH
    if stdin is not None:
        proc.stdin.write(stdin + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--baseline-rev", default=GRPC_BASELINE_REV, help="also run this revision's gRPC front ('none': not)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    tiny, cnn = matmul_model(seed=1), camera_cnn(seed=1)
    (tmp / "tiny.onnx").write_bytes(tiny)
    (tmp / "cnn.onnx").write_bytes(cnn)
    inputs = {"tiny": ("input", np.array(make_probe(tiny)["inputs"][0]["data"], np.float32).reshape(2, 16)),
              "cnn": ("image", np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))}
    root = Path(__file__).resolve().parents[1]
    procs: dict[str, subprocess.Popen[str]] = {}
    floors: list[FloorProc] = []
    try:
        procs["ours"] = _start(["-c", _SERVER, str(tmp)], root)
        http_port, grpc_port = map(int, procs["ours"].stdout.readline().split())  # type: ignore[union-attr]
        base_port = None
        if args.baseline_rev != "none":
            procs["base"] = _start(["-c", _SERVER, str(tmp)], baseline_tree(args.baseline_rev, tmp))
            base_port = int(procs["base"].stdout.readline().split()[1])  # type: ignore[union-attr]
        rest_reqs = {m: binary_request(http_port, m, n, x) for m, (n, x) in inputs.items()}
        grpc_reqs = {m: grpc_request(m, n, x) for m, (n, x) in inputs.items()}
        answers = ";".join(f"{len(r)} {_in_child(_grpc_once, grpc_port, r).hex()}" for r in grpc_reqs.values())
        for kind in ("aio", "sync"):
            procs[f"floor_{kind}"] = _start(["-c", _GRPC_FLOOR, kind], root, answers)
        floor_ports = {k: int(procs[f"floor_{k}"].stdout.readline()) for k in ("aio", "sync")}  # type: ignore[union-attr]
        rest_floor = {}
        for m, r in rest_reqs.items():
            floors.append(FloorProc(fetch(http_port, r)))
            rest_floor[m] = floors[-1]
        # name → (server pid, the load for a model at a concurrency)
        Load = Callable[[str, int, float], list[tuple[float, float, int]]]
        servers: dict[str, tuple[Callable[[str], int], Load]] = {
            "rest": (lambda m: procs["ours"].pid, lambda m, c, s: load(http_port, rest_reqs[m], c, s)),
            "grpc": (lambda m: procs["ours"].pid, lambda m, c, s: grpc_load(grpc_port, grpc_reqs[m], c, s)),
            "floor_grpc_aio": (lambda m: procs["floor_aio"].pid,
                               lambda m, c, s: grpc_load(floor_ports["aio"], grpc_reqs[m], c, s)),
            "floor_grpc_sync": (lambda m: procs["floor_sync"].pid,
                                lambda m, c, s: grpc_load(floor_ports["sync"], grpc_reqs[m], c, s)),
            "floor_rest": (lambda m: rest_floor[m].proc.pid,
                           lambda m, c, s: load(rest_floor[m].port, rest_reqs[m], c, s)),
        }
        if base_port is not None:
            servers["grpc_baseline"] = (lambda m: procs["base"].pid,
                                        lambda m, c, s: grpc_load(base_port, grpc_reqs[m], c, s))
        names = list(servers)
        cases = [(m, c) for m in inputs for c in (1, 16)]
        runs: dict[tuple[str, int, str], list[dict[str, float]]] = {(m, c, p): [] for m, c in cases for p in names}
        load_before = os.getloadavg()[0]
        for m, c in cases:  # warm every server and both models
            for p in names:
                servers[p][1](m, c, 0.5)
        for i in range(args.rounds):
            for m, c in cases:
                k = i % len(names)
                order = names[k:] + names[:k]
                for p in reversed(order) if i % 2 else order:
                    pid = servers[p][0](m)
                    c0 = proc_cpu(pid)
                    samples = servers[p][1](m, c, args.seconds)
                    cpu = proc_cpu(pid) - c0
                    st = stats(samples, args.seconds)
                    assert st["errors"] == 0, (m, c, p, st)
                    runs[(m, c, p)].append({**st, "cpu_us_per_req": cpu / max(1, len(samples)) * 1e6})
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(30)
        for f in floors:
            f.stop()

    def med(m: str, c: int, p: str, k: str) -> float:
        return round(statistics.median(r[k] for r in runs[(m, c, p)]), 1)

    out: dict[str, Any] = {
        "bench": "grpc",
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "baseline_rev": None if args.baseline_rev == "none" else args.baseline_rev,
        "host_loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "models": {"tiny": "matmul 16->4 FP32, 2x16 per request (inline on the event loops)",
                   "cnn": "modelgen.camera_cnn 1x3x224x224 FP32, 602 KB per request (thread pool)"},
        "encodings": {"rest": "KServe v2 binary tensor extension (raw-socket keep-alive client)",
                      "grpc": "raw_input_contents/raw_output_contents (grpc.aio client, one connection per 4 calls)"},
        "floors": {"floor_grpc_aio": "bare grpc.aio server (uvloop), ModelInfer returns our answer's bytes",
                   "floor_grpc_sync": "bare grpc.server, 4 threads, ModelInfer returns our answer's bytes",
                   "floor_rest": "bare uvloop + httptools server returning our answer's bytes"},
    }
    for m, c in cases:
        row: dict[str, Any] = {p: {"server_cpu_us_per_req": med(m, c, p, "cpu_us_per_req"), "rps": med(m, c, p, "rps"),
                                   "p50_us": med(m, c, p, "p50_us")} for p in names}
        cpu = {p: row[p]["server_cpu_us_per_req"] for p in names}
        row["cpu_ratio_grpc_over_rest"] = round(cpu["grpc"] / cpu["rest"], 2)
        row["cpu_ratio_floor_grpc_aio_over_rest"] = round(cpu["floor_grpc_aio"] / cpu["rest"], 2)
        row["cpu_ratio_floor_grpc_sync_over_rest"] = round(cpu["floor_grpc_sync"] / cpu["rest"], 2)
        row["grpc_above_aio_floor_us"] = round(cpu["grpc"] - cpu["floor_grpc_aio"], 1)
        row["rest_above_rest_floor_us"] = round(cpu["rest"] - cpu["floor_rest"], 1)
        if "grpc_baseline" in cpu:
            row["cpu_ratio_grpc_over_baseline"] = round(cpu["grpc"] / cpu["grpc_baseline"], 2)
        out[f"{m}_c{c}"] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
