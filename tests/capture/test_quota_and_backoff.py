"""The spool quota holds at every write, and a dead destination holds back only itself.

The acceptance test runs the real threads under load: one endpoint uploads to a port nothing listens on, another
to nginx with WebDAV; the spool directory is measured every 50 ms (every file, temp files of a write in progress
included) and the dead endpoint's share never passes ``maxBytes`` + one batch, while the live endpoint's batches
keep reaching nginx.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.capture import uploads
from reconciler.capture.batch import MAGIC
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from tests._git_fixtures import free_port
from tests.capture._capture import Campaign, Recorder, WebDav, wait_until

MAX_BYTES = 120_000


def _record(i: int, width: int = 256) -> dict[str, np.ndarray]:
    return {"input": np.full((1, width), float(i), np.float32)}


def _spool_bytes(batches: Path) -> dict[str, int]:
    """Bytes in the spool directory now: per endpoint (from each batch's plaintext header), and ``temp`` for
    files being written. A file that goes while it is measured is skipped."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(batches))
    except FileNotFoundError:
        return out
    for e in entries:
        try:
            size = e.stat().st_size
            if e.name.startswith("."):
                key = "temp"
            else:
                with open(e.path, "rb") as fh:
                    head = fh.read(4096)
                key = head[len(MAGIC):].split(b'"endpoint":"', 1)[1].split(b'"', 1)[0].decode()
        except (FileNotFoundError, IndexError):
            continue
        out[key] = out.get(key, 0) + size
    return out


def test_quota_holds_at_every_write_and_a_dead_destination_holds_back_no_other(tmp_path: Path) -> None:
    campaign = Campaign()
    dead_url = f"http://127.0.0.1:{free_port()}/capture"  # nothing listens: every upload is refused
    with WebDav(tmp_path / "nginx") as dav:
        svc = CaptureService(tmp_path / "state", "dev-1")
        batch = {"records": 10}  # ~10.5 KB batches: ~11 fit in the quota
        svc.configure({
            "dead": parse_policy(campaign.section(maxBytes=MAX_BYTES, batch=batch, destination={"url": dead_url})),
            # (room for every live batch: a burst the sealer hands over past what its uploader holds in memory waits
            # in the spool for a moment, more of it when the uploader's thread gets the CPU late)
            "live": parse_policy(campaign.section(maxBytes=10 * MAX_BYTES, batch=batch, destination={"url": dav.url})),
        }, models={"dead": "m", "live": "m"})
        batches_dir = tmp_path / "state" / "capture" / "batches"
        dead, live = svc.observer_for("dead", "1"), svc.observer_for("live", "1")
        samples: list[dict[str, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_spool_bytes(batches_dir))
                stop.wait(0.05)

        def load() -> None:
            for i in range(1200):  # 1200 records, ~10x the dead endpoint's quota, in ~4 s; 300 for the live one
                dead.observe(_record(i), {}, 0.0)
                if i % 4 == 0:
                    live.observe(_record(i), {}, 0.0)
                time.sleep(0.003)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            load()
            wait_until(lambda: svc.wake_sealer() or not svc.backlog, 30, "the writer or the sealer to take every record")
            # 300 live records make 30 full batches, sealed at the look that takes them (the sealer process may
            # still be at it, the link thread placing them): wait until no more come for a while
            sealed_live, still_since = -1, time.monotonic()
            while time.monotonic() - still_since < 1.5:
                n = sum(e["event"] == "sealed" and e["endpoint"] == "live" for e in svc.spool.audit.read())
                if n != sealed_live:
                    sealed_live, still_since = n, time.monotonic()
                time.sleep(0.1)
            # every live batch uploaded (none in the spool, none held by its uploader: close() would spool those)
            deadline = time.monotonic() + 15  # (asserted below, after the quota)
            while (set(_pending(svc)) != {"dead"} or len(dav.stored("dev-1")) < sealed_live) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            live_waiting = [e for e in _pending(svc) if e == "live"]
            live_not_uploaded = sealed_live - len(dav.stored("dev-1"))
            svc.close()  # seals the rest (not uploaded any more): under the sampler's eyes too
            time.sleep(0.1)
        finally:
            stop.set()
            sampler.join()
            svc.close()

        on_nginx = dav.stored("dev-1")
        events = svc.spool.audit.read()
        one_batch = max(e["bytes"] for e in events if e["event"] == "sealed")
        assert len(samples) >= 40
        worst = max(s.get("dead", 0) + s.get("temp", 0) for s in samples)
        assert worst <= MAX_BYTES + one_batch, (worst, MAX_BYTES, one_batch)
        assert max(s.get("dead", 0) for s in samples) > MAX_BYTES - 2 * one_batch  # it did fill up
        dead_sealed = [e for e in events if e["event"] == "sealed" and e["endpoint"] == "dead"]
        assert sum(e["bytes"] for e in dead_sealed) > 5 * MAX_BYTES  # the load was several times the quota
        purged = [e for e in events if e["event"] == "purged"]
        assert {e["reason"] for e in purged} == {"quota"} and {e["endpoint"] for e in purged} == {"dead"}
        failed = [e for e in events if e["event"] == "upload-failed"]
        assert failed and {e["endpoint"] for e in failed} == {"dead"}

        # The live endpoint's uploads went on all along: every batch it sealed is on nginx, byte for byte
        # what the device sealed, none waited behind the dead destination, and none is left in the spool.
        live_sealed = {e["batch"] for e in events if e["event"] == "sealed" and e["endpoint"] == "live"}
        assert live_waiting == [] and live_not_uploaded == 0, \
            f"{len(live_waiting)} live batches in the spool, {live_not_uploaded} not uploaded 15 s after the load"
        left = svc.spool.stored()
        sealed_at_close = {b.id for b in left if b.endpoint == "live"}  # sealed by close(), after the wait
        assert len(sealed_at_close) <= 3
        assert {n.removesuffix(".mfcap") for n in on_nginx} == live_sealed - sealed_at_close
        assert len(live_sealed) >= 25  # 30 unless the writer fell behind and the queue dropped records
        assert 0 < sum(b.size for b in left if b.endpoint == "dead") <= MAX_BYTES


def _pending(svc: CaptureService) -> list[str]:
    """The endpoints of the batches waiting in the spool, oldest first."""
    return [h["endpoint"] for _, h in svc.spool.list()]


def _fill(svc: CaptureService, endpoint: str, n: int, width: int = 256) -> None:
    obs = svc.observer_for(endpoint, "1")
    for i in range(n):
        obs.observe(_record(i, width), {}, 0.0)


def test_each_write_makes_room_first_oldest_out(tmp_path: Path) -> None:
    """No sweep in between: 30 batches sealed in one drain, the spool is within maxBytes after each write."""
    ticks = iter(range(10**6))
    svc = CaptureService(tmp_path / "state", "dev-1", background=False, queue_max=10_000,
                         clock=lambda: 1_800_000_000 + next(ticks) / 100)  # every batch its own start time
    svc.configure({"mm": parse_policy(Campaign().section(maxBytes=20_000, batch={"records": 2},
                                                         destination={"directory": str(tmp_path / "media")}))})
    sizes: list[int] = []
    write = svc.spool.write

    def watched(header: dict[str, Any], data: bytes) -> Path:
        path = write(header, data)
        sizes.append(sum(p.stat().st_size for p in svc.spool.batches_dir.iterdir()))
        return path

    svc.spool.write = watched  # type: ignore[method-assign]
    _fill(svc, "mm", 60)
    svc.drain()  # seals 30 batches of ~2.2 KB: 66 KB against a 20 KB quota, no enforce() in between
    assert len(sizes) == 30 and max(sizes) <= 20_000, sizes
    kept = svc.spool.list()
    sealed = [e["batch"] for e in svc.spool.audit.read() if e["event"] == "sealed"]
    assert [h["id"] for _, h in kept] == sealed[-len(kept):]  # the newest stayed, the oldest went
    purged = [e for e in svc.spool.audit.read() if e["event"] == "purged"]
    assert [e["batch"] for e in purged] == sealed[:len(purged)] and {e["reason"] for e in purged} == {"quota"}
    assert svc.counts["purged"] == len(purged) == 30 - len(kept)


def test_a_batch_larger_than_the_quota_is_dropped_and_counted_not_written(tmp_path: Path) -> None:
    svc = CaptureService(tmp_path / "state", "dev-1", background=False)
    svc.configure({"mm": parse_policy(Campaign().section(maxBytes=4096, batch={"records": 100},
                                                         destination={"directory": str(tmp_path / "media")}))})
    _fill(svc, "mm", 2, width=64)
    svc.drain()
    svc.flush(force=True)
    assert len(svc.spool.list()) == 1 and svc.spool.total_bytes() < 4096
    written = []
    write = svc.spool.write
    svc.spool.write = lambda h, d: written.append(len(d)) or write(h, d)  # type: ignore[method-assign]
    _fill(svc, "mm", 1, width=2048)  # one 8 KB record: its batch alone is over the 4 KB quota
    svc.drain()
    assert written == [] and len(svc.spool.list()) == 1  # nothing evicted for a batch that cannot fit
    (dropped,) = [e for e in svc.spool.audit.read() if e["event"] == "dropped"]
    assert dropped["reason"] == "over-quota" and dropped["records"] == 1 and dropped["bytes"] > 4096
    assert svc.counts["purged"] == 1 and "larger than its maxBytes (4096)" in svc.status()["lastError"]


def test_a_dead_destination_does_not_hold_back_another_endpoints_batches(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest batch is the dead destination's: the other endpoint's still go, and the dead one is not
    retried before its backoff ends."""
    monkeypatch.setattr(uploads, "backoff_delay", lambda failures, u: 60.0)  # longer than this test, however slow
    campaign = Campaign()
    with Recorder() as live:
        dead_port = free_port()
        svc = CaptureService(tmp_path / "state", "dev-1", background=False)
        svc.configure({
            "dead": parse_policy(campaign.section(batch={"records": 1},
                                                  destination={"url": f"http://127.0.0.1:{dead_port}/c"})),
            "live": parse_policy(campaign.section(batch={"records": 1}, destination={"url": live.url})),
        })
        _fill(svc, "dead", 2)
        svc.drain()
        time.sleep(0.01)
        _fill(svc, "live", 2)
        svc.drain()
        assert _pending(svc) == ["dead", "dead", "live", "live"]  # oldest first
        wait = svc.upload_once()
        assert _pending(svc) == ["dead", "dead"]
        assert len(live.stored) == 2 and 0 < wait <= 5.0
        assert f"127.0.0.1:{dead_port}" in (svc.status().get("lastError") or "")
        svc.upload_once()  # the dead destination is in its backoff: not tried again
        failed = [e for e in svc.spool.audit.read() if e["event"] == "upload-failed"]
        assert len(failed) == 1 and svc.upload_failures == 1
        _fill(svc, "live", 1)
        svc.drain()
        svc.upload_once()
        assert len(live.stored) == 3 and svc.upload_failures == 1


def test_a_hanging_destination_holds_back_only_itself(tmp_path: Path) -> None:
    """A destination that takes the connection and never answers blocks its own uploader thread only."""
    campaign = Campaign()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # connections complete in the backlog and are never accepted or answered
    try:
        with Recorder() as live:
            svc = CaptureService(tmp_path / "state", "dev-1")
            svc.configure({
                "stuck": parse_policy(campaign.section(batch={"records": 1}, destination={
                    "url": f"http://127.0.0.1:{hole.getsockname()[1]}/c"})),
                "live": parse_policy(campaign.section(batch={"records": 1}, destination={"url": live.url})),
            })
            try:
                _fill(svc, "stuck", 1)
                time.sleep(0.5)  # the stuck batch is sealed first and its upload hangs
                _fill(svc, "live", 3)
                wait_until(lambda: svc.counts["uploaded"] == 3, 10, "the live endpoint's uploads")
                assert len(live.stored) == 3
            finally:
                hole.close()  # the hanging upload fails now; close() does not wait for its timeout
                svc.close()
            assert _pending(svc) == ["stuck"]  # not acknowledged: kept
    finally:
        hole.close()
