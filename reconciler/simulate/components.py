"""The simulated device's wiring: real Git source, TUF client, store and status writer; a shared runtime.

:class:`SimComponents` is :class:`reconciler.agent.wiring.Components` with these differences:

- the runtime is a :class:`SharedRuntime`: one real :class:`~reconciler.serving.registry.ModelRegistry` for the
  whole simulated fleet, holding one health-checked session per model digest — the first device that loads a
  digest pays the real load and health check, the others reuse its verdict (one ONNX Runtime session, not N);
- :class:`SharedWork` holds what N devices with the same settings would compute bit-identically from the same
  input: one Git object store for the process (a commit another simulated device fetched is not fetched again;
  each device still polls the server itself), the source verdict per (head, last applied), the loaded,
  validated manifests per commit, and the signature check of identical TUF metadata bytes
  (:mod:`~reconciler.simulate.sharedtuf`). Everything a device decides (membership, desired state, TUF refresh and
  verified download into its own store, apply, status) still runs per device;
- no inference server and no fact detection subprocess (facts are given), no heap trim after each pass (N
  devices share one heap: trimming it per device walks all of it);
- faults: an offline device makes no request at all (the scheduler does not run it); a *failing* device fails
  the health check of every version it updates to (its first install succeeds), as a bad driver would.

Every request the device makes is counted in a shared :class:`Counters`; each device also keeps its own poll
count, the monotonic times of its last :data:`MAX_POLL_TIMES` polls and of the polls that saw a new head
(:class:`PollLog`), and the times its newest status pushes landed (the simulator's per-device report,
docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.agent.config import AgentConfig
from reconciler.agent.journal import EndpointRecord
from reconciler.agent.wiring import Components, _endpoint_spec, git_source


class Counters:
    """Client-side request counts of the whole simulated fleet (thread safe)."""

    FIELDS = ("gitPolls", "gitFetches", "tufRefreshes", "tufDownloads", "healthChecks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


MAX_POLL_TIMES = 256  # per device: the newest polls (a bounded record, whatever the run's length)
MAX_PUSH_TIMES = 32  # per device: the newest successful status pushes


class PollLog:
    """One simulated device's polls: how many, when (``time.monotonic()``, the newest :data:`MAX_POLL_TIMES`),
    and when a poll saw a head other than the previous poll's (the newest 16, with that head)."""

    def __init__(self) -> None:
        self.count = 0
        self.times: deque[float] = deque(maxlen=MAX_POLL_TIMES)
        self.heads: deque[tuple[float, str]] = deque(maxlen=16)
        self._head: str | None = None

    def record(self, t: float, head: str | None) -> None:
        self.count += 1
        self.times.append(t)
        if head and head != self._head:
            self.heads.append((t, head))
            self._head = head


class SharedRuntime:
    """One real registry for the whole simulated fleet: an endpoint per model digest, loaded and checked once."""

    def __init__(self, counters: Counters) -> None:
        from reconciler.serving.registry import ModelRegistry

        self.registry = ModelRegistry()
        self.counters = counters
        self._verdicts: dict[str, tuple[bool, str, str]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def load(self, spec: Any) -> tuple[bool, str, str]:
        key = spec.digest or f"{spec.name}@{spec.version}"
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._verdicts:
                self.counters.add("healthChecks")
                shared = dataclasses.replace(spec, name=f"m-{key[:16]}", keep_previous=False)
                result = self.registry.apply(shared)
                self._verdicts[key] = (bool(result.ok), str(result.reason or ""), str(result.message or ""))
            return self._verdicts[key]

    def sessions(self) -> int:
        return sum(1 for st in self.registry.endpoints().values() if st.version is not None)

    def close(self) -> None:
        for name in list(self.registry.endpoints()):
            self.registry.remove(name)


class SharedWork:
    """Results N simulated devices of one process share (see the module docstring); bounded."""

    MAX_COMMITS = 16

    def __init__(self, work_dir: Path) -> None:
        from reconciler.simulate.sharedtuf import VerifiedMetadata

        self.git_cache = work_dir / "_shared" / "git"
        self.verdicts: dict[Any, Any] = {}  # GitSource bounds it
        self.tuf_metadata = VerifiedMetadata()
        self._manifests: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def manifests(self, commit: str, load: Callable[[], Any]) -> Any:
        """The LoadResult of ``commit``: loaded by the first device that needs it, then shared (never mutated)."""
        with self._lock:
            lock = self._locks.setdefault(commit, threading.Lock())
        with lock:
            if commit not in self._manifests:
                loaded = load()
                with self._lock:
                    if len(self._manifests) >= self.MAX_COMMITS:
                        self._manifests.clear()
                        self._locks = {commit: lock}
                    self._manifests[commit] = loaded
            return self._manifests[commit]


class SimComponents(Components):
    def __init__(self, config: AgentConfig, runtime: SharedRuntime, counters: Counters, *,
                 facts: Mapping[str, Any], failing: bool = False) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.counters = counters
        self.facts = dict(facts)
        self.failing = failing
        self.loaded: dict[str, str] = {}  # endpoint -> version this device serves
        self.shared: SharedWork | None = None
        self.polls = PollLog()
        self.pushed: deque[float] = deque(maxlen=MAX_PUSH_TIMES)  # when this device's status pushes landed

    @classmethod
    def build(cls, config: AgentConfig, runtime: SharedRuntime, counters: Counters, *,
              facts: Mapping[str, Any], failing: bool = False, shared: SharedWork | None = None) -> SimComponents:
        real = Components.real(config)
        c = cls(config, runtime, counters, facts=facts, failing=failing)
        c.store, c.source, c._decryption_key = real.store, real.source, real._decryption_key
        c.shared = shared
        if shared is not None:
            real.source.close()
            c.source = git_source(config, shared.git_cache, shared.verdicts)
        return c

    def load_manifests(self, commit: str) -> Any:
        if self.shared is None:
            return super().load_manifests(commit)
        return self.shared.manifests(commit, lambda: Components.load_manifests(self, commit))

    def detect_facts(self) -> dict[str, Any]:
        return dict(self.facts)

    def start_runtime(self) -> None:
        if self.config.status_enabled:
            self.status_writer = self._new_status_writer()

    def _new_status_writer(self) -> Any:
        writer = super()._new_status_writer()
        count = writer.on_push

        def pushed(ok: bool, reason: str) -> None:  # in the writer's thread, after each push attempt
            if ok:
                self.pushed.append(time.monotonic())
            if count is not None:
                count(ok, reason)
        writer.on_push = pushed
        return writer

    def load_endpoint(self, rec: EndpointRecord, config: AgentConfig, boot: bool) -> tuple[bool, str, str]:
        if self.failing and not boot and self.loaded.get(rec.name) not in (None, rec.version):
            return False, "HealthCheckFailed", "injected fault: this simulated device fails every update"
        try:
            blobs = [self._blob(t) for t in rec.targets]
            import json

            probe = json.loads(self._blob(rec.probe)) if rec.probe is not None else None
        except (OSError, ValueError) as exc:
            return False, "ArtifactUnreadable", str(exc)
        ok, reason, message = self.runtime.load(_endpoint_spec(rec, blobs, probe, config))
        if ok:
            self.loaded[rec.name] = rec.version
        return ok, reason, message

    def serving_endpoints(self) -> set[str]:
        return set(self.loaded)

    def remove_endpoint(self, name: str) -> None:
        self.loaded.pop(name, None)

    def poll(self, last: str | None) -> Any:
        t = time.monotonic()
        result = super().poll(last)
        self.polls.record(t, getattr(result, "head", None))
        self.counters.add("gitPolls")
        if getattr(result, "fetched", False):
            self.counters.add("gitFetches")
        return result

    def tuf_refresh(self, metadata_url: str, targets_url: str) -> None:
        self.counters.add("tufRefreshes")
        super().tuf_refresh(metadata_url, targets_url)

    def _new_tuf_client(self, metadata_url: str, targets_url: str, cls: type[Any] | None = None, **kw: Any) -> Any:
        if self.shared is None or cls is not None:
            return super()._new_tuf_client(metadata_url, targets_url, cls, **kw)
        from reconciler.simulate.sharedtuf import SharedTufClient

        return super()._new_tuf_client(metadata_url, targets_url, SharedTufClient, verified=self.shared.tuf_metadata,
                                       **kw)

    def tuf_fetch(self, paths: list[str]) -> tuple[dict[str, Any], int]:
        fetched, downloaded = super().tuf_fetch(paths)
        if downloaded:
            self.counters.add("tufDownloads", len(paths))
        return fetched, downloaded

    def watch_bundles(self, on_bundle: Any) -> None:
        return None

    def release_memory(self) -> None:
        """Nothing: N devices share one heap, and trimming it after every device's pass walks all of it."""

    def status_counts(self) -> tuple[int, int]:
        """(status commits made, pushed) by this device's writer."""
        w = self.status_writer
        return (w.commits, w.pushes) if w is not None else (0, 0)
