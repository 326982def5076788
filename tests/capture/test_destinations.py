"""Directory destination (removable media), upload gating by idleness, and the bandwidth cap's pacing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from reconciler.capture.upload import DirectoryDestination, _Pacer
from tests.capture._capture import Campaign


def _fill(svc: CaptureService, n: int) -> None:
    obs = svc.observer_for("mm", "1")
    for i in range(n):
        obs.observe({"input": np.full((1, 8), i, np.float32)}, {}, 0.0)
    svc.drain()
    svc.flush(force=True)


def test_directory_destination_waits_for_idle_then_copies_and_deletes(tmp_path: Path) -> None:
    campaign = Campaign()
    media = tmp_path / "media"
    svc = CaptureService(tmp_path / "state", "dev-1", background=False)
    svc.configure({"mm": parse_policy(campaign.section(
        batch={"records": 2}, destination={"directory": str(media), "upload": {"when": "idle", "idleFor": "30s"}}))})
    _fill(svc, 6)
    local = {p.name: p.read_bytes() for p, _ in svc.spool.list()}
    assert len(local) == 3
    svc.upload_once()  # the requests just now: not idle
    assert not media.exists() and len(svc.spool.list()) == 3
    svc.last_request = time.monotonic() - 31
    svc.upload_once()
    assert {p.name: p.read_bytes() for p in (media / "dev-1").iterdir()} == local
    assert svc.spool.list() == []
    assert [e["event"] for e in svc.spool.audit.read()].count("uploaded") == 3
    # An identical object already there counts as acknowledged (a crash after the copy, before the delete).
    again = tmp_path / "again.mfcap"
    name, data = next(iter(local.items()))
    again.write_bytes(data)
    assert DirectoryDestination(media, "dev-1").put(again)


def test_pacing_holds_the_bandwidth_cap() -> None:
    slept: list[float] = []
    pacer = _Pacer(10_000, sleep=slept.append)
    for _ in range(10):
        pacer.sent_chunk(5_000)  # 50 kB "sent" instantly at a 10 kB/s cap
    assert 4.5 < max(slept) <= 5.0  # the last chunk waits until 5 s of budget have passed


def test_retention_deletes_batches_once_their_first_record_is_older_than_the_ttl(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    svc = CaptureService(tmp_path / "state", "dev-1", clock=lambda: now[0], background=False)
    svc.configure({"mm": parse_policy(Campaign().section(retention="1h", batch={"records": 2},
                                                         destination={"directory": str(tmp_path / "m")}))})
    _fill(svc, 4)
    now[0] += 1800
    _fill(svc, 2)
    assert len(svc.spool.list()) == 3
    now[0] += 1801  # the first two batches are 3601 s old, the third 1801 s
    assert [why for _, why in svc.enforce()] == ["expired", "expired"]
    (_, h), = svc.spool.list()
    assert h["start"] == 1_800_001_800.0
    assert [e["reason"] for e in svc.spool.audit.read() if e["event"] == "purged"] == ["expired", "expired"]
