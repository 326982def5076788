"""A simulated fleet split over K processes (bench helper): one :class:`~reconciler.simulate.fleet.Simulation`
of N/K devices per process, so the agents' Python work is not limited to one core by the GIL.

Each shard runs its devices' loops and sends :meth:`Simulation.report` (plus its RSS) to the parent every
0.2 s over a pipe; the parent only commits to Git and sums what the shards report. Device ids stay unique
(``<prefix><shard>-NNNNN``); rollout membership is computed per device id as always.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.simulate.fleet import SimSettings, Simulation

Report = dict[str, Any]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _shard(conn: Any, settings: SimSettings, work_dir: Path) -> None:
    import faulthandler
    import logging

    faulthandler.enable()  # a shard that dies in native code says where

    logging.getLogger("reconciler").setLevel(logging.ERROR)
    rss0 = _rss_mb()
    sim = Simulation.create(settings, work_dir)
    sim.boot()
    conn.send({"booted": True, "rss0": rss0})
    stop = threading.Event()
    threading.Thread(target=lambda: (conn.recv(), stop.set()), daemon=True).start()
    for rep in sim.run(10**9, report_every=0.2, stop=stop):
        conn.send({**rep, "rssMB": _rss_mb(), "rss0": rss0})
    sim.close()
    conn.send({"closed": True})


class ShardedFleet:
    def __init__(self, settings: SimSettings, work_dir: Path, processes: int) -> None:
        ctx = mp.get_context("spawn")
        n = settings.devices
        sizes = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
        self.devices = n
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.last: list[Report] = []
        for i, size in enumerate(s for s in sizes if s):
            parent, child = ctx.Pipe()
            shard = replace(settings, devices=size, prefix=f"{settings.prefix}{i}", seed=settings.seed + i)
            proc = ctx.Process(target=_shard, args=(child, shard, work_dir / f"shard{i}"), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.conns.append(parent)
        self.last = [c.recv() for c in self.conns]  # booted
        self.rss0 = sum(r["rss0"] for r in self.last)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def poll(self) -> Report:
        """The shards' newest reports, summed; RuntimeError when a shard died (its devices stopped reporting)."""
        for proc in self.procs:
            if proc.exitcode is not None:
                raise RuntimeError(f"simulator shard {proc.pid} exited with {proc.exitcode}")
        for i, c in enumerate(self.conns):
            while c.poll():
                self.last[i] = c.recv()
        total: Report = {"versions": Counter(), "requests": Counter(), "statusCommits": 0, "statusPushes": 0,
                         "sessions": 0, "rssMB": 0.0}
        for r in self.last:
            total["versions"].update(r.get("versions", {}))
            total["requests"].update(r.get("requests", {}))
            for k in ("statusCommits", "statusPushes", "sessions", "rssMB"):
                total[k] += r.get(k, 0)
        return total

    def serving(self, version: str) -> int:
        return int(self.poll()["versions"].get(version, 0))

    def wait(self, pred: Callable[[Report], bool], timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred(self.poll()):
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    def close(self) -> None:
        for c in self.conns:
            c.send("stop")
        for p in self.procs:
            p.join(120)
            if p.is_alive():
                p.kill()
