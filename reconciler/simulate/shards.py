"""A simulated fleet split over K processes: one :class:`~reconciler.simulate.fleet.Simulation` of about N/K
devices per process, so the agents' Python work is not held to one core by the GIL.

    fleet = ShardedFleet(SimSettings(devices=1000, ...), work_dir, processes=4)   # spawned and booted
    for line in fleet.run(duration=300, report_every=1.0): print(json.dumps(line))
    fleet.close()

Device ids and labels are the ones one process would give (shard *i* runs a contiguous range of the global
numbering, ``sim-00000`` …, the canaries are the first K of the whole fleet), so a rollout rehearsed with
``--processes 4`` targets the same devices as with one. The offline and failing shares are drawn per shard.
Each shard sends its :meth:`~reconciler.simulate.fleet.Simulation.report` (plus its RSS) to the parent every
``report_every`` seconds over a pipe; the parent sums them. A shard that dies raises :class:`ShardDied`.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.simulate.fleet import SimSettings, Simulation

Report = dict[str, Any]
MAX_PROCESSES = 64


class ShardDied(RuntimeError):
    """A simulator process exited before it was asked to."""


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _shard(conn: Any, settings: SimSettings, work_dir: Path, report_every: float) -> None:
    import faulthandler
    import logging

    faulthandler.enable()  # a shard that dies in native code says where
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    rss0 = _rss_mb()
    sim = Simulation.create(settings, work_dir)
    sim.boot()
    conn.send({**sim.report(), "booted": True, "rss0": rss0, "rssMB": _rss_mb()})
    stop = threading.Event()
    threading.Thread(target=lambda: (conn.recv(), stop.set()), daemon=True).start()
    for rep in sim.run(10**9, report_every=report_every, stop=stop):
        conn.send({**rep, "rssMB": _rss_mb(), "rss0": rss0})
    sim.flush_status(10.0)
    sim.close()
    conn.send({"closed": True})


def shard_sizes(devices: int, processes: int) -> list[int]:
    """How many devices each process runs (the first ones one more when it does not divide)."""
    return [n for n in (devices // processes + (1 if i < devices % processes else 0) for i in range(processes)) if n]


class ShardedFleet:
    """The shards of one simulated fleet; see the module docstring. Spawns and boots them in ``__init__``."""

    def __init__(self, settings: SimSettings, work_dir: Path, processes: int, *, report_every: float = 0.2) -> None:
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
                shard = replace(settings, devices=size, first=first, seed=settings.seed + i)
                proc = ctx.Process(target=_shard, args=(child, shard, work_dir / f"shard{i}", report_every),
                                   daemon=True)
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
        versions: Counter[str] = Counter()
        reported: Counter[str] = Counter()
        requests: Counter[str] = Counter()
        total: Report = {"t": round(time.monotonic() - self._started, 2), "devices": self.devices, "offline": 0,
                         "versions": versions, "requests": requests, "statusCommits": 0, "statusPushes": 0,
                         "sessions": 0, "rssMB": 0.0}
        for r in self.last:
            versions.update(r.get("versions", {}))
            reported.update(r.get("reported", {}))
            requests.update(r.get("requests", {}))
            for k in ("offline", "statusCommits", "statusPushes", "sessions", "rssMB"):
                total[k] += r.get(k, 0)
        total["versions"], total["requests"] = dict(sorted(versions.items())), dict(requests)
        total["reported"] = dict(sorted(reported.items()))
        return total

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
            rep = self.poll()
            rep.pop("rssMB", None)
            yield rep
            if stop.is_set() or time.monotonic() >= end:
                return
            stop.wait(max(0.0, min(report_every, end - time.monotonic())))

    def close(self, timeout: float = 120.0) -> None:
        """Stop the shards (each flushes its status pushes first) and wait for them."""
        for c in self.conns:
            try:
                c.send("stop")
            except OSError:
                pass
        # A shard reports every report_every seconds whether or not anyone reads; read its pipe until it says
        # "closed", or a shard blocked on a full pipe never gets to flush and exit.
        deadline = time.monotonic() + timeout
        for c, p in zip(self.conns, self.procs, strict=True):
            while p.is_alive() and time.monotonic() < deadline:
                try:
                    if c.poll(0.1) and c.recv() == {"closed": True}:
                        break
                except (EOFError, OSError):
                    break
            p.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
