"""Uploads to a real nginx with WebDAV PUT: outages, recovery, and kill -9 in the middle of uploads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reconciler.capture.batch import new_batch_id, seal_batch
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from reconciler.capture.spool import Spool
from tests._git_fixtures import free_port
from tests.capture._capture import Campaign, WebDav, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_server_down_keeps_data_within_quota_and_sends_it_on_recovery(tmp_path: Path) -> None:
    campaign = Campaign()
    dav = WebDav(tmp_path / "nginx", port=free_port())
    max_bytes = 8000
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": parse_policy(campaign.section(maxBytes=max_bytes, batch={"records": 5},
                                                       destination={"url": dav.url}))}, models={"mm": "m"})
    obs = svc.observer_for("mm", "1.0")
    try:
        rng = np.random.default_rng(1)
        for i in range(60):  # 12 batches of ~2.5 KB: three times the quota
            obs.observe({"input": np.concatenate([[[float(i)]], rng.standard_normal((1, 63))], axis=1)
                         .astype(np.float32)}, {"output": np.zeros((1, 4), np.float32)}, 0.001)
            time.sleep(0.005)
        wait_until(lambda: svc.counts["sealed"] == 12, 30, "12 sealed batches")
        wait_until(lambda: any(e["event"] == "upload-failed" for e in svc.spool.audit.read()), 30, "a failed upload")
        # every batch handed to the uploader before it failed moves to the spool (status counts them all along)
        wait_until(lambda: svc.status()["pendingBatches"] == len(svc.spool.list()), 30, "nothing held in memory")
        svc.enforce()
        kept = {p.name: p.read_bytes() for p, _ in svc.spool.list()}
        assert 0 < sum(len(b) for b in kept.values()) <= max_bytes
        events = svc.spool.audit.read()
        purged = [e for e in events if e["event"] == "purged"]
        assert purged and {e["reason"] for e in purged} == {"quota"}
        sealed_order = [e["batch"] for e in events if e["event"] == "sealed"]
        assert {e["batch"] for e in purged} == set(sealed_order[: len(purged)])  # the oldest went
        assert dav.stored("dev-1") == {}

        dav.start()
        svc.retry_uploads()  # skip the rest of the back-off wait
        wait_until(lambda: not svc.spool.list(), 60, "upload after recovery")
        assert dav.stored("dev-1") == kept  # byte for byte, each once

        def uploaded_batches() -> list[str]:
            return [e["batch"] for e in svc.spool.audit.read() if e["event"] == "uploaded"]

        # The audit line of the last batch is appended just after its spool file goes.
        wait_until(lambda: len(uploaded_batches()) >= len(kept), 10, "every upload audited")
        uploaded = uploaded_batches()
        assert sorted(uploaded) == sorted(n.removesuffix(".mfcap") for n in kept)
    finally:
        svc.close()
        dav.stop()


_UPLOADER = """
import json, sys, time
from pathlib import Path
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
svc = CaptureService(Path(sys.argv[1]), "dev-1")
svc.configure({"mm": parse_policy(json.loads(sys.argv[2]))})
while svc.spool.list():
    time.sleep(0.05)
svc.close()
print("done", flush=True)
"""


def test_kill9_during_upload_loses_nothing_acknowledged_and_duplicates_nothing(tmp_path: Path) -> None:
    campaign = Campaign()
    state = tmp_path / "state"
    spool = Spool(state)
    originals: dict[str, bytes] = {}
    rng = np.random.default_rng(2)
    now = time.time()
    for i in range(10):
        meta = {"id": new_batch_id(now), "device": "dev-1", "endpoint": "mm", "model": "m", "modelVersion": "1",
                "campaign": "test-campaign", "purpose": "p", "start": now + i, "end": now + i, "records": 1, "rows": 1}
        header, data = seal_batch(meta, {"input": rng.standard_normal((1, 6000)).astype(np.float32)},
                                  campaign.public)
        spool.write(header, data)
        originals[f"{header['id']}.mfcap"] = data
    section = campaign.section(destination={"url": "", "upload": {"maxBytesPerSecond": 40_000}})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    kills = 0
    with WebDav(tmp_path / "nginx") as dav:
        section["destination"]["url"] = dav.url
        r = random.Random(5)
        for trial in range(12):
            last = trial == 11 or not spool.list()
            proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(state), json.dumps(section)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=120 if last else r.uniform(0.8, 2.5))
                assert proc.returncode == 0, err.decode()[-2000:]
                assert b"done" in out
                break
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # mid-PUT, mid-delete, mid-audit …
                proc.communicate()
                kills += 1
            on_server = dav.stored("dev-1")
            local = {p.name for p, _ in spool.list()}
            for name, data in on_server.items():
                assert originals.get(name) == data, f"{name}: partial or foreign object kept by the server"
            assert set(originals) - local <= set(on_server), "a batch was deleted before the server had it"
        assert kills >= 2  # 240 KB at 40 KB/s outlasts two trials: the kills land during the uploads
        assert dav.stored("dev-1") == originals
    assert spool.list() == []
    assert not [p for p in (state / "capture" / "batches").iterdir()]
