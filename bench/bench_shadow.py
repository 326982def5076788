"""Shadow evaluation's cost to live traffic: p50/p99 latency and throughput of the live endpoint with a shadow
candidate mirroring 100 % of the requests vs no shadow, on the same server in the same run.

The server is the single-process inference server with the agent's observer fan-out member
(:class:`~reconciler.agent.shadowing.ShadowTap`); the candidate (the same model retrained with small noise) is
loaded as the agent loads it (one intra-op thread, health-checked) and runs on every request the live version
answers — or on none. Each round runs six modes (:data:`MODES`): off; on as shipped (the request path copies each
sample into the shared-memory ring, :mod:`reconciler.agent.shadowring`; the candidate's process at
``SCHED_IDLE`` runs it, compares and keeps the numbers, :mod:`reconciler.agent.shadowproc`; that process is
stopped (SIGSTOP) outside its mode, as if no shadow ran); on with the candidate in a ``SCHED_IDLE`` thread
of the serving process instead; in a thread at normal priority (what the priority buys); a ``SCHED_IDLE`` process
running the candidate non-stop with no mirror (``idle_burn``: the floor of idle priority); off again (A/A: what
two identical runs differ by on this machine right now). The order rotates from round to
round; medians over rounds are compared, and so are the medians of each round's ratio to that round's "off"
(paired: slow drifts of a shared machine's load cancel). The load generator is the benchmarks' raw-socket
client in a separate process at concurrency 4 (binary tensors). Two models: the tiny matmul (the request path
dominates: the mirror's per-request cost shows) and a small CNN (the inference dominates: the candidate's CPU
competes with the live one). Per mode it also reports the priority the worker obtained, the share of the
requests it compared (``mirrored_pct``; the rest was dropped, never waited for) and the serving process's CPU
time per request (``cpu_us_per_request``: what the mirror costs the process the live requests run in, which a
loaded machine's scheduling noise does not blur as it blurs p99).

Prints ONE JSON line. Run: ``PYTHONPATH=. .venv/bin/python bench/bench_shadow.py [--seconds 1.2] [--rounds 12]``
(about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import _request, load  # noqa: E402
from _thread_mirror import Mirror  # noqa: E402

from reconciler.agent.shadowing import ShadowSupervisor  # noqa: E402
from reconciler.agent.shadowproc import CandidateProcess, load_candidate  # noqa: E402
from reconciler.agent.shadowring import RingMirror  # noqa: E402
from reconciler.devkit.modelgen import make_probe, matmul_model, small_cnn  # noqa: E402
from reconciler.serving.http.server import InferenceServer  # noqa: E402
from reconciler.serving.registry import EndpointSpec, ModelRegistry  # noqa: E402
from reconciler.shadow.priority import IDLE, NORMAL  # noqa: E402
from reconciler.shadow.spec import ShadowSettings  # noqa: E402

CONCURRENCY = 4
MODELS = {
    "matmul": (lambda: matmul_model(seed=1), lambda: matmul_model(seed=1, bias=2e-3, noise=5e-4)),
    "cnn": (lambda: small_cnn(seed=0), lambda: small_cnn(seed=0)),
}


def pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * q))]


#: The modes of a round: no shadow; the shadow as shipped (the ring to the candidate's SCHED_IDLE process); the
#: candidate in a SCHED_IDLE thread of the serving process instead; in a thread at normal priority (what the
#: priority buys); no shadow again (A/A: the noise of this machine).
MODES = ("off", "on", "on_thread", "on_normal", "idle_burn", "off_again")

#: The floor of "idle" on this machine: a SCHED_IDLE process running the candidate non-stop on the probe, with
#: no mirror at all (what an idle-priority neighbour alone costs the live path: shared caches, memory bandwidth,
#: the scheduler's wake-up preemption). Stopped (SIGSTOP) outside its mode.
BURN = """
import os, sys, numpy as np, onnxruntime as ort
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.stdin.buffer.read(), o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
print("ready", flush=True)
while True:
    s.run(None, {i.name: x})
"""


def idle_burner(model: bytes) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(model)
    proc.stdin.close()
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGSTOP)
    return proc


def bench_model(name: str, seconds: float, rounds: int) -> dict[str, object]:
    live_bytes, cand_bytes = MODELS[name][0](), MODELS[name][1]()
    probe = make_probe(live_bytes)
    sup = ShadowSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    assert reg.apply(EndpointSpec(name="m", version="1", blobs=[live_bytes], probe=probe, threads=1)).ok
    part = {"runtime": "onnxruntime", "precision": "fp32"}
    proc, reason, message = CandidateProcess.start(part, [cand_bytes], make_probe(cand_bytes), {}, None)
    assert proc is not None, (reason, message)
    backend, _growth, reason, message = load_candidate(part, [cand_bytes], make_probe(cand_bytes), {}, None)
    assert backend is not None, (reason, message)
    settings = ShadowSettings(sample_rate=1.0, min_samples=1000)
    mirrors: dict[str, Mirror | RingMirror] = {"on": RingMirror("m", "1", "2", settings, proc)}
    proc_stopped = True
    os.kill(proc.pid, signal.SIGSTOP)  # no shadow outside "on": not even its poll of an empty ring
    for mode, prio in (("on_thread", IDLE), ("on_normal", NORMAL)):
        mirrors[mode] = Mirror("m", "1", "2", settings, lambda feeds: backend.infer(feeds, None), priority=prio)
    burner = idle_burner(cand_bytes)
    srv = InferenceServer(reg)
    srv.start()
    req = _request(srv.port, "m", probe, binary=True)
    load(srv.port, req, CONCURRENCY, 1.0)  # warm-up
    p50: dict[str, list[float]] = {m: [] for m in MODES}
    p99: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}  # the serving process's CPU per request, microseconds
    paired: dict[str, list[float]] = {m: [] for m in MODES[1:]}
    for r in range(rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]  # each mode takes each position in turn
        for mode in order:
            sup.mirrors = {"m": mirrors[mode]} if mode in mirrors else {}
            if mode == "idle_burn":
                burner.send_signal(signal.SIGCONT)
            if mode == "on" and proc_stopped:
                os.kill(proc.pid, signal.SIGCONT)
                proc_stopped = False
            cpu0 = time.process_time()
            samples = load(srv.port, req, CONCURRENCY, seconds)
            cpu[mode].append((time.process_time() - cpu0) / max(1, len(samples)) * 1e6)
            if mode == "idle_burn":
                burner.send_signal(signal.SIGSTOP)
            sup.mirrors = {}
            assert all(s[2] == 200 for s in samples)
            lat = [s[1] for s in samples]
            p50[mode].append(pct(lat, 0.5) * 1e6)
            p99[mode].append(pct(lat, 0.99) * 1e6)
            rps[mode].append(len(samples) / seconds)
            deadline = time.monotonic() + 5  # at most 64 queued requests: the next mode starts without them
            while not all(m.idle() for m in mirrors.values()) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not proc_stopped:
                os.kill(proc.pid, signal.SIGSTOP)
                proc_stopped = True
        for mode in paired:  # this round's p99 against this round's "off" (drift of the machine cancels)
            paired[mode].append(p99[mode][-1] / p99["off"][-1])
    os.kill(proc.pid, signal.SIGCONT)
    snaps = {mode: m.snapshot() for mode, m in mirrors.items()}
    for m in mirrors.values():
        m.stop()
    srv.stop()
    burner.kill()
    burner.wait()
    proc.close()
    backend.close()
    reg.close()
    med = {k: {m: statistics.median(v[m]) for m in MODES}
           for k, v in (("p50", p50), ("p99", p99), ("rps", rps), ("cpu", cpu))}
    out: dict[str, object] = {f"p99_us_{m}": round(med["p99"][m], 1) for m in MODES}
    out.update({f"p50_us_{m}": round(med["p50"][m], 1) for m in MODES})
    out.update({f"rps_{m}": round(med["rps"][m]) for m in MODES})
    # what the mirror costs the serving process itself, whatever else the machine runs (a loaded host's p99 is
    # mostly other processes' scheduling): its CPU per request, and the extra over "off"
    out.update({f"cpu_us_per_request_{m}": round(med["cpu"][m], 1) for m in MODES})
    out.update({f"cpu_us_per_request_extra_{m}": round(med["cpu"][m] - med["cpu"]["off"], 1) for m in MODES[1:]})
    for m in MODES[1:]:
        out[f"p99_ratio_{m}_off"] = round(med["p99"][m] / med["p99"]["off"], 3)
        out[f"p99_ratio_{m}_off_paired_median"] = round(statistics.median(paired[m]), 3)
        out[f"p50_ratio_{m}_off"] = round(med["p50"][m] / med["p50"]["off"], 3)
    for mode, snap in snaps.items():  # what each worker obtained and how much of the traffic it compared
        out[f"shadow_{mode}_priority"] = snap.get("priority")
        out[f"shadow_{mode}_mirrored_pct"] = snap["mirrored"]
        out[f"shadow_{mode}_compared_requests"] = snap["requests"]
        out[f"shadow_{mode}_dropped"] = snap["dropped"]
    out.update({"shadow_agreement_pct": snaps["on"]["agreement"], "candidate_p50_ms": snaps["on"]["latencyMs"]["p50"],
                "candidate_process_rss_mb": proc.memory_mb})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--models", default="matmul,cnn")
    args = ap.parse_args()
    out: dict[str, object] = {"bench": "shadow", "concurrency": CONCURRENCY, "sample_rate": 1.0,
                              "seconds": args.seconds, "rounds": args.rounds, "cores": os.cpu_count(),
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    for name in args.models.split(","):
        for k, v in bench_model(name, args.seconds, args.rounds).items():
            out[f"{name}_{k}"] = v
        out[f"{name}_loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["goal_p99_ratio"] = 1.1
    print(json.dumps(out))


if __name__ == "__main__":
    main()
