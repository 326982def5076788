"""Shared helpers for the serving tests: registries with generated models and a running server."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.devkit.modelgen import make_probe, matmul_model
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry

V1 = matmul_model(seed=1)
V2 = matmul_model(seed=1, bias=1.0)
NAN = matmul_model(seed=1, nan=True)
PROBE_V1 = make_probe(V1)
PROBE_V2 = make_probe(V2)


def spec(
    version: str = "1", blob: bytes = V1, probe: dict[str, Any] | None = None, **kw: Any
) -> EndpointSpec:
    return EndpointSpec(name=kw.pop("name", "mm"), version=version, blobs=[blob], probe=probe, **kw)


@pytest.fixture
def registry() -> Iterator[ModelRegistry]:
    reg = ModelRegistry()
    yield reg
    reg.close()


@pytest.fixture
def server(registry: ModelRegistry) -> Iterator[InferenceServer]:
    assert registry.apply(spec(probe=PROBE_V1)).ok
    srv = InferenceServer(registry, max_body_bytes=1 << 20)
    srv.start()
    yield srv
    srv.stop()


def call(
    srv: InferenceServer,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def raw(srv: InferenceServer, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
