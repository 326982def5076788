# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""The stock ``tritonclient[http]`` client works against our server with its defaults (binary in and out)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from reconciler.devkit.modelgen import identity_model
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import ModelRegistry
from tests._serving_fixtures import PROBE_V1, registry, server, spec  # noqa: F401


def test_tritonclient_defaults(server: InferenceServer, registry: ModelRegistry) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mm")
    assert client.get_model_metadata("mm")["inputs"][0]["shape"] == [-1, 16]
    x = np.array(PROBE_V1["inputs"][0]["data"], np.float32).reshape(2, 16)
    inp = httpclient.InferInput("input", [2, 16], "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True by default
    res = client.infer("mm", [inp], request_id="t-1")
    np.testing.assert_allclose(res.as_numpy("output").reshape(-1), PROBE_V1["outputs"][0]["data"], atol=1e-5)
    assert res.get_response()["id"] == "t-1"
    # JSON in, JSON out as well.
    inp.set_data_from_numpy(x, binary_data=False)
    out = httpclient.InferRequestedOutput("output", binary_data=False)
    assert res.as_numpy("output").shape == client.infer("mm", [inp], outputs=[out]).as_numpy("output").shape
    with pytest.raises(InferenceServerException, match="does not match the model's FP32"):
        bad = httpclient.InferInput("input", [1, 16], "FP64")
        bad.set_data_from_numpy(np.zeros((1, 16)))
        client.infer("mm", [bad])
    assert registry.apply(spec("1", identity_model("BYTES"), name="strings")).ok
    s = httpclient.InferInput("input", [1, 2], "BYTES")
    s.set_data_from_numpy(np.array([[b"a\xffb", b""]], dtype=object))
    with pytest.raises(InferenceServerException, match="string tensors must be UTF-8"):
        client.infer("strings", [s])
    s.set_data_from_numpy(np.array([["hello", "é"]], dtype=object))
    assert client.infer("strings", [s]).as_numpy("output").tolist() == [[b"hello", "é".encode()]]
    client.close()
