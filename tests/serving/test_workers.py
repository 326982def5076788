"""Serving from several worker processes (``serving.workers``, ``serve --workers``): real processes on one port.

Every test runs a real :class:`WorkerPool` (2 workers, generated models, real HTTP clients): switches are
two-phase and atomic across workers, a failed prepare aborts everywhere, a dead worker comes back with the
current version before it listens, ``/metrics`` sums the workers without double counting, and request samples
reach the control plane's observers through a bounded, counted queue.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from reconciler.devkit.modelgen import matmul_model
from reconciler.serving.registry import ModelRegistry
from reconciler.serving.workers.pool import WorkerPool
from tests._prometheus import promtool
from tests._serving_fixtures import NAN, PROBE_V1, V1, V2, spec

INFER = "/v2/models/mm/infer"
BODY = json.dumps({"inputs": PROBE_V1["inputs"]}).encode()


def get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def version_of(port: int) -> str:
    status, body = get(port, "POST", INFER, BODY)
    assert status == 200, body
    return str(json.loads(body)["model_version"])


def metric(port: int, name: str, labels: str = "") -> float:
    text = get(port, "GET", "/metrics")[1].decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_for(cond: Any, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    p = WorkerPool(2, port=0, load_timeout=20.0)
    p.start()
    assert p.apply(spec(probe=PROBE_V1)).ok
    yield p
    p.stop()


class Load:
    """Keep-alive HTTP clients in threads, each counting answers by status and version."""

    def __init__(self, port: int, clients: int = 6) -> None:
        self.port, self.stop = port, threading.Event()
        self.statuses: dict[int, int] = {}
        self.versions: dict[str, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("POST", INFER, body=BODY)
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            with self._lock:
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                if r.status == 200:
                    v = json.loads(body)["model_version"]
                    self.versions[v] = self.versions.get(v, 0) + 1
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_both_workers_serve_one_port(pool: WorkerPool) -> None:
    pids = pool.pids()
    assert len(pids) == 2 and os.getpid() not in pids
    before = {pid: cpu_ticks(pid) for pid in pids}
    with Load(pool.port or 0, clients=24):  # all on one worker: 2 * 2**-24
        time.sleep(2.0)
    assert all(cpu_ticks(pid) > before[pid] for pid in pids), "one worker got no connections"
    assert get(pool.port or 0, "GET", "/v2/health/ready") == (200, b'{"ready":true}')
    mem = pool.memory()
    assert [m["worker"] for m in mem] == [0, 1] and all(0 < m["vmrss"] <= m["vmhwm"] for m in mem)


def test_a_switch_under_load_fails_no_request_and_is_seen_by_every_worker_at_once(pool: WorkerPool) -> None:
    port = pool.port or 0
    with Load(port) as load:
        for i in range(2, 8):
            assert pool.apply(spec(str(i), matmul_model(seed=1, bias=float(i)))).ok
            # Once apply returned, no worker answers a new request with an older version.
            assert {version_of(port) for _ in range(12)} == {str(i)}
            time.sleep(0.1)
    assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:3])
    assert sum(load.statuses.values()) > 100
    assert pool.generation == 7 and pool.endpoints()["mm"].previous_version == "6"


def test_a_version_that_fails_keeps_the_old_one_everywhere_and_counts_once(pool: WorkerPool) -> None:
    port = pool.port or 0
    result = pool.apply(spec("bad", NAN))
    assert not result.ok and result.reason == "NonFiniteOutput"
    state = pool.endpoints()["mm"]
    assert state.version == "1" and state.last_failure is not None and state.last_failure["version"] == "bad"
    assert {version_of(port) for _ in range(12)} == {"1"}
    failures = metric(port, "modelfleet_model_load_failures_total", '{model="mm",reason="NonFiniteOutput"}')
    assert pool.apply(spec("bad2", NAN)).reason == "NonFiniteOutput"
    after = metric(port, "modelfleet_model_load_failures_total", '{model="mm",reason="NonFiniteOutput"}')
    assert after == failures + 1  # one failed switch, not one per worker


def test_a_worker_that_cannot_prepare_aborts_the_switch_everywhere(pool: WorkerPool) -> None:
    port = pool.port or 0
    pool.load_timeout = 2.0
    hung = pool.pids()[1]
    os.kill(hung, signal.SIGSTOP)  # worker 1 never answers its prepare
    try:
        result = pool.apply(spec("2", V2))
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed and reaped as hung already
            os.kill(hung, signal.SIGCONT)
    assert not result.ok and result.reason == "WorkerUnavailable", result
    assert pool.endpoints()["mm"].version == "1"
    # Worker 0 had v2 loaded and staged: it was aborted, not switched; the hung worker is replaced.
    wait_for(lambda: pool.report()["restarts"] == 1 and pool.ready())
    assert hung not in pool.pids()
    assert {version_of(port) for _ in range(16)} == {"1"}
    assert pool.apply(spec("2", V2)).ok and {version_of(port) for _ in range(12)} == {"2"}


def test_a_dead_worker_restarts_on_the_current_version_and_is_reported(pool: WorkerPool) -> None:
    port = pool.port or 0
    assert pool.apply(spec("2", V2)).ok
    for _ in range(20):
        version_of(port)
    served = metric(port, "modelfleet_inference_requests_total", '{model="mm",version="2"}')
    assert served == 20
    dead = pool.pids()[0]
    restarts = metric(port, "modelfleet_serving_worker_restarts_total")  # the pool's process counts them all
    seen_not_ready = threading.Event()

    def watch_ready() -> None:
        for _ in range(400):
            try:
                status = get(port, "GET", "/v2/health/ready")[0]
            except ConnectionResetError:  # queued on the killed worker's listener (see docs: tcp_migrate_req)
                continue
            if status == 503:
                seen_not_ready.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_ready)
    watcher.start()
    os.kill(dead, signal.SIGKILL)
    watcher.join()
    assert seen_not_ready.is_set(), "ready stayed true while a worker was down"
    wait_for(lambda: pool.report()["restarts"] == 1 and pool.ready())
    assert dead not in pool.pids() and len(pool.pids()) == 2
    # no lost series: the dead worker's counts stay in the sum
    assert metric(port, "modelfleet_inference_requests_total", '{model="mm",version="2"}') == served
    assert pool.report()["lastRestart"]["exitCode"] == -signal.SIGKILL
    assert {version_of(port) for _ in range(16)} == {"2"}  # never the stale v1
    assert metric(port, "modelfleet_serving_worker_restarts_total") == restarts + 1
    assert get(port, "GET", "/v2/health/ready") == (200, b'{"ready":true}')
    assert pool.rollback("mm") and {version_of(port) for _ in range(12)} == {"1"}  # previous kept in the new one


def test_metrics_sum_the_workers_without_double_counting(pool: WorkerPool) -> None:
    port = pool.port or 0
    for _ in range(30):
        assert get(port, "POST", INFER, BODY)[0] == 200
    assert get(port, "POST", INFER, b"{bad")[0] == 400
    assert metric(port, "modelfleet_inference_requests_total", '{model="mm",version="1"}') == 31
    assert metric(port, "modelfleet_inference_failures_total", '{code="400",model="mm",version="1"}') == 1
    assert metric(port, "modelfleet_inference_latency_seconds_count", '{model="mm",version="1"}') == 31
    swaps = metric(port, "modelfleet_model_swaps_total", '{model="mm"}')  # the pool's process counts them all
    assert pool.apply(spec("2", V2)).ok
    assert metric(port, "modelfleet_model_swaps_total", '{model="mm"}') == swaps + 1  # not one per worker
    text = get(port, "GET", "/metrics")[1].decode()
    assert text.count("# TYPE modelfleet_inference_requests_total counter") == 1
    assert re.search(r'^modelfleet_serving_worker_rss_bytes\{worker="1"\} [1-9]', text, re.M)
    assert re.search(r"^modelfleet_serving_workers 2\.0$", text, re.M)
    check = promtool("check", "metrics", stdin=text)  # one valid exposition: no family twice, HELP/TYPE right
    assert check.returncode == 0 and "error" not in check.stdout + check.stderr, check.stdout + check.stderr


class Recorder:
    """An observer (the drift/capture hook interface) that records what reaches the control plane."""

    def __init__(self, block: threading.Event | None = None) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.block = block

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        if self.block is not None:
            self.block.wait(30)
        self.seen.append(("observe", feeds["input"].shape, outputs["output"].shape, request_id))

    def observe_error(self, seconds: float) -> None:
        self.seen.append(("error",))

    def observe_rejection(self) -> None:
        self.seen.append(("rejection",))

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {"joined": json.loads(body)["n"]}


def test_request_samples_reach_the_agents_observers() -> None:
    recorders: dict[str, Recorder] = {}

    def factory(s: Any) -> Recorder:
        return recorders.setdefault(s.version, Recorder())

    with WorkerPool(2, port=0, observer_factory=factory) as p:
        assert p.apply(spec()).ok
        port = p.port or 0
        for i in range(20):
            body = json.dumps({"id": f"r{i}", "inputs": PROBE_V1["inputs"]}).encode()
            assert get(port, "POST", INFER, body)[0] == 200
        assert get(port, "POST", INFER, b'{"inputs": []}')[0] == 400
        assert get(port, "POST", "/v2/models/mm/feedback", b'{"n": 3}') == (200, b'{"joined":3}')
        wait_for(lambda: len(recorders["1"].seen) == 21)
        observed = sorted(x[3] for x in recorders["1"].seen if x[0] == "observe")
        assert observed == sorted(f"r{i}" for i in range(20))
        assert ("rejection",) in recorders["1"].seen
        assert recorders["1"].seen[0][1:3] == ((2, 16), (2, 4))


def test_a_full_sample_queue_drops_and_counts_and_serving_goes_on() -> None:
    block = threading.Event()
    rec = Recorder(block)
    with WorkerPool(2, port=0, observer_factory=lambda s: rec, sample_queue_max=8) as p:
        assert p.apply(spec()).ok
        port = p.port or 0
        big = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [500, 16],
                                      "data": [0.25] * 8000}]}).encode()  # 40 kB of tensors per sample
        sent = 150
        for _ in range(sent):
            assert get(port, "POST", INFER, big)[0] == 200  # a stuck observer never slows a request down
        block.set()
        dropped_name = "modelfleet_serving_samples_dropped_total"
        wait_for(lambda: len(rec.seen) + metric(port, dropped_name, '{model="mm"}') == sent)
        assert metric(port, dropped_name, '{model="mm"}') > 0


def test_remove_and_unknown_models(pool: WorkerPool) -> None:
    port = pool.port or 0
    assert pool.apply(spec("1", V1, name="other")).ok
    assert get(port, "GET", "/v2/models/other/ready")[0] == 200
    pool.remove("other")
    assert get(port, "GET", "/v2/models/other/ready")[0] == 404
    assert "other" not in pool.endpoints() and [m.name for m in pool.models()] == ["mm"]
    assert get(port, "GET", "/v2/health/ready") == (200, b'{"ready":true}')


def test_the_precision_the_workers_read_back_is_reported(pool: WorkerPool) -> None:
    """An fp16 OpenVINO version: the pool reports the precision its workers' runtimes compute in — the one a
    registry in this process reads back (OpenVINO's documented fallback for this CPU) — next to the declared one."""
    fp16 = spec("1", V1, name="half", probe=PROBE_V1, runtime="openvino", precision="fp16", device="CPU")
    reg = ModelRegistry()
    try:
        assert reg.apply(fp16).ok
        here = reg.endpoints()["half"].effective_precision
    finally:
        reg.close()
    result = pool.apply(fp16)
    assert result.ok and result.precision == here
    state = pool.endpoints()["half"]
    assert (state.precision, state.effective_precision) == ("fp16", here)
    assert pool.endpoints()["mm"].effective_precision == "fp32"  # onnxruntime: the declared (default) one


def test_stop_ends_every_worker(pool: WorkerPool) -> None:
    pids = pool.pids()
    pool.stop()
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_serve_workers_on_the_command_line(tmp_path: Any) -> None:
    """`modelfleet serve --workers 2`: both workers answer on one port; SIGTERM stops every process."""
    import subprocess
    import sys

    from tests._hostile import ServerProcess

    with ServerProcess(tmp_path, workers=2) as srv:
        assert len(srv.pids) == 2 and srv.proc.pid not in srv.pids
        assert version_of(srv.port) == "1"
        assert get(srv.port, "GET", "/v2/health/ready") == (200, b'{"ready":true}')
        assert metric(srv.port, "modelfleet_serving_workers") == 2
        pids = srv.pids
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10)
    bad = tmp_path / "nan.onnx"
    bad.write_bytes(NAN)
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", "serve", str(bad), "--port", "0", "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: NonFiniteOutput:"), r.stderr


def test_unix_socket_and_bearer_token_in_every_worker(tmp_path: Any) -> None:
    import socket

    path = tmp_path / "serve.sock"

    def over_unix(method: str, target: str, token: str | None = None) -> tuple[int, bytes]:
        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))

        conn = Conn("localhost", timeout=10)
        conn.request(method, target, body=BODY if method == "POST" else None,
                     headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        out = r.status, r.read()
        conn.close()
        return out

    with WorkerPool(2, port=None, unix_socket=path, auth_token="s3cret") as p:
        assert p.url == f"unix:{path}" and p.apply(spec()).ok
        answers = [over_unix("POST", INFER, "s3cret") for _ in range(10)]
        assert all(status == 200 and json.loads(body)["model_version"] == "1" for status, body in answers)
        assert over_unix("POST", INFER)[0] == 401 and over_unix("GET", "/metrics")[0] == 401
        assert over_unix("GET", "/metrics", "s3cret")[0] == 200
        assert over_unix("GET", "/v2/health/ready")[0] == 200  # health needs no token
    assert not path.exists()
