"""N real agents in one process, scheduled on a small thread pool; convergence reported over time.

    sim = Simulation.create(SimSettings(devices=100, source_url=..., trusted_root=...), work_dir)
    sim.boot()
    for line in sim.run(duration=60): print(json.dumps(line))
    sim.close()

Each device runs :meth:`reconciler.agent.loop.Agent.reconcile_once` whenever its jittered poll interval is due
(the agent's own :func:`~reconciler.agent.schedule.next_delay` after the pass ends, so errors back off as on a
real device).
Offline devices are skipped entirely until :meth:`Simulation.set_offline` brings them back.

:meth:`Simulation.report` is one line of the run: devices per served version, the same among devices whose
newest status is on the server, converged devices, requests, status commits made and pushed, the process's
memory, and the spread of the devices' poll gaps. :meth:`Simulation.per_device` adds what each device did (its
poll count, poll times, the heads its polls saw, the versions it served and when); :func:`status_on_server`
checks the devices' newest status commits against the status branches the server holds (one ``ls-refs`` per
status repository).
"""

from __future__ import annotations

import heapq
import random
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.agent.config import AgentConfig
from reconciler.agent.loop import Agent
from reconciler.agent.schedule import next_delay
from reconciler.core.credentials import Credentials
from reconciler.gitops.statusrepo import status_shard
from reconciler.simulate.components import Counters, SharedRuntime, SharedWork, SimComponents

MAX_DEVICES = 20_000  # one process; each device holds a status thread and a few open files
DEFAULT_FACTS = {"hw.arch": "x86_64", "hw.memoryMB": 4096, "runtime.onnxruntime": "1.20.1"}


def rss_mb() -> float:
    """This process's resident memory (MB; 0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def device_id(prefix: str, number: int) -> str:
    """The simulated device numbered ``number`` (``sim-00042``): the same in one process or split over several."""
    return f"{prefix}-{number:05d}"


@dataclass
class SimSettings:
    devices: int
    source_url: str
    trusted_root: Path
    tuf_url: str | None = None  # base URL: <url>/metadata/ and <url>/targets/ (default: the Fleet's)
    poll_interval: float = 10.0
    heartbeat_interval: float | None = None
    offline_share: float = 0.0
    fail_share: float = 0.0
    canaries: int = 0  # the first K devices get ring=canary, the others ring=stable
    labels: dict[str, str] = field(default_factory=dict)
    prefix: str = "sim"
    workers: int = 8
    seed: int = 1
    timeout: float = 30.0
    credentials: Credentials | None = None  # for the Git server (status pushes), e.g. Basic auth
    tuf_credentials: Credentials | None = None  # for the TUF server
    share_git: bool = True  # one Git object store, source verdicts and loaded manifests for the process
    status: bool = True  # push status/<id> branches (off: an idle-path measurement without the first pushes)
    # Status repositories the devices push to (`status.url`), a device's shard by a hash of its id (with gateways:
    # by its site, see status_url); empty: the fleet repository. Sharding keeps each push's ref walk small.
    status_urls: list[str] = field(default_factory=list)
    status_push_spread: float = 0.0  # the agents' status.pushSpread (seconds)
    first: int = 0  # number of the first device (a process of a sharded fleet runs sim-<first> onwards)
    # A directory of status keys, one file per device id (``modelfleet agent keygen --output DIR/<id>``): the
    # devices sign their status with them, as real ones do; a device without a file pushes unsigned status.
    status_keys: Path | None = None
    # Site gateways (their base URLs, docs/gateway.md): the fleet is cut into len(gateways) sites of contiguous
    # device numbers, each device's `gateway.url` its site's; the URLs above are the central fallback.
    gateways: list[str] = field(default_factory=list)
    total: int | None = None  # devices of the whole fleet (a process of a sharded fleet runs part of it)


def site_of(number: int, total: int, sites: int) -> int:
    """The site of device ``number`` when ``total`` devices are cut into ``sites`` contiguous blocks."""
    return min(sites - 1, number * sites // max(1, total))


def status_url(device: str, number: int, s: SimSettings) -> str | None:
    """The status repository of device ``number``: with gateways, its site's (site k: ``status_urls[k mod R]``,
    so each gateway relays to one repository, docs/scale.md's plan); else its shard by a hash of its id."""
    if s.gateways and s.status_urls:
        return s.status_urls[site_of(number, s.total or s.first + s.devices, len(s.gateways)) % len(s.status_urls)]
    return status_shard(device, s.status_urls)


@dataclass
class SimDevice:
    id: str
    agent: Agent
    components: SimComponents
    offline: bool = False
    failing: bool = False
    running: bool = False
    # (monotonic time, version) each time the served version changed after a pass (the newest 16).
    served: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=16))


class Simulation:
    def __init__(self, settings: SimSettings, devices: list[SimDevice], runtime: SharedRuntime,
                 counters: Counters) -> None:
        self.settings = settings
        self.devices = devices
        self.runtime = runtime
        self.counters = counters
        self._rand = random.Random(settings.seed)
        self._lock = threading.Lock()
        # Passes due but waiting for a free worker thread: above 0 for long, the devices poll less often than
        # asked (the Git server's answer time × devices / workers exceeds the interval): raise --workers.
        self._queued = 0
        self._started = time.monotonic()

    @staticmethod
    def check(s: SimSettings) -> None:
        """ValueError naming the option when ``s`` is out of range."""
        if not 1 <= s.devices <= MAX_DEVICES:
            raise ValueError(f"--devices must be between 1 and {MAX_DEVICES}")
        for name, share in (("offline", s.offline_share), ("fail", s.fail_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"--{name}-share must be between 0 and 1")

    @classmethod
    def create(cls, s: SimSettings, work_dir: Path) -> Simulation:
        cls.check(s)
        counters = Counters()
        runtime = SharedRuntime(counters)
        shared = SharedWork(work_dir) if s.share_git else None
        rand = random.Random(s.seed)
        numbers = range(s.first, s.first + s.devices)
        ids = [device_id(s.prefix, i) for i in numbers]
        # Canaries stay online: a rehearsal needs its first ring (a share of N, taken from the others).
        pool = [d for i, d in zip(numbers, ids, strict=True) if i >= s.canaries] or ids
        offline = set(rand.sample(pool, min(len(pool), round(s.offline_share * len(ids)))))
        failing = set(rand.sample(ids, round(s.fail_share * len(ids))))
        devices = []
        for i, dev_id in zip(numbers, ids, strict=True):
            labels = {**s.labels, "ring": "canary" if i < s.canaries else "stable"}
            cfg = AgentConfig(
                device_id=dev_id, source_url=s.source_url, trusted_root=s.trusted_root, labels=labels,
                state_dir=work_dir / dev_id, poll_interval=s.poll_interval, source_timeout=s.timeout,
                tuf_timeout=s.timeout, heartbeat_interval=s.heartbeat_interval, metrics_enabled=False,
                tuf_metadata_url=f"{s.tuf_url.rstrip('/')}/metadata/" if s.tuf_url else None,
                tuf_targets_url=f"{s.tuf_url.rstrip('/')}/targets/" if s.tuf_url else None,
                max_concurrent_downloads=1, source_credentials=s.credentials or Credentials(),
                tuf_credentials=s.tuf_credentials or Credentials(), status_enabled=s.status,
                status_url=status_url(dev_id, i, s), status_push_spread=s.status_push_spread,
                status_signing_key=s.status_keys / dev_id if s.status_keys and (s.status_keys / dev_id).is_file()
                else None,
                gateway_url=s.gateways[site_of(i, s.total or s.first + s.devices, len(s.gateways))] if s.gateways
                else None,
            )
            comp = SimComponents.build(cfg, runtime, counters, facts=DEFAULT_FACTS, failing=dev_id in failing,
                                       shared=shared)
            devices.append(SimDevice(dev_id, Agent(cfg, comp), comp, dev_id in offline, dev_id in failing))
        return cls(s, devices, runtime, counters)

    def boot(self) -> None:
        with ThreadPoolExecutor(self.settings.workers) as pool:
            list(pool.map(lambda d: d.agent.boot(), self.devices))
        self._started = time.monotonic()

    def set_offline(self, ids: set[str] | None, offline: bool) -> None:
        """Take devices off the network (no requests at all) or bring them back (None: every device)."""
        with self._lock:
            for d in self.devices:
                if ids is None or d.id in ids:
                    d.offline = offline

    # -- observation -------------------------------------------------------------------------------------

    @staticmethod
    def _served(d: SimDevice, endpoint: str | None = None) -> str:
        """The version ``d`` serves (its first endpoint's, or ``endpoint``'s); ``-`` for nothing yet."""
        eps = d.agent.journal.endpoints
        names = [endpoint] if endpoint else sorted(eps)
        served = [eps[n].active.version for n in names if n in eps and eps[n].active is not None]
        return served[0] if served else "-"

    def versions(self, endpoint: str | None = None) -> dict[str, int]:
        """Devices per served version (``-`` for nothing yet)."""
        return dict(sorted(Counter(self._served(d, endpoint) for d in self.devices).items()))

    def reported(self) -> dict[str, int]:
        """Devices per served version among those whose newest status is on the Git server (what gates see)."""
        synced = [d for d in self.devices
                  if (w := d.components.status_writer) is not None and w.tip is not None and w.in_sync()]
        return dict(sorted(Counter(self._served(d) for d in synced).items()))

    def converged(self) -> int:
        """Online devices whose last pass converged (serving the desired state of the commit they applied)."""
        return sum(1 for d in self.devices if not d.offline and d.agent.last_result is not None
                   and d.agent.last_result.converged)

    def report(self) -> dict[str, Any]:
        made = pushed = synced = 0
        for d in self.devices:
            c, p = d.components.status_counts()
            made, pushed = made + c, pushed + p
            w = d.components.status_writer
            synced += w is not None and not d.offline and w.tip is not None and w.in_sync()
        return {"t": round(time.monotonic() - self._started, 2), "devices": len(self.devices),
                "offline": sum(d.offline for d in self.devices), "versions": self.versions(),
                "reported": self.reported(), "converged": self.converged(), "statusInSync": synced,
                "requests": self.counters.snapshot(), "statusCommits": made, "statusPushes": pushed,
                "sessions": self.runtime.sessions(), "rssMB": round(rss_mb(), 1), "queuedPasses": self._queued,
                "pollGapSeconds": poll_gaps([d.components.polls.times for d in self.devices])}

    def per_device(self, t0: float | None = None) -> dict[str, dict[str, Any]]:
        """What each device did, times in seconds since ``t0`` (monotonic; default: the run's start): its poll
        count, the times of its newest polls, the heads they saw first (``[t, head]``), the versions it served
        from when (``[t, version]``), its status commits made and pushed, and when its newest pushes landed."""
        base = self._started if t0 is None else t0
        out = {}
        for d in self.devices:
            log = d.components.polls
            made, pushed = d.components.status_counts()
            out[d.id] = {"polls": log.count, "pollTimes": [round(t - base, 2) for t in log.times],
                         "heads": [[round(t - base, 2), h[:12]] for t, h in log.heads],
                         "served": [[round(t - base, 2), v] for t, v in d.served],
                         "pushTimes": [round(t - base, 2) for t in d.components.pushed],
                         "offline": d.offline, "statusCommits": made, "statusPushes": pushed}
        return out

    def status_tips(self) -> dict[str, tuple[str, str | None, str | None]]:
        """device id -> (status repository URL, branch ref, the device's newest status commit) for devices that
        write status."""
        out = {}
        for d in self.devices:
            w = d.components.status_writer
            if w is not None:
                out[d.id] = (w.url, w.ref, w.tip)
        return out

    # -- running -----------------------------------------------------------------------------------------

    def _pass(self, d: SimDevice) -> float:
        """One pass of ``d``; returns the delay until its next one (from now, the pass's end, as a real agent)."""
        try:
            d.agent.reconcile_once()
        finally:
            d.running = False
            served = self._served(d)
            if not d.served or d.served[-1][1] != served:
                d.served.append((time.monotonic(), served))
        return next_delay(self.settings.poll_interval, d.agent.errors, self._rand.random())

    def run(self, duration: float, *, report_every: float = 1.0, stop: threading.Event | None = None
            ) -> Iterator[dict[str, Any]]:
        """Run every online device's loop for ``duration`` seconds, yielding :meth:`report` every ``report_every``.

        The first pass of each device is spread over one poll interval, as devices booted at random times.
        """
        stop = stop or threading.Event()
        now = time.monotonic()
        due = [(now + self._rand.random() * self.settings.poll_interval, i) for i in range(len(self.devices))]
        heapq.heapify(due)
        end = now + duration
        next_report = now
        pending: list[Any] = []
        with ThreadPoolExecutor(self.settings.workers, thread_name_prefix="sim") as pool:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_report:
                    yield self.report()
                    next_report = now + report_every
                if now >= end:
                    break
                while due and due[0][0] <= now:
                    _, i = heapq.heappop(due)
                    d = self.devices[i]
                    if d.offline:
                        heapq.heappush(due, (now + self.settings.poll_interval, i))
                        continue
                    d.running = True
                    fut = pool.submit(self._pass, d)
                    pending.append((fut, i))
                still = []
                for fut, i in pending:
                    if fut.done():
                        delay = fut.result() if fut.exception() is None else self.settings.poll_interval
                        heapq.heappush(due, (time.monotonic() + delay, i))
                    else:
                        still.append((fut, i))
                pending = still
                self._queued = max(0, len(pending) - self.settings.workers)
                wake = min([next_report, end] + ([due[0][0]] if due else []))
                stop.wait(max(0.0, min(0.05, wake - time.monotonic())))
            for fut, _ in pending:
                fut.result()
        yield self.report()

    def flush_status(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        ok = True
        for d in self.devices:
            w = d.components.status_writer
            if w is not None and not d.offline:
                ok = w.flush(max(0.1, deadline - time.monotonic())) and ok
        return ok

    def close(self) -> None:
        with ThreadPoolExecutor(self.settings.workers) as pool:
            list(pool.map(lambda d: d.agent.close(), self.devices))
        self.runtime.close()


def poll_gaps(logs: list[Any]) -> dict[str, float] | None:
    """min / median / max of the gap between each device's last two polls (None before any device polled
    twice): the gap is the poll interval with its ±10 % jitter, plus the pass, plus any wait for a free
    worker thread; a gap far below the interval would mean a device polled more often than configured."""
    gaps = sorted(t[-1] - t[-2] for t in logs if len(t) >= 2)
    if not gaps:
        return None
    return {"min": round(gaps[0], 2), "p50": round(statistics.median(gaps), 2), "max": round(gaps[-1], 2)}


def status_on_server(tips: dict[str, tuple[str, str | None, str | None]], *, credentials: Credentials | None = None,
                     timeout: float = 60.0) -> dict[str, int]:
    """How many devices' newest status commit is their branch's tip on the server (``onServer``), how many
    branches hold an older one or none (``behind``), and devices whose newest status is not on the server
    because the device made none yet (``none``). One ``ls-refs`` (or ``git ls-remote``) per status repository.
    ``tips``: :meth:`Simulation.status_tips`, merged over processes."""
    from reconciler.gitops.lsrefs import remote_refs

    by_url: dict[str, dict[str, str]] = {}
    out = {"onServer": 0, "behind": 0, "none": 0, "unreachable": 0}
    for url, ref, tip in tips.values():
        if tip is None or ref is None:
            out["none"] += 1
            continue
        if url not in by_url:
            prefix = ref.rsplit("/", 1)[0] + "/"
            try:
                by_url[url] = remote_refs(url, prefix, credentials=credentials, timeout=timeout)
            except Exception:  # noqa: BLE001 - reported as a count, the run's report stays printable
                by_url[url] = {"": "unreachable"}
        refs = by_url[url]
        if refs.get("") == "unreachable":
            out["unreachable"] += 1
        elif refs.get(ref) == tip:
            out["onServer"] += 1
        else:
            out["behind"] += 1
    return out
