"""The shadow's shared-memory ring: what the request path writes is what the child reads, a full or unfit ring
drops and counts (never waits), and a bad record costs one sample, not the child.

The first tests read the ring's records in this process (the child's own code: :meth:`Ring.take`); the others run
the real candidate process, and one stops it (SIGSTOP: a candidate that gets no CPU at all) while a real HTTP
server answers 200 requests with the serving version.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

import numpy as np
import pytest

from reconciler.agent.shadowing import ShadowSupervisor
from reconciler.agent.shadowproc import CandidateProcess
from reconciler.agent.shadowring import (
    FILLED,
    FREE,
    MAGIC,
    REC,
    SKIP,
    SLOT_BYTES,
    SLOTS,
    TENSOR,
    Ring,
    RingMirror,
    _layout,
    _write,
)
from reconciler.devkit import modelgen
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.shadow.spec import ShadowSettings

SETTINGS = ShadowSettings(sample_rate=1.0, min_samples=10_000)


def _wait(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _put(ring: Ring, at_slot: int, feeds: dict[str, np.ndarray], outs: dict[str, np.ndarray]) -> int:
    layout = _layout(feeds, outs)
    assert layout is not None
    _write(ring, ring.slot_at(at_slot), layout, feeds, outs, 0.25)
    ring.states[at_slot] = FILLED
    return layout[0]


def test_a_record_reads_back_as_written_and_bad_headers_are_reported() -> None:
    ring, fd = Ring.create()
    os.close(fd)
    feeds = {"image": np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2],  # not contiguous
             "mask": np.array([[True, False]]), "ids": np.array([7, 8, 9], np.int64)}
    outs = {"logits": np.array([[0.5, -1.0]], np.float16), "empty": np.zeros((0, 3), np.uint8)}
    total = _put(ring, 0, feeds, outs)
    slots, nxt, counted, payload = ring.take(0)  # type: ignore[misc]
    assert (slots, nxt, counted) == (1, 1, True) and total <= SLOT_BYTES
    live_s, got_in, got_out = payload
    assert live_s == 0.25 and list(got_in) == ["image", "mask", "ids"] and list(got_out) == ["logits", "empty"]
    for want, got in (*zip(feeds.values(), got_in.values(), strict=True), *zip(outs.values(), got_out.values(), strict=True)):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    ring.free(0, slots, 1)
    assert ring.take(1) is None and ring.states[0] == FREE

    big = {"x": np.ones((3, SLOT_BYTES // 4), np.float32)}  # three slots' worth: the record spans four
    _put(ring, 1, big, {})
    slots, nxt, _, payload = ring.take(1)  # type: ignore[misc]
    assert (slots, nxt) == (4, 5) and np.array_equal(payload[1]["x"], big["x"])

    # what a bug on the agent's side could leave: each costs one record, reported, never the reader
    at = ring.slot_at(5)
    ring.mm[at:at + 8] = b"\0" * 8
    ring.states[5] = FILLED
    assert ring.take(5)[1:3] == (6, True) and "bad record header" in ring.take(5)[3]  # type: ignore[index]
    _put(ring, 6, {"x": np.zeros(4, np.float32)}, {})
    TENSOR.pack_into(ring.mm, ring.slot_at(6) + REC.size, 99, 1, 1, 16)  # an unknown dtype code
    assert "bad tensor descriptor (dtype code 99" in ring.take(6)[3]  # type: ignore[index]
    _put(ring, 7, {"x": np.zeros(4, np.float32)}, {})
    TENSOR.pack_into(ring.mm, ring.slot_at(7) + REC.size, 10, 1, 1, 1 << 40)  # more bytes than its record
    assert "is not 1099511627776 bytes" in ring.take(7)[3]  # type: ignore[index]
    REC.pack_into(ring.mm, ring.slot_at(8), MAGIC, 1, SLOTS * SLOT_BYTES, 0.0, 1, 0)  # past the ring's end
    ring.states[8] = FILLED
    assert ring.take(8)[:2] == (1, 9) and "bad record header" in ring.take(8)[3]  # type: ignore[index]
    ring.states[9] = SKIP
    assert ring.take(9)[:3] == (1, 0, False)  # the rest of the lap skipped: back to slot 0
    assert _layout({"s": np.array(["a"], object)}, {}) is None  # an object tensor cannot travel: dropped


def _candidate() -> tuple[CandidateProcess, dict[str, Any]]:
    onnx_bytes = modelgen.matmul_model(seed=1)
    probe = modelgen.make_probe(onnx_bytes)
    proc, reason, message = CandidateProcess.start({"runtime": "onnxruntime", "precision": "fp32"}, [onnx_bytes],
                                                   probe, {}, None)
    assert proc is not None, (reason, message)
    return proc, probe


def _tensors(probe: dict[str, Any], key: str) -> dict[str, np.ndarray]:
    return {t["name"]: np.asarray(t["data"], np.float32).reshape(t["shape"]) for t in probe[key]}


def test_records_of_every_size_wrap_the_ring_in_order_and_oversized_ones_are_dropped() -> None:
    proc, probe = _candidate()
    feeds, live = _tensors(probe, "inputs"), _tensors(probe, "outputs")
    (name,) = feeds
    m = RingMirror("ep", "1", "2", SETTINGS, proc)
    try:
        rng = np.random.default_rng(0)
        sent = 0
        for _ in range(24):  # several laps of the ring, records of 1 to 40 slots, each compared whole
            for _ in range(5):  # at most 200 slots (+ a skipped end of lap): they all fit
                rows = int(rng.integers(1, 40 * SLOT_BYTES // (feeds[name].shape[1] * 4 + 64)))
                x = np.repeat(feeds[name][:1], rows, axis=0)
                m.observe({name: x}, {k: np.repeat(v[:1], rows, axis=0) for k, v in live.items()}, 0.001)
                sent += rows
            _wait(m.idle)
        huge = np.zeros((SLOTS * SLOT_BYTES // 2 // (feeds[name].shape[1] * 4) + 1, feeds[name].shape[1]),
                        np.float32)  # more than half the ring
        m.observe({name: huge}, live, 0.001)
        _wait(m.idle)
        snap = m.snapshot()
        assert snap["requests"] == 120 and snap["samples"] == sent and snap["agreement"] == 100.0, snap
        assert (snap["offered"], snap["dropped"], snap["skipped"]) == (121, 1, 0), snap
    finally:
        m.stop()
        proc.close()


def test_live_answers_keep_flowing_while_the_candidate_gets_no_cpu_at_all() -> None:
    live_bytes = modelgen.matmul_model(seed=1)
    probe = modelgen.make_probe(live_bytes)
    sup = ShadowSupervisor()
    reg = ModelRegistry(observer_factory=sup.observer_for)
    assert reg.apply(EndpointSpec(name="m", version="1", blobs=[live_bytes], probe=probe, threads=1)).ok
    proc, _ = _candidate()
    m = RingMirror("m", "1", "2", SETTINGS, proc)
    sup.mirrors = {"m": m}
    srv = InferenceServer(reg)
    srv.start()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        body = json.dumps({"inputs": probe["inputs"]}).encode()
        want = [np.asarray(o["data"], np.float32) for o in probe["outputs"]]
        for _ in range(200):
            req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v2/models/m/infer", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                outs = json.loads(resp.read())["outputs"]
            assert resp.status == 200
            for o, w in zip(outs, want, strict=True):  # the serving version's answer, every time
                np.testing.assert_allclose(np.asarray(o["data"], np.float32), w, rtol=1e-5, atol=1e-6)
        snap = m.snapshot()
        # the ring holds `queue` samples; every other one was dropped and counted
        assert snap["offered"] == 200 and snap["queued"] == SETTINGS.queue and snap["requests"] == 0, snap
        assert snap["dropped"] == 200 - SETTINGS.queue and snap["mirrored"] == 0.0
        os.kill(proc.pid, signal.SIGCONT)
        _wait(m.idle)
        snap = m.snapshot()
        assert snap["requests"] == SETTINGS.queue and snap["requests"] + snap["dropped"] == 200, snap
        assert snap["mirrored"] == round(100.0 * SETTINGS.queue / 200, 2) and snap["agreement"] == 100.0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        sup.mirrors = {}
        m.stop()
        proc.close()
        srv.stop()
        reg.close()


@pytest.mark.parametrize("queue", [1, 3])
def test_the_queue_bounds_the_records_in_flight(queue: int) -> None:
    proc, probe = _candidate()
    feeds, live = _tensors(probe, "inputs"), _tensors(probe, "outputs")
    settings = ShadowSettings(sample_rate=1.0, min_samples=10_000, queue=queue)
    m = RingMirror("ep", "1", "2", settings, proc)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for _ in range(10):
            m.observe(feeds, live, 0.001)
        assert m.snapshot()["dropped"] == 10 - queue
        os.kill(proc.pid, signal.SIGCONT)
        _wait(m.idle)
        assert m.snapshot()["requests"] == queue
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        m.stop()
        proc.close()


def test_a_child_stopped_mid_publish_leaves_the_last_snapshot_readable() -> None:
    """The child runs at idle priority: a busy device may stop it mid-write for seconds. The agent then reads the
    other buffer — the last complete snapshot — at once, never a torn one and without waiting."""
    from reconciler.agent.shadowring import HALF, W_PUBLISHED, W_SEQ0

    ring, fd = Ring.create()
    os.close(fd)
    assert ring.publish(b'{"n": 1}') and ring.read(-1) == (1, b'{"n": 1}') and ring.read(1) == (1, None)
    assert ring.publish(b'{"n": 2}') and ring.read(1) == (2, b'{"n": 2}')
    nxt = (ring.ctrl[W_PUBLISHED] + 1) % 2  # what the third publish writes, stopped half-way
    ring.ctrl[W_SEQ0 + nxt] += 1
    ring.snap[nxt * HALF:nxt * HALF + 8] = b"garbage!"
    t0 = time.monotonic()
    assert ring.read(1) == (2, b'{"n": 2}') and time.monotonic() - t0 < 0.05
    assert not ring.publish(b"x" * (HALF + 1))  # more than a buffer holds: not published, the last one stays


def test_the_sample_rate_decides_which_requests_reach_the_candidate_and_agreement_is_judged() -> None:
    from reconciler.shadow import gate as G

    proc, probe = _candidate()
    feeds, live = _tensors(probe, "inputs"), _tensors(probe, "outputs")
    draws = iter([0.1, 0.9] * 100)  # every other request drawn, at sampleRate 0.5
    verdicts: list[Any] = []
    m = RingMirror("ep", "1", "2", ShadowSettings(sample_rate=0.5, min_samples=10), proc,
                   on_verdict=verdicts.append, rand=lambda: next(draws))
    try:
        for _ in range(40):
            m.observe(feeds, live, 0.001)
        _wait(m.idle)
        snap = m.snapshot()
        rows = next(iter(feeds.values())).shape[0]  # a sample is a row: the probe's request has several
        assert (snap["offered"], snap["sampledOut"], snap["requests"]) == (40, 20, 20), snap
        assert snap["samples"] == snap["agreed"] == 20 * rows, snap
        assert m.judge().state == G.AGREEING
        _wait(lambda: [v.state for v in verdicts] == [G.AGREEING])  # told once, when it changed
    finally:
        m.stop()
        proc.close()


def test_a_candidate_that_raises_fails_the_comparison_once_and_is_fed_no_more() -> None:
    proc, probe = _candidate()
    feeds, live = _tensors(probe, "inputs"), _tensors(probe, "outputs")
    (name,) = feeds
    verdicts: list[Any] = []
    m = RingMirror("ep", "1", "2", ShadowSettings(sample_rate=1.0, min_samples=1), proc, on_verdict=verdicts.append)
    try:
        m.observe({"not-an-input": feeds[name]}, live, 0.001)  # the candidate's runtime raises on it
        _wait(lambda: bool(verdicts))
        assert verdicts[0].failed and "not-an-input" in verdicts[0].message, verdicts[0]
        for _ in range(20):
            m.observe(feeds, live, 0.001)
        snap = m.snapshot()
        assert snap["errors"] == 1 and snap["offered"] == 21 and snap["queued"] == 0, snap
        assert snap["samples"] == 0 and m.judge().failed  # final: nothing after the failure was compared
    finally:
        m.stop()
        proc.close()
