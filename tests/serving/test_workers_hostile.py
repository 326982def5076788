"""Issue S's limits, timeouts and flow control hold in every worker (``serve --workers 2``, a WorkerPool).

A representative subset of tests/serving/test_hostile.py, each repeated over enough connections that the
kernel's SO_REUSEPORT spread lands some on every worker; memory and descriptors are read per worker process.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.serving.limits import ServerLimits
from reconciler.serving.workers.pool import WorkerPool
from tests._hostile import ServerProcess, one_at_a_time, read_all, send_in_background, timed_get
from tests._serving_fixtures import PROBE_V1, spec

CONNECTIONS = 16  # all on one worker: 2 * 2**-16


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.fixture
def limited() -> Iterator[WorkerPool]:
    lim = ServerLimits().with_options({"headerTimeout": "0.4", "bodyTimeout": "0.4", "idleTimeout": "0.4",
                                       "maxInflightBytes": "10000"})
    with WorkerPool(2, port=0, limits=lim) as pool:
        assert pool.apply(spec(probe=PROBE_V1)).ok
        yield pool


def test_header_body_and_idle_timeouts_in_every_worker(limited: WorkerPool) -> None:
    port = limited.port or 0
    t0 = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]  # 8 of each: most likely on both
    for s in socks[:8]:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost")
    for s in socks[8:16]:
        s.sendall(b"POST /v2/models/mm/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    for s in socks[16:]:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
    answers = [read_all(s, 5) for s in socks]
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"header not complete" in a for a in answers[:8]), answers[:8]
    assert all(a.startswith(b"HTTP/1.1 408") and b"body made no progress" in a for a in answers[8:16])
    assert all(a.startswith(b"HTTP/1.1 200") and a.count(b"HTTP/1.1") == 1 for a in answers[16:])
    assert time.monotonic() - t0 < 6


def test_bytes_in_flight_are_bounded_in_every_worker(limited: WorkerPool) -> None:
    port = limited.port or 0
    holds = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    for s in holds:  # each worker takes 8000 of its 10000 bytes; further holds on it are refused at once
        s.sendall(b"POST /v2/models/mm/infer HTTP/1.1\r\nContent-Length: 8000\r\n\r\n{")
    time.sleep(0.2)
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v2/models/mm/infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
            answer = read_all(s, 3)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer, answer[:200]
    for s in holds:
        s.close()
    time.sleep(0.6)
    body = json.dumps({"inputs": PROBE_V1["inputs"]}).encode()
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v2/models/mm/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert read_all(s, 1).startswith(b"HTTP/1.1 200")


def test_oversized_headers_are_refused_by_every_worker(tmp_path: Path) -> None:
    head = b"GET / HTTP/1.1\r\nX-Big: " + b"v" * (4 << 20) + b"\r\n\r\n"
    with ServerProcess(tmp_path, workers=2) as srv:
        assert len(srv.pids) == 2
        base = [rss_mb(pid) for pid in srv.pids]
        for _ in range(8):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                sender = send_in_background(s, head)
                answer = read_all(s, timeout=10)
                sender.join(10)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert all(rss_mb(pid) - b < 50 for pid, b in zip(srv.pids, base, strict=True))
        assert timed_get(srv.port)[0] == 200


def test_a_pipelined_metrics_flood_that_never_reads_stays_bounded(tmp_path: Path) -> None:
    """/metrics in a worker asks the control plane: the pipelining cap bounds those questions too."""
    with one_at_a_time(), ServerProcess(tmp_path, "bodyTimeout=3s", workers=2) as srv:
        timed_get(srv.port)
        base = {pid: rss_mb(pid) for pid in [srv.proc.pid, *srv.pids]}
        flood = socket.socket()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.connect(("127.0.0.1", srv.port))
        sender = send_in_background(flood, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 60_000)
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            status, took = timed_get(srv.port)
            assert status == 200 and took < 1.0
            assert all(rss_mb(pid) - b < 100 for pid, b in base.items())
            time.sleep(0.05)
        sender.join(15)
        flood.close()
        assert timed_get(srv.port, "/metrics")[0] == 200


def test_the_uplink_ends_quietly_when_the_pool_closes_its_pipe_mid_recv() -> None:
    """The pool closes a dead worker's pipe while the uplink thread may be inside ``recv``: past recv's own
    closed check, the read then gets a None handle (a TypeError that ended the thread with a traceback)."""
    import multiprocessing.connection as mpc
    import threading

    from prometheus_client import CollectorRegistry

    from reconciler.serving.workers.uplink import Uplink

    ours, theirs = mpc.Pipe()
    ours._check_closed = lambda: None  # type: ignore[method-assign]  # (the check passed, then the close came)
    ours.close()
    errors: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)  # type: ignore[assignment,return-value]
    try:
        t = threading.Thread(target=Uplink(CollectorRegistry()).serve, args=(ours,))
        t.start()
        t.join(5)
    finally:
        threading.excepthook = old_hook
    assert not t.is_alive() and errors == []
    theirs.close()
