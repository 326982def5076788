"""Every TUF request has a deadline for the whole transfer (``timeout + expected length / min_rate``), not only
a per-read timeout: a mirror that drips a byte at a time fails the refresh or download with ``SlowRetrieval``
within that bound, the message says which URL sent how many bytes in how long, the bytes that did arrive are
kept for the resume, and a normal download under the same settings still works."""

from __future__ import annotations

import os
import re
import time

import pytest
from tuf.ngclient import UpdaterConfig

from reconciler.core import reasons as R
from reconciler.distribution.httpserve import Drip
from reconciler.distribution.tufclient import TufClient, TufClientError
from tests._tuf_fixtures import Published, published  # noqa: F401

TIMEOUT = 0.5  # tuf.timeout: also the fixed part of every deadline
MIN_RATE = 65536  # tuf.minBytesPerSecond: high, so the deadlines stay short on loopback
SLACK = 1.5  # scheduling on a shared 2-core machine; far below the seconds a drip needs to finish


def _client(published: Published, name: str = "device") -> TufClient:  # noqa: F811
    return published.client(name, timeout=TIMEOUT, min_rate=MIN_RATE)


def _slow(fn: object) -> tuple[TufClientError, float]:
    t0 = time.monotonic()
    with pytest.raises(TufClientError) as info:
        fn()  # type: ignore[operator]
    return info.value, time.monotonic() - t0


def test_dripped_timestamp_fails_the_refresh_within_its_deadline(published: Published) -> None:  # noqa: F811
    path = published.add("m.onnx", b"weights" * 100)
    client = _client(published)
    client.refresh()
    installed = client.fetch([path])[path]
    # Status line and headers dripped too: the deadline covers the whole exchange, not only the body.
    published.server.drip = Drip("timestamp.json", every=0.02, headers=True)
    # timestamp.json has no signed length: python-tuf's cap for it is the expected length.
    bound = TIMEOUT + UpdaterConfig().timestamp_max_length / MIN_RATE
    assert len(published.meta("timestamp.json").read_bytes()) * 0.02 > 3 * (bound + SLACK)  # the drip is slower
    err, took = _slow(client.refresh)
    assert err.reason == R.SLOW_RETRIEVAL and bound <= took < bound + SLACK, (took, str(err))
    msg = str(err)
    assert f"{published.metadata_url}/timestamp.json" in msg, msg
    m = re.search(r"sent (\d+) bytes in ([\d.]+)s .* (\d+) bytes expected", msg)
    assert m and int(m.group(1)) == 0 and int(m.group(3)) == UpdaterConfig().timestamp_max_length, msg
    assert "minBytesPerSecond" in msg
    assert client.load_bytes(installed) == b"weights" * 100  # the last good target is untouched
    published.server.drip = None
    client.refresh()  # the mirror recovered: so does the client


def test_dripped_target_fails_within_its_deadline_and_resumes(published: Published) -> None:  # noqa: F811
    data = os.urandom(20_000)
    path = published.add("big.onnx", data)
    client = _client(published)
    client.refresh()
    published.server.drip = Drip("big.onnx", every=0.004)  # headers at once, the body at ~250 bytes/s
    err, took = _slow(lambda: client.fetch([path]))
    bound = TIMEOUT + len(data) / MIN_RATE  # the signed length
    assert err.reason == R.SLOW_RETRIEVAL and bound <= took < bound + SLACK, (took, str(err))
    msg = str(err)
    assert msg.startswith(f"target {path}:") and f"{published.targets_url}/" in msg and "big.onnx" in msg, msg
    m = re.search(r"sent (\d+) bytes in ([\d.]+)s .* (\d+) bytes expected", msg)
    assert m and 0 < int(m.group(1)) < len(data) and int(m.group(3)) == len(data), msg
    assert bound - 0.01 <= float(m.group(2)) < bound + SLACK
    assert client.fetcher.busy_until() is None  # nothing left in flight
    # What arrived before the deadline is kept; the next pass asks only for the rest.
    (staged,) = client.staging_dir.iterdir()
    assert staged.stat().st_size == int(m.group(1))
    published.server.drip = None
    published.server.reset_stats()
    t = client.fetch([path])[path]
    assert client.load_bytes(t) == data
    assert [r for r in published.server.requests if r[0].startswith("/targets/")][-1][1] == f"bytes={m.group(1)}-"


def test_normal_downloads_pass_under_the_same_deadlines(published: Published) -> None:  # noqa: F811
    datas = {f"m{i}.onnx": os.urandom(300_000) for i in range(3)}
    paths = [published.add(n, d, prefix="fleet/m") for n, d in datas.items()]
    client = published.client(timeout=TIMEOUT, min_rate=MIN_RATE, max_concurrent=2)
    client.refresh()
    got = client.fetch(paths)
    assert [client.load_bytes(got[p]) for p in paths] == list(datas.values())
    assert client.fetcher.busy_until() is None
    # The deadline is per request and scales with the length: 300 kB at 64 KiB/s gets 5 s, not TIMEOUT.
    d = client.fetcher.deadline("http://x/", 300_000)
    d.finish()
    assert d.seconds == pytest.approx(TIMEOUT + 300_000 / MIN_RATE)
