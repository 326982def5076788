"""Where capture's CPU per captured record goes, inside one process: the request path and the writer, each
measured in place (interleaved with inference, as a device runs them) and alone.

``bench_capture.py`` measures the end-to-end ratio over HTTP, where the A/A pair's spread is ±2–3 % and a run
takes minutes. This one calls a loaded model version's ``infer`` (the tiny ONNX model, fresh feeds per call as
a request decodes them, the capture observer attached) in a loop on one thread, in blocks of 20,000 calls that
alternate between the observer of an endpoint with capture at 10 % (``on``) and one with no policy (``off``).
The calling thread's CPU per call (its own clock), on minus off, times ten is what capture costs the request path
per captured record. Arrangements, each in a process of its own:

- ``process``: as shipped (``sealer: process``): the request path copies the record into its stream's ring in
  shared memory (:mod:`reconciler.capture.sealer`); the sealer process seals, the agent's uploader sends (the
  "capture threads" column counts the process's CPU and the agent's capture threads);
- ``thread``: ``sealer: thread``: the writer and uploader threads do the rest, on whichever core the scheduler
  picks;
- ``draw_only``: the draw and nothing else (a sampled request calls an ``offer`` that returns at once): what
  every arrangement pays before it keeps a record;
- ``one_core``: the ``thread`` arrangement, the process pinned to one CPU (the threads share a core's caches);
- ``split_cores``: the calling thread on CPU 0, the capture threads on CPU 1;
- ``offer_only``: no writer: the caller empties the queue every 2,560 calls (what queuing and holding a
  record's arrays costs the request path, and nothing else);
- ``ring_copy``: what a writer in a process of its own would cost, up to its sealing: the request path hands each
  sampled record to the shadow's shared-memory ring (:class:`~reconciler.agent.shadowring.RingMirror`, at 10 %),
  and a child process takes each record, copies its arrays out and frees its slots (its CPU, read from
  ``/proc``, is the "capture threads" column; sealing would add the isolated writer's figure);
- ``isolated_writer``: the writer's drain, seal and upload of 10,240 records of the same shape, called in a loop
  with no inference between them: the same work with the caches to itself.

Prints ONE JSON line: per arrangement the request path's µs per captured record, the capture threads' µs per
record, their sum, and the ``on``/``off`` ratio of the calling thread. Run:
``PYTHONPATH=. .venv/bin/python bench/bench_capture_path.py [--dir /dev/shm] [--rounds 12]`` (about 2 min).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_serving import TINY  # noqa: E402

from reconciler.capture.batch import generate_keypair  # noqa: E402
from reconciler.capture.policy import SAMPLED, parse_policy  # noqa: E402
from reconciler.capture.service import CaptureService  # noqa: E402
from reconciler.devkit.modelgen import make_probe  # noqa: E402
from reconciler.serving.registry import EndpointSpec, ModelRegistry  # noqa: E402

RATE = 0.10
CALLS = 20_000
ARRANGEMENTS = ("process", "thread", "draw_only", "one_core", "split_cores", "offer_only", "ring_copy")


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        f = fh.read().rsplit(b")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class _RingChild:
    """A forked process that takes the ring's records, copies their arrays out and frees them (what the
    ``proc`` of a :class:`RingMirror` needs: ``ring``, ``conn``, ``priority``, ``exit_description``)."""

    priority = None

    def __init__(self) -> None:
        from reconciler.agent.shadowring import Ring

        self.ring, fd = Ring.create()
        os.close(fd)
        self.conn, child_conn = mp.get_context("fork").Pipe()
        self.proc = mp.get_context("fork").Process(target=self._run, args=(child_conn,), daemon=True)
        self.proc.start()

    def _run(self, conn: Any) -> None:
        ring, tail, done, wait = self.ring, 0, 0, 0.001
        while True:
            got = ring.take(tail)
            if got is None:  # idle: as the shadow's child, poll every 1 ms backing off to 16
                if conn.poll(wait):
                    try:
                        if conn.recv()[0] == "stop":
                            return
                    except EOFError:
                        return
                wait = min(wait * 2, 0.016)
                continue
            wait = 0.001
            slots, nxt, counted, payload = got
            if isinstance(payload, tuple):
                kept = [np.array(a) for side in payload[1:] for a in side.values()]  # noqa: F841 (a writer's copy)
            got = payload = None
            done += counted
            ring.free(tail, slots, done)
            tail = nxt

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.proc.pid)

    def exit_description(self) -> str:
        return "ended"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)


def _policy(public: bytes, directory: Path) -> Any:
    return parse_policy({"enabled": True, "purpose": "bench", "campaign": "bench",
                         "recipient": base64.b64encode(public).decode(), "sampleRate": RATE,
                         "maxBytes": 256 * 1024 * 1024, "retention": "1d", "batch": {"records": 256},
                         "destination": {"directory": str(directory)}})


def _arrangement(name: str, rounds: int, where: str | None, out: Any) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-path-", dir=where))
    _, public = generate_keypair()
    background = name != "offer_only"
    svc = CaptureService(tmp / "state", "bench-device", background=background,
                         sealer="process" if name == "process" else "thread")
    if name == "one_core":
        os.sched_setaffinity(0, {0})
    on, off = svc.observer_for("m", "1"), svc.observer_for("x", "1")
    child: Any = None
    if name == "ring_copy":
        from reconciler.agent.shadowring import RingMirror
        from reconciler.shadow.spec import ShadowSettings

        child = _RingChild()
        on = RingMirror("m", "1", "2", ShadowSettings(sample_rate=RATE), child)  # type: ignore[assignment]
    svc.configure({"m": _policy(public, tmp / "uploaded")})  # (starts the writer and uploader threads)
    if name == "draw_only":  # the draw and nothing else: what every arrangement pays before it keeps a record
        svc.offer = lambda *a: None  # type: ignore[method-assign]
    if name == "split_cores":
        os.sched_setaffinity(0, {0})
        for t in threading.enumerate():
            if t is not threading.main_thread() and t.native_id:
                os.sched_setaffinity(t.native_id, {1})
    reg = ModelRegistry()
    probe = make_probe(TINY, batch=1)
    assert reg.apply(EndpointSpec("m", "1", blobs=[TINY], probe=probe, threads=1)).ok
    raw = {i["name"]: (np.array(i["data"], np.float32).tobytes(), tuple(i["shape"])) for i in probe["inputs"]}

    def block(observer: Any) -> float:
        with reg.get("m") as m:
            m.inline = True
            m.observer = observer
            t0 = time.thread_time()
            for i in range(CALLS):
                feeds = {k: np.frombuffer(bytes(b), np.float32).reshape(shape) for k, (b, shape) in raw.items()}
                m.infer(feeds, None)
                if not background and i % 2560 == 2559:
                    with svc._queue_lock:
                        svc.queue.clear()
                        svc.queued_bytes = 0
            return (time.thread_time() - t0) / CALLS * 1e6

    block(on)
    block(off)
    cpu0, captured0 = svc.cpu_seconds, svc.counts["captured"]
    if child is not None:
        cpu0, captured0 = child.cpu_seconds(), on.handed  # type: ignore[attr-defined]
    ons, offs = [], []
    for r in range(rounds):  # alternate which goes first
        a, b = (on, off) if r % 2 == 0 else (off, on)
        ta, tb = block(a), block(b)
        ons.append(ta if a is on else tb)
        offs.append(tb if a is on else ta)
    svc.close()
    reg.close()
    captured = svc.counts["captured"] - captured0
    threads_cpu = svc.cpu_seconds - cpu0
    if child is not None:
        time.sleep(0.2)
        captured, threads_cpu = on.handed - captured0, child.cpu_seconds() - cpu0  # type: ignore[attr-defined]
        child.stop()
    per_call = statistics.median(x - y for x, y in zip(ons, offs, strict=True))
    path = per_call / RATE
    threads = threads_cpu / captured * 1e6 if captured else 0.0
    extra = {"sealed_batches": svc.counts["sealed"], "dropped": dict(svc.dropped),
             "cpu_s": {k: round(v, 3) for k, v in {**svc._cpu, "sealer": svc._sealer_cpu}.items()}} \
        if name == "process" else {}
    out.send({**extra, "request_path_us_per_record": round(path, 2), "capture_threads_us_per_record": round(threads, 2),
              "total_us_per_record": round(path + threads, 2),
              "on_vs_off_calling_thread": round(statistics.median(x / y for x, y in zip(ons, offs, strict=True)), 4),
              "off_us_per_call": round(statistics.median(offs), 3)})


def isolated_writer(where: str | None = None) -> float:
    """µs of the writer's drain, seal and upload per record, run back to back with nothing in between."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-path-", dir=where))
    _, public = generate_keypair()
    svc = CaptureService(tmp / "state", "bench-device", background=False, queue_max=1 << 16)
    svc.configure({"m": _policy(public, tmp / "uploaded")})
    obs = svc.observer_for("m", "1")
    n, times = 256 * 40, []
    for _ in range(5):
        for _ in range(n):
            svc.offer(obs, SAMPLED, {"input": np.ones((1, 16), np.float32)}, {"output": np.ones((1, 4), np.float32)})
        t0 = time.thread_time()
        svc.drain()
        svc.flush()
        svc.upload_once()
        times.append((time.thread_time() - t0) / n * 1e6)
    svc.close()
    return round(min(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated arrangements to run (default: all)")
    ap.add_argument("--rounds", type=int, default=12, help="on/off block pairs per arrangement (default 12)")
    ap.add_argument("--dir", default=None, help="where the spool and the destination go (default: the temp dir; "
                    "a tmpfs such as /dev/shm leaves the disk's fsync out, as bench_capture.py --dir does)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no thread or affinity carries over
    out: dict[str, Any] = {"bench": "capture_path", "sample_rate": RATE, "calls_per_block": CALLS,
                           "rounds": args.rounds, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    for name in (args.only.split(",") if args.only else ARRANGEMENTS):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_arrangement, args=(name, args.rounds, args.dir, b))
        p.start()
        out[name] = a.recv()
        p.join()
    out["isolated_writer_us_per_record"] = isolated_writer(args.dir)
    out["dir"] = args.dir or tempfile.gettempdir()
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
