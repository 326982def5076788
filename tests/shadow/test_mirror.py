"""The mirror: bounded, never blocking the request path, counting what it drops, final after a failure."""

from __future__ import annotations

import threading
import time

import numpy as np

from reconciler.shadow import gate as G
from reconciler.shadow.mirror import Mirror
from reconciler.shadow.spec import ShadowSettings


def _wait(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _req(i: int) -> tuple[dict, dict]:
    x = np.full((1, 4), float(i), np.float32)
    return {"x": x}, {"y": np.array([[0.0, 1.0]], np.float32)}


def test_agreeing_candidate_and_sampling() -> None:
    verdicts = []
    draws = iter([0.1, 0.9] * 100)
    m = Mirror("ep", "1", "2", ShadowSettings(sample_rate=0.5, min_samples=10), lambda f: {"y": np.array([[0.1, 0.9]])},
               on_verdict=verdicts.append, rand=lambda: next(draws))
    try:
        for i in range(40):
            m.observe(*_req(i), 0.001)
        _wait(m.idle)
        snap = m.snapshot()
        assert (snap["offered"], snap["sampledOut"], snap["samples"], snap["agreed"]) == (40, 20, 20, 20)
        assert m.judge().state == G.AGREEING and [v.state for v in verdicts] == [G.AGREEING]
    finally:
        m.stop()


def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    gate = threading.Event()

    def slow(feeds: dict) -> dict:
        gate.wait(10)
        return {"y": np.array([[0.0, 1.0]], np.float32)}

    m = Mirror("ep", "1", "2", ShadowSettings(sample_rate=1.0, min_samples=1), slow)
    try:
        t0 = time.perf_counter()
        for i in range(500):
            m.observe(*_req(i), 0.001)
        took = time.perf_counter() - t0
        snap = m.snapshot()
        # one in the worker's hands, `queue` waiting, the rest dropped
        assert snap["dropped"] == 500 - 1 - m.settings.queue or snap["dropped"] == 500 - m.settings.queue
        assert took < 1.0  # generous: 500 offers, none waited for the blocked candidate
        gate.set()
        _wait(m.idle)
        assert m.snapshot()["requests"] + m.snapshot()["dropped"] == 500
    finally:
        gate.set()
        m.stop()


def test_a_raising_candidate_fails_once_and_stops_comparing() -> None:
    calls = []

    def boom(feeds: dict) -> dict:
        calls.append(1)
        raise RuntimeError("candidate exploded")

    verdicts = []
    m = Mirror("ep", "1", "2", ShadowSettings(sample_rate=1.0, min_samples=1), boom, on_verdict=verdicts.append)
    try:
        m.observe(*_req(0), 0.001)
        _wait(lambda: bool(verdicts))
        for i in range(20):
            m.observe(*_req(i), 0.001)
        _wait(m.idle)
        assert verdicts[0].failed and "candidate exploded" in verdicts[0].message
        assert len(calls) == 1 and m.snapshot()["errors"] == 1 and m.snapshot()["offered"] == 21
    finally:
        m.stop()
