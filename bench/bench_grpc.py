"""gRPC vs REST binary benchmark: the server's CPU per request for the same models, same process, same run.

One server process (``_SERVER``: a registry, the HTTP front and the gRPC front over one application core, every
session with one intra-op thread) serves two models: the tiny generated MatMul (16→4 FP32, inline on the
fronts' event loops) and the light camera CNN (``modelgen.camera_cnn``, a 1×3×224×224 FP32 image: 602 KB per
request, run in the thread pool). Each is loaded over REST with the binary tensor extension (``_loadgen``: a
raw-socket keep-alive client, uvloop, a forked process) and over gRPC with raw contents (a ``grpc.aio`` client in
a forked process: what tritonclient sends, one connection per 4 calls in flight), at concurrency 1 and 16.

The server's CPU time (utime + stime of its process, from /proc) over the requests answered is the figure;
the protocols alternate round by round (which goes first flips), medians of the rounds, and the ratio
gRPC / REST is taken within the same run: the machine is shared, so absolute numbers are context only (the load
average is reported). Prints ONE JSON line.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_grpc.py [--rounds 3] [--seconds 3]`` (needs modelfleet[grpc]).
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
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import binary_request, load, stats  # noqa: E402

from reconciler.devkit.modelgen import camera_cnn, make_probe, matmul_model  # noqa: E402
from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402  (protobuf only: no grpc here)

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


def grpc_load(port: int, req: bytes, conc: int, duration: float) -> list[tuple[float, float, int]]:
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_grpc_client, args=(port, req, conc, duration, b))
    p.start()
    out = a.recv()
    p.join()
    return out  # type: ignore[no-any-return]


def grpc_request(model: str, name: str, arr: np.ndarray) -> bytes:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name=name, datatype="FP32", shape=list(arr.shape))], raw_input_contents=[arr.tobytes()]).SerializeToString()


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    tiny, cnn = matmul_model(seed=1), camera_cnn(seed=1)
    (tmp / "tiny.onnx").write_bytes(tiny)
    (tmp / "cnn.onnx").write_bytes(cnn)
    inputs = {"tiny": ("input", np.array(make_probe(tiny)["inputs"][0]["data"], np.float32).reshape(2, 16)),
              "cnn": ("image", np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(tmp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(root)})
    http_port, grpc_port = map(int, proc.stdout.readline().split())  # type: ignore[union-attr]
    reqs = {(m, "rest"): binary_request(http_port, m, n, x) for m, (n, x) in inputs.items()}
    reqs.update({(m, "grpc"): grpc_request(m, n, x) for m, (n, x) in inputs.items()})
    loaders = {"rest": lambda r, c, s: load(http_port, r, c, s), "grpc": lambda r, c, s: grpc_load(grpc_port, r, c, s)}
    cases = [(m, c) for m in inputs for c in (1, 16)]
    runs: dict[tuple[str, int, str], list[dict[str, float]]] = {(m, c, p): [] for m, c in cases for p in loaders}
    load_before = os.getloadavg()[0]
    try:
        for m, c in cases:  # warm both fronts and both models
            for p in loaders:
                loaders[p](reqs[(m, p)], c, 0.5)
        for i in range(args.rounds):
            for m, c in cases:
                for p in (["rest", "grpc"] if i % 2 == 0 else ["grpc", "rest"]):
                    c0 = proc_cpu(proc.pid)
                    samples = loaders[p](reqs[(m, p)], c, args.seconds)
                    cpu = proc_cpu(proc.pid) - c0
                    st = stats(samples, args.seconds)
                    assert st["errors"] == 0, (m, c, p, st)
                    runs[(m, c, p)].append({**st, "cpu_us_per_req": cpu / max(1, len(samples)) * 1e6})
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)

    def med(m: str, c: int, p: str, k: str) -> float:
        return round(statistics.median(r[k] for r in runs[(m, c, p)]), 1)

    out: dict[str, Any] = {
        "bench": "grpc",
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "host_loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "models": {"tiny": "matmul 16->4 FP32, 2x16 per request (inline on the event loops)",
                   "cnn": "modelgen.camera_cnn 1x3x224x224 FP32, 602 KB per request (thread pool)"},
        "encodings": {"rest": "KServe v2 binary tensor extension (raw-socket keep-alive client)",
                      "grpc": "raw_input_contents/raw_output_contents (grpc.aio client, one connection per 4 calls)"},
    }
    for m, c in cases:
        row = {p: {"server_cpu_us_per_req": med(m, c, p, "cpu_us_per_req"), "rps": med(m, c, p, "rps"),
                   "p50_us": med(m, c, p, "p50_us")} for p in loaders}
        row["cpu_ratio_grpc_over_rest"] = round(row["grpc"]["server_cpu_us_per_req"] /
                                                row["rest"]["server_cpu_us_per_req"], 2)
        out[f"{m}_c{c}"] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
