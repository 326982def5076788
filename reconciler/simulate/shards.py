"""A simulated fleet split over K processes: one :class:`~reconciler.simulate.fleet.Simulation` of about N/K
devices per process, so the agents' Python work is not held to one core by the GIL.

    fleet = ShardedFleet(SimSettings(devices=1000, ...), work_dir, processes=4)   # spawned and booted
    for line in fleet.run(duration=300, report_every=1.0): print(json.dumps(line))
    fleet.close()

Device ids and labels are the ones one process would give (shard *i* runs a contiguous range of the global
numbering, ``sim-00000`` …, the canaries are the first K of the whole fleet), so a rollout rehearsed with
``--processes 4`` targets the same devices as with one. The offline and failing shares are drawn per shard.
Each shard sends its :meth:`~reconciler.simulate.fleet.Simulation.report` (with its RSS) to the parent every
``report_every`` seconds over a pipe; the parent sums them (:func:`merge_reports`). When stopped, a shard flushes
its devices' status pushes and sends a last report with their newest status commits (and, when asked, the
per-device record); :meth:`ShardedFleet.close` returns them summed. A shard that dies raises :class:`ShardDied`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.simulate.fleet import SimSettings, Simulation, rss_mb

Report = dict[str, Any]
MAX_PROCESSES = 64
FLUSH_SECONDS = 10.0  # how long a stopping simulation waits for its devices' last status pushes


class ShardDied(RuntimeError):
    """A simulator process exited before it was asked to."""


def _shard(conn: Any, settings: SimSettings, work_dir: Path, report_every: float, per_device: bool = False) -> None:
    import faulthandler
    import logging

    faulthandler.enable()  # a shard that dies in native code says where
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it sends "stop", the shard flushes
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    rss0 = rss_mb()
    sim = Simulation.create(settings, work_dir)
    sim.boot()
    conn.send({**sim.report(), "booted": True, "rss0": rss0})
    stop = threading.Event()
    threading.Thread(target=lambda: (conn.recv(), stop.set()), daemon=True).start()
    for rep in sim.run(10**9, report_every=report_every, stop=stop):
        conn.send({**rep, "rss0": rss0})
    sim.flush_status(FLUSH_SECONDS)
    final = {**sim.report(), "rss0": rss0, "final": True, "tips": sim.status_tips()}
    if per_device:
        final["perDevice"] = sim.per_device(t0=0.0)  # monotonic times: the parent makes them relative
    conn.send(final)
    sim.close()
    conn.send({"closed": True})


def merge_reports(reports: list[Report], devices: int, t: float) -> Report:
    """The shards' reports as one (counts summed; the poll gap spread: the min of the minima, the max of the
    maxima and the median of the shards' medians)."""
    versions: Counter[str] = Counter()
    reported: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    total: Report = {"t": round(t, 2), "devices": devices, "offline": 0, "versions": versions, "requests": requests,
                     "converged": 0, "statusInSync": 0, "statusCommits": 0, "statusPushes": 0, "sessions": 0,
                     "rssMB": 0.0, "queuedPasses": 0}
    gaps = [r["pollGapSeconds"] for r in reports if r.get("pollGapSeconds")]
    for r in reports:
        versions.update(r.get("versions", {}))
        reported.update(r.get("reported", {}))
        requests.update(r.get("requests", {}))
        for k in ("offline", "converged", "statusInSync", "statusCommits", "statusPushes", "sessions", "rssMB",
                  "queuedPasses"):
            total[k] += r.get(k, 0)
    total["rssMB"] = round(total["rssMB"], 1)
    total["versions"], total["requests"] = dict(sorted(versions.items())), dict(requests)
    total["reported"] = dict(sorted(reported.items()))
    total["pollGapSeconds"] = None if not gaps else {
        "min": min(g["min"] for g in gaps), "p50": sorted(g["p50"] for g in gaps)[len(gaps) // 2],
        "max": max(g["max"] for g in gaps)}
    return total


def rebase(record: dict[str, Any], t0: float) -> dict[str, Any]:
    """A per-device record with monotonic times made relative to ``t0``."""
    out = dict(record)
    out["pollTimes"] = [round(t - t0, 2) for t in record["pollTimes"]]
    out["heads"] = [[round(t - t0, 2), h] for t, h in record["heads"]]
    out["served"] = [[round(t - t0, 2), v] for t, v in record["served"]]
    out["pushTimes"] = [round(t - t0, 2) for t in record["pushTimes"]]
    return out


def shard_sizes(devices: int, processes: int) -> list[int]:
    """How many devices each process runs (the first ones one more when it does not divide)."""
    return [n for n in (devices // processes + (1 if i < devices % processes else 0) for i in range(processes)) if n]


class ShardedFleet:
    """The shards of one simulated fleet; see the module docstring. Spawns and boots them in ``__init__``."""

    def __init__(self, settings: SimSettings, work_dir: Path, processes: int, *, report_every: float = 0.2,
                 per_device: bool = False) -> None:
        if not 1 <= processes <= MAX_PROCESSES:
            raise ValueError(f"--processes must be between 1 and {MAX_PROCESSES}")
        Simulation.check(settings)
        ctx = mp.get_context("spawn")  # a clean interpreter: no threads or locks inherited from the parent
        self.devices = settings.devices
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self._started = time.monotonic()
        first = settings.first
        try:
            for i, size in enumerate(shard_sizes(settings.devices, processes)):
                parent, child = ctx.Pipe()
                shard = replace(settings, devices=size, first=first, seed=settings.seed + i,
                                total=settings.total or settings.devices)
                proc = ctx.Process(target=_shard, args=(child, shard, work_dir / f"shard{i}", report_every,
                                                        per_device), daemon=True)
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
                first += size
            self.last: list[Report] = [self._recv(i) for i in range(len(self.conns))]  # booted
        except BaseException:
            self.kill()
            raise
        self.rss0 = sum(r["rss0"] for r in self.last)
        self._started = time.monotonic()

    def _recv(self, i: int) -> Report:
        try:
            return dict(self.conns[i].recv())
        except (EOFError, OSError):
            raise ShardDied(f"simulator process {self.procs[i].pid} exited "
                            f"(exit code {self.procs[i].exitcode})") from None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def poll(self) -> Report:
        """The shards' newest reports, summed (the shape of :meth:`Simulation.report`, plus ``rssMB``)."""
        for i, c in enumerate(self.conns):
            while c.poll():
                self.last[i] = self._recv(i)
            if self.procs[i].exitcode is not None:
                raise ShardDied(f"simulator process {self.procs[i].pid} exited with {self.procs[i].exitcode}")
        return merge_reports(self.last, self.devices, time.monotonic() - self._started)

    def serving(self, version: str) -> int:
        return int(self.poll()["versions"].get(version, 0))

    def wait(self, pred: Callable[[Report], bool], timeout: float) -> float | None:
        """Seconds until ``pred`` held for the summed report, None after ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred(self.poll()):
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    def run(self, duration: float, *, report_every: float = 1.0, stop: threading.Event | None = None
            ) -> Iterator[Report]:
        """The summed report every ``report_every`` seconds for ``duration`` seconds (the shards run anyway)."""
        stop = stop or threading.Event()
        end = time.monotonic() + duration
        while True:
            yield self.poll()
            if stop.is_set() or time.monotonic() >= end:
                return
            stop.wait(max(0.0, min(report_every, end - time.monotonic())))

    def close(self, timeout: float = 120.0) -> Report | None:
        """Stop the shards (each flushes its status pushes first), wait for them, and return their last reports
        summed, with ``tips`` (device -> (status URL, ref, newest status commit)) and ``perDevice`` when asked
        (times relative to the fleet's start); None when a shard did not send its last report."""
        for c in self.conns:
            try:
                c.send("stop")
            except OSError:
                pass
        # A shard reports every report_every seconds whether or not anyone reads; read its pipe until it says
        # "closed", or a shard blocked on a full pipe never gets to flush and exit.
        deadline = time.monotonic() + timeout
        finals: list[Report | None] = [None] * len(self.conns)
        for i, (c, p) in enumerate(zip(self.conns, self.procs, strict=True)):
            while time.monotonic() < deadline:  # an exited shard's last messages are still in the pipe
                try:
                    if not c.poll(0.1):
                        if p.is_alive():
                            continue
                        break
                    msg = c.recv()
                except (EOFError, OSError):
                    break
                if msg == {"closed": True}:
                    break
                if isinstance(msg, dict) and msg.get("final"):
                    finals[i] = msg
            p.join(max(0.0, deadline - time.monotonic()))
        self.kill()
        if any(f is None for f in finals):
            return None
        done = [f for f in finals if f is not None]
        out = merge_reports(done, self.devices, time.monotonic() - self._started)
        out["tips"] = {k: v for f in done for k, v in f["tips"].items()}
        if any("perDevice" in f for f in done):
            out["perDevice"] = {k: rebase(v, self._started) for f in done for k, v in f.get("perDevice", {}).items()}
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
