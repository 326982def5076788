"""The gRPC front in worker processes (``serve --workers N --grpc-port P``): every worker serves the shared gRPC
port (SO_REUSEPORT, held by the pool across restarts), switches are seen by every worker at once, and the token
and metrics are the pool's."""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from reconciler.devkit.modelgen import matmul_model
from reconciler.serving.workers.pool import WorkerPool
from tests._serving_fixtures import PROBE_V1, spec
from tests.serving.test_workers import cpu_ticks

X = np.array(PROBE_V1["inputs"][0]["data"], np.float32).reshape(2, 16)
TOKEN = {"authorization": "Bearer s3cret"}
#: a connection of its own per client: grpc otherwise shares one between channels to the same address
OWN = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    p = WorkerPool(2, port=0, grpc_port=0, auth_token="s3cret", load_timeout=20.0)
    p.start()
    assert p.apply(spec(probe=PROBE_V1)).ok
    yield p
    p.stop()


def infer(port: int) -> str:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=OWN)  # a new connection, any worker
    try:
        inp = grpcclient.InferInput("input", [2, 16], "FP32")
        inp.set_data_from_numpy(X)
        return str(c.infer("mm", [inp], headers=TOKEN).get_response().model_version)
    finally:
        c.close()


def test_every_worker_serves_grpc_and_switches_at_once(pool: WorkerPool) -> None:
    port = pool.grpc_port or 0
    assert pool.grpc_url == f"grpc://127.0.0.1:{port}"
    pids = pool.pids()
    before = {pid: cpu_ticks(pid) for pid in pids}
    stop = threading.Event()
    seen: list[str] = []

    def load() -> None:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}", channel_args=OWN)
        inp = grpcclient.InferInput("input", [2, 16], "FP32")
        inp.set_data_from_numpy(X)
        while not stop.is_set():
            seen.append(str(c.infer("mm", [inp], headers=TOKEN).get_response().model_version))
        c.close()

    threads = [threading.Thread(target=load) for _ in range(12)]  # 12 connections: all on one worker 2 * 2**-12
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert pool.apply(spec("2", matmul_model(seed=1, bias=2.0))).ok
    assert all(infer(port) == "2" for _ in range(8))  # once apply returned, no worker answers with version 1
    stop.set()
    for t in threads:
        t.join(15)
    assert set(seen) <= {"1", "2"} and "1" in seen
    assert all(cpu_ticks(pid) > before[pid] for pid in pids), "one worker got no gRPC connections"
    conn = http.client.HTTPConnection("127.0.0.1", pool.port or 0, timeout=10)
    conn.request("GET", "/metrics", headers=TOKEN)
    text = conn.getresponse().read().decode()
    conn.close()
    total = float(re.search(r'^modelfleet_inference_requests_total\{model="mm",version="1"\} (\S+)$', text, re.M)[1])
    assert total >= seen.count("1")  # the pool's /metrics sums what every worker's gRPC front counted

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException) as info:
        c.get_model_metadata("mm")
    assert str(info.value.status()) == "StatusCode.UNAUTHENTICATED"
    assert c.is_server_ready()
    c.close()
