"""``bench_shadow.py``'s baseline: the shadow candidate run by a worker thread of the serving process.

The product does not use it any more: the agent's :class:`~reconciler.agent.shadowring.RingMirror` has the same
surface but hands each sample to the candidate's own process through shared memory. This is the design it
replaced, kept to measure what a thread sharing the interpreter lock costs the live requests.

``observe`` runs on the request path (after the live answer is computed, in whatever thread served it): a
sampling draw, a size check and an append — it never waits and never copies (the tensors are the request's own
arrays, which nothing writes after the answer; a pooled request buffer is reused only once nothing refers to it).
A full queue (``queue`` requests or :data:`~reconciler.shadow.spec.QUEUE_BYTES` of tensors) drops the sample and
counts it, so a candidate slower than the traffic costs samples, never latency.

The worker calls the injected ``run(feeds) -> outputs``, compares, and adds to
:class:`~reconciler.shadow.stats.ShadowStats`. A ``run`` that computes in the worker thread itself asks for
``priority``: the thread is lowered as it starts (``SCHED_IDLE``, else nice 19:
:mod:`~reconciler.shadow.priority`) and reports what it got. After a failure (the candidate raised or returned NaN) the mirror
stops: the verdict is final. No I/O here: the session is the caller's.
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from reconciler.shadow.compare import compare
from reconciler.shadow.gate import Verdict, device_verdict
from reconciler.shadow.priority import NORMAL, lower_thread
from reconciler.shadow.spec import QUEUE_BYTES, ShadowSettings
from reconciler.shadow.stats import ShadowStats


class Mirror:
    """One endpoint's shadow comparison: the live version ``live_version`` mirrored to a candidate ``run``."""

    def __init__(self, endpoint: str, live_version: str, candidate_version: str, settings: ShadowSettings,
                 run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], *,
                 elapsed: Callable[[], float] = lambda: 0.0,
                 on_verdict: Callable[[Verdict], None] | None = None,
                 rand: Callable[[], float] = random.random, priority: str | None = None) -> None:
        self.endpoint, self.live_version, self.candidate_version = endpoint, live_version, candidate_version
        self.settings = settings
        self.stats = ShadowStats()
        self._run = run
        self._elapsed = elapsed
        self._on_verdict = on_verdict
        self._rand = rand
        self._lock = threading.Lock()  # stats and queue
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray], float, int]] = (
            collections.deque())
        self._queue_bytes = 0
        self._stopped = False
        self._final = False  # failed: no more comparisons
        self._busy = False  # the worker is running a popped sample
        self._judged = 0.0  # when the worker last judged (monotonic)
        self.verdict = Verdict("Comparing")
        self._thread = threading.Thread(target=self._work, name=f"modelfleet-shadow-{endpoint}", daemon=True)
        self._thread.start()
        # lowered from here, not by the worker itself: the constructor never waits for an idle thread to run
        self.native_id = self._thread.native_id  # the worker thread's Linux TID
        #: What the candidate runs at (:mod:`~reconciler.shadow.priority`): what the worker thread obtained, or
        #: (``priority`` None: the thread is left alone, ``run`` hands the work elsewhere) what the caller sets.
        self.priority: str | None = None
        if priority is not None:
            self.priority = lower_thread(self.native_id, priority) if self.native_id else NORMAL

    # -- the request path ----------------------------------------------------------------------------------

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        rate = self.settings.sample_rate
        with self._lock:
            self.stats.offered += 1
            if self._final or self._stopped:
                return
            if rate < 1.0 and self._rand() >= rate:
                self.stats.sampled_out += 1
                return
            size = sum(a.nbytes for a in feeds.values())
            if len(self._queue) >= self.settings.queue or self._queue_bytes + size > QUEUE_BYTES:
                self.stats.dropped += 1
                return
            self._queue.append((feeds, outputs, seconds, size))
            self._queue_bytes += size
            self._wake.notify()

    # -- the worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    self._queue.clear()
                    return
                feeds, live, live_s, size = self._queue.popleft()
                self._queue_bytes -= size
                self._busy = True
            try:
                self._one(feeds, live, live_s)
            finally:
                with self._lock:
                    self._busy = False

    def _one(self, feeds: dict[str, np.ndarray], live: dict[str, np.ndarray], live_s: float) -> None:
        t0 = time.perf_counter()
        try:
            cand = self._run(feeds)
        except Exception as exc:  # the candidate's failure is the verdict, never the thread's end
            took = time.perf_counter() - t0
            if self._stopped:  # its process ended because the comparison did: not the candidate's failure
                return
            with self._lock:
                self.stats.add_error(f"{type(exc).__name__}: {exc}", took)
            self._judge()
            return
        took = time.perf_counter() - t0
        try:
            result = compare(live, cand, self.settings.compare)
        except Exception as exc:  # an unexpected tensor layout: one skipped sample, reported
            with self._lock:
                self.stats.skipped += 1
                self.stats.last_mismatch = f"cannot compare: {type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.stats.add(result, took, live_s)
        self._judge()

    def _judge(self) -> None:
        st = self.stats
        if not (st.errors or st.nonfinite or st.samples >= self.settings.min_samples):
            return  # nothing to decide yet: the verdict stays Comparing (judge() re-checks maxDuration)
        now = time.monotonic()
        if not (st.errors or st.nonfinite) and self.verdict.state != "Comparing" and now - self._judged < 0.2:
            return  # a settled verdict is re-checked at most 5 times a second, not per sample
        self._judged = now
        with self._lock:
            verdict = device_verdict(self.stats, self.settings, elapsed=self._elapsed())
            changed = (verdict.state, verdict.reason, verdict.switch) != (
                self.verdict.state, self.verdict.reason, self.verdict.switch)
            self.verdict = verdict
            if verdict.failed:
                self._final = True
                self._queue.clear()
                self._queue_bytes = 0
        if changed and self._on_verdict is not None:
            with contextlib.suppress(Exception):
                self._on_verdict(verdict)

    # -- control -------------------------------------------------------------------------------------------

    def judge(self) -> Verdict:
        """The verdict now (also re-checks ``maxDuration``, which passes without samples)."""
        with self._lock:
            self.verdict = device_verdict(self.stats, self.settings, elapsed=self._elapsed())
            return self.verdict

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = self.stats.snapshot()
            snap["queued"] = len(self._queue)
            if self.priority is not None:
                snap["priority"] = self.priority
            return snap

    def idle(self) -> bool:
        """Nothing queued (tests and the bench wait for it)."""
        with self._lock:
            return not self._queue and not self._busy

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
