"""Directory destination (removable media), upload gating by idleness, the bandwidth cap's pacing, and which
HTTP destinations get the device's upload token (pinned https origins only; no redirect followed)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from reconciler.capture.batch import open_batch
from reconciler.capture.handoff import HANDOFF_BATCHES
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from reconciler.capture.upload import DirectoryDestination, _Pacer, origin_of
from tests._servers import Pki
from tests.capture._capture import Campaign, Recorder, wait_until

TOKEN = "capture-upload-t0ken-9f8e7d6c"


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


def test_origins_are_compared_as_the_uploader_connects() -> None:
    assert origin_of("HTTPS://Store.Example/capture/x?y") == "https://store.example:443"
    assert origin_of("https://store.example:443/") == origin_of("https://store.example")
    assert origin_of("http://store.example") == "http://store.example:80"
    assert origin_of("https://[::1]:8443/c") == "https://[::1]:8443"
    assert origin_of("https://store.example@evil.example:8443/c") == "https://evil.example:8443"  # userinfo is no host
    for bad in ("ftp://store.example", "https://", "store.example", "https://store.example:99999"):
        with pytest.raises(ValueError):
            origin_of(bad)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def _service(tmp_path: Path, pki: Pki, url: str, allowed: list[str], token: str | None = TOKEN) -> CaptureService:
    svc = CaptureService(tmp_path, "dev-1", upload_token=token, upload_ca_file=str(pki.ca),
                         upload_allowed_origins=allowed, background=False)
    svc.configure({"mm": parse_policy(Campaign().section(batch={"records": 2}, destination={"url": url}))})
    _fill(svc, 2)
    return svc


def test_the_upload_token_goes_only_to_a_pinned_https_origin(tmp_path: Path, pki: Pki) -> None:
    with Recorder(pki) as genuine, Recorder(pki) as collector, Recorder() as plain:
        port = genuine.origin.rsplit(":", 1)[1]
        hostile = {  # destination.url from a merged PR or a lying Git server -> the origin the refusal names
            collector.url: collector.origin,  # another origin, https, a certificate the device trusts
            plain.url: plain.origin,  # plain http
            f"http://127.0.0.1:{port}/capture": f"http://127.0.0.1:{port}",  # the pinned host and port, over http
            f"https://127.0.0.1:{port}@127.0.0.1:{collector.origin.rsplit(':', 1)[1]}/capture": collector.origin,
            f"https://localhost:{port}/capture": f"https://localhost:{port}",  # same server, another name
        }
        for i, (url, origin) in enumerate(hostile.items()):
            svc = _service(tmp_path / f"h{i}", pki, url, [genuine.origin])
            svc.upload_once()
            problem = svc.status()["problems"]["mm"]
            assert problem.startswith("CaptureDestinationRefused: ") and f" {origin} " in problem, (url, problem)
            assert TOKEN not in problem
            assert len(svc.spool.list()) == 1 and svc.status()["endpoints"] == ["mm"]  # kept, still capturing
            assert "lastError" not in svc.status()
        assert (collector.connections, plain.connections, genuine.connections) == (0, 0, 0)

        # Without any pinned origin a token goes nowhere.
        svc = _service(tmp_path / "none", pki, genuine.url, [])
        svc.upload_once()
        assert "capture.allowedOrigins" in svc.status()["problems"]["mm"] and genuine.connections == 0

        # The genuine origin (pinned with a trailing slash: the same origin) gets the batch and the token.
        svc = _service(tmp_path / "ok", pki, genuine.url + "/", [genuine.origin + "/"])
        local = {p.name: p.read_bytes() for p, _ in svc.spool.list()}
        svc.upload_once()
        assert svc.spool.list() == [] and "problems" not in svc.status()
        assert genuine.stored == {f"/capture/dev-1/{name}": data for name, data in local.items()}
        assert set(genuine.authorizations()) == {f"Bearer {TOKEN}"}

        # The Deployment moves to the collector: the same service stops uploading there at the next configure.
        svc.configure({"mm": parse_policy(Campaign().section(batch={"records": 2},
                                                             destination={"url": collector.url}))})
        _fill(svc, 2)
        svc.upload_once()
        assert svc.status()["problems"]["mm"].startswith("CaptureDestinationRefused: ")
        assert collector.connections == 0 and len(svc.spool.list()) == 1


def test_an_offline_boot_refuses_the_journaled_destination_too(tmp_path: Path, pki: Pki) -> None:
    with Recorder(pki) as collector:
        svc = CaptureService(tmp_path, "dev-1", upload_token=TOKEN, upload_ca_file=str(pki.ca),
                             upload_allowed_origins=["https://capture.example.com"], background=False)
        svc.restore("mm", Campaign().policy(batch={"records": 2}, destination={"url": collector.url}), "m")
        _fill(svc, 2)
        svc.upload_once()
        assert svc.status()["problems"]["mm"].startswith(f"CaptureDestinationRefused: capture destination origin "
                                                         f"{collector.origin} is not in the agent config's "
                                                         "capture.allowedOrigins (https://capture.example.com:443)")
        assert collector.connections == 0 and len(svc.spool.list()) == 1


def test_a_redirect_from_the_pinned_origin_is_not_followed(tmp_path: Path, pki: Pki) -> None:
    with Recorder(pki) as collector, Recorder(pki, redirect_to=collector.url) as genuine:
        svc = _service(tmp_path, pki, genuine.url, [genuine.origin])
        svc.upload_once()
        assert genuine.requests and all(m in ("HEAD", "MKCOL", "PUT") for m, _, _ in genuine.requests)
        assert collector.connections == 0 and collector.requests == []
        assert len(svc.spool.list()) == 1 and "HTTP 307" in (svc.last_error or "")


def test_without_a_token_any_destination_unless_origins_are_pinned(tmp_path: Path, pki: Pki) -> None:
    with Recorder() as plain, Recorder(pki) as pinned:
        svc = _service(tmp_path / "any", pki, plain.url, [], token=None)
        svc.upload_once()
        assert svc.spool.list() == [] and len(plain.stored) == 1 and plain.authorizations() == []
        svc = _service(tmp_path / "pinned", pki, plain.url, [pinned.origin], token=None)
        svc.upload_once()
        assert svc.status()["problems"]["mm"].startswith(f"CaptureDestinationRefused: capture destination origin "
                                                         f"{plain.origin} is not in")
        assert len(plain.stored) == 1 and len(svc.spool.list()) == 1


def test_a_reachable_destination_gets_batches_from_memory_and_the_spool_only_what_failed(tmp_path: Path) -> None:
    """While the destination takes uploads, a sealed batch goes to it straight from memory (no write to the
    device's flash only to delete it); once an upload fails, batches wait in the spool, within the quota."""
    media = tmp_path / "media"
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": parse_policy(Campaign().section(batch={"records": 2},
                                                         destination={"directory": str(media)}))})
    written: list[str] = []
    write = svc.spool.write
    svc.spool.write = lambda h, d: written.append(h["id"]) or write(h, d)  # type: ignore[method-assign]
    obs = svc.observer_for("mm", "1")
    try:
        for i in range(6):
            obs.observe({"input": np.full((1, 8), i, np.float32)}, {}, 0.0)
            if i % 2:  # a batch sealed: wait for its upload
                wait_until(lambda i=i: svc.wake_sealer() or svc.counts["uploaded"] == (i + 1) // 2, 10, "an upload")
        assert written == [] and len(list((media / "dev-1").iterdir())) == 3
        events = svc.spool.audit.read()
        assert [e["event"] for e in events].count("uploaded") == 3
        assert {e["batch"] for e in events if e["event"] == "sealed"} == {
            e["batch"] for e in events if e["event"] == "uploaded"}

        (media / "dev-1").rename(tmp_path / "gone")  # the media is pulled: a file stands where it was
        (media / "dev-1").write_text("not a directory")
        for i in range(4):
            obs.observe({"input": np.full((1, 8), i, np.float32)}, {}, 0.0)
            time.sleep(0.25 if i % 2 else 0.0)
        # (the spy notes a write before making it: wait for the files)
        wait_until(lambda: svc.wake_sealer() or len(svc.spool.list()) == 2, 10, "both batches kept in the spool")
        assert svc.counts["uploaded"] == 3 and len(written) == 2
    finally:
        svc.close()
    assert any(e["event"] == "upload-failed" for e in svc.spool.audit.read())


def test_a_burst_of_sealed_batches_goes_to_the_destination_from_memory(tmp_path: Path) -> None:
    """The sealer process hands over every batch its look at the rings filled at once: up to HANDOFF_BATCHES of
    them wait in memory for the uploader, none is written to the spool only to be deleted again."""
    media, campaign = tmp_path / "media", Campaign()
    svc = CaptureService(tmp_path / "state", "dev-1")
    svc.configure({"mm": campaign.policy(batch={"records": 2}, destination={"directory": str(media)})})
    written: list[str] = []
    write = svc.spool.write
    svc.spool.write = lambda h, d: written.append(h["id"]) or write(h, d)  # type: ignore[method-assign]
    obs = svc.observer_for("mm", "1")
    try:
        n = 2 * HANDOFF_BATCHES
        for i in range(n):  # (the sealer takes them all at its next look: HANDOFF_BATCHES batches at once)
            obs.observe({"input": np.full((1, 8), i, np.float32)}, {}, 0.0)
        wait_until(lambda: svc.counts["uploaded"] == HANDOFF_BATCHES, 10, "every batch uploaded")
        assert written == [] and svc.counts["sealed"] == HANDOFF_BATCHES
        got = sorted(int(x) for p in (media / "dev-1").iterdir()
                     for x in open_batch(p.read_bytes(), campaign.private).arrays["input"][:, 0])
    finally:
        svc.close()
    assert got == list(range(n))
