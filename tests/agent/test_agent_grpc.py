"""The agent with ``serving.grpcPort``: the gRPC front serves what the agent deployed, and its drift monitoring sees
gRPC requests like REST ones (one application core, one set of hooks)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from reconciler.core.errors import UserError
from tests._agent_fixtures import ENDPOINT, IN_DIM
from tests._drift_fixtures import drift_world, send


def test_the_agent_serves_grpc_and_monitors_its_requests(tmp_path: Path) -> None:
    world = drift_world(tmp_path)
    try:
        agent = Agent(load_agent_config(world.agent_config(tmp_path / "dev", extra={"serving": {"grpcPort": 0}})))
        agent.boot()
        try:
            assert agent.reconcile_once().converged
            port = agent.c.server.grpc_port
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert client.is_model_ready(ENDPOINT)
            x = np.random.default_rng(11).normal(size=(20, IN_DIM)).astype(np.float32)
            for i in range(0, 20, 10):
                inp = grpcclient.InferInput("input", [10, IN_DIM], "FP32")
                inp.set_data_from_numpy(x[i : i + 10])
                assert client.infer(ENDPOINT, [inp]).as_numpy("output").shape[0] == 10
            client.close()
            send(agent.c.url, x[:10])  # and one REST request of 10 rows
            monitor = agent.c.drift.get(ENDPOINT, "1.0.0")
            end = time.monotonic() + 30
            while monitor.requests < 3:
                assert time.monotonic() < end, monitor.requests
                time.sleep(0.05)
        finally:
            agent.close()
    finally:
        world.stop()


def test_a_grpc_port_must_be_a_port(tmp_path: Path) -> None:
    world = drift_world(tmp_path)
    try:
        with pytest.raises(UserError, match="grpcPort"):
            load_agent_config(world.agent_config(tmp_path / "dev", extra={"serving": {"grpcPort": 70000}}))
    finally:
        world.stop()
