"""Measuring a variant on this machine: outputs on the evaluation sample, latency, throughput, size, memory.

Every variant is loaded through the same runtime backends the device uses (:mod:`reconciler.serving.runtimes`),
so "it loads and runs" is tested with the device's code. Latency is p50/p95 over ``runs`` single-sample
requests after a warm-up; throughput is samples per second at the user's batch size, over ``max(5, runs/4)``
batches; peak RSS of loading the model and running it on the first evaluation sample is measured in a fresh
child process (``python -m reconciler.optimize.rssprobe``) so that one variant's allocations do not hide in
another's high-water mark.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reconciler.core.errors import UserError
from reconciler.serving.health import percentile
from reconciler.serving.runtimes import Backend, RuntimeLoadError, load_backend

WARMUP_RUNS = 3
MAX_EVAL_BATCH = 64  # evaluation runs in chunks: memory stays bounded whatever the sample size
RSS_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Speed:
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    batch: int
    runs: int


@dataclass(frozen=True)
class Memory:
    load_rss_mb: float  # peak RSS growth from just before the load to after the first inference
    load_ms: float


def load(runtime: str, files: Sequence[Path], threads: int | None, precision: str) -> Backend:
    """Load like a device does: the declared ``precision`` decides how the runtime computes, not this CPU."""
    try:
        return load_backend(runtime, files=list(files), threads=threads, precision=precision)
    except RuntimeLoadError as exc:
        raise UserError(f"{runtime} cannot load {', '.join(str(f) for f in files)}: {exc}") from None


def run_all(backend: Backend, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs for every sample of ``inputs``, run in bounded chunks, concatenated along the first axis."""
    n = int(next(iter(inputs.values())).shape[0])
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, MAX_EVAL_BATCH):
        out = backend.infer({k: v[start:start + MAX_EVAL_BATCH] for k, v in inputs.items()})
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def batch_of(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``size`` samples (repeating the sample when it is smaller)."""
    n = int(next(iter(inputs.values())).shape[0])
    idx = np.arange(size) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in inputs.items()}


def speed(backend: Backend, inputs: dict[str, np.ndarray], *, batch: int, runs: int) -> Speed:
    one = batch_of(inputs, 1)
    for _ in range(max(WARMUP_RUNS, runs // 10)):
        backend.infer(one)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(one)
        samples.append((time.perf_counter() - t0) * 1000.0)
    many = batch_of(inputs, batch)
    backend.infer(many)
    rounds = max(5, runs // 4)
    t0 = time.perf_counter()
    for _ in range(rounds):
        backend.infer(many)
    elapsed = time.perf_counter() - t0
    return Speed(percentile(samples, 50), percentile(samples, 95), batch * rounds / elapsed, batch, runs)


def best(a: Speed, b: Speed) -> Speed:
    """The better of two measurements of the same model (drift and warm-up on a busy machine only slow it)."""
    return Speed(min(a.latency_p50_ms, b.latency_p50_ms), min(a.latency_p95_ms, b.latency_p95_ms),
                 max(a.throughput_per_s, b.throughput_per_s), a.batch, a.runs)


def memory(runtime: str, files: Sequence[Path], threads: int | None, precision: str,
           feeds: dict[str, np.ndarray] | None = None) -> Memory:
    """Peak RSS of loading the model and running it once on ``feeds`` (one real sample: a network fed zeros of
    made-up size, e.g. a 1x1 image for dynamic height and width, measures nothing real and may even crash the
    runtime), in a child process (Linux ``/proc``)."""
    with tempfile.TemporaryDirectory(prefix="mf-rss-") as tmp:
        args = {"runtime": runtime, "files": [str(f) for f in files], "threads": threads, "precision": precision}
        if feeds is not None:
            np.savez(Path(tmp) / "feeds.npz", **feeds)
            args["feeds"] = str(Path(tmp) / "feeds.npz")
        try:
            proc = subprocess.run([sys.executable, "-m", "reconciler.optimize.rssprobe"], input=json.dumps(args),
                                  capture_output=True, text=True, timeout=RSS_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(f"measuring memory of {files[0]}: no answer within {RSS_TIMEOUT_S:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        if proc.returncode < 0:
            tail = f"the child process was killed by signal {_signal_name(-proc.returncode)}"
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"measuring memory of {files[0]} failed: {tail}")
    doc = json.loads(lines[-1])
    return Memory(float(doc["load_rss_mb"]), float(doc["load_ms"]))


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def size_bytes(files: Sequence[Path]) -> int:
    return sum(Path(f).stat().st_size for f in files)


def to_dict(x: Speed | Memory) -> dict[str, float | int]:
    return asdict(x)
