"""The registry's post-inference observer hook with several observers (drift monitoring + data capture)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reconciler.serving.http.server import InferenceServer
from reconciler.serving.registry import EndpointSpec, ModelRegistry, Observers
from tests._serving_fixtures import V1, call


class Counting:
    """An observer that counts what it is shown (the protocol's three required methods)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        self.seen.append(("ok", sorted(feeds), sorted(outputs)))

    def observe_error(self, seconds: float) -> None:
        self.seen.append(("error",))

    def observe_rejection(self) -> None:
        self.seen.append(("rejected",))


class WantsRejectedInputs(Counting):
    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        self.seen.append(("rejected-inputs", sorted(inputs)))


def test_of_collapses_none_and_single_observers() -> None:
    a = Counting()
    assert Observers.of(None, None) is None
    assert Observers.of(None, a) is a
    assert isinstance(Observers.of(a, Counting()), Observers)


def test_every_observer_sees_each_request_and_rejections_reach_those_that_ask() -> None:
    plain, capture = Counting(), WantsRejectedInputs()
    reg = ModelRegistry(observer_factory=lambda spec: Observers.of(plain, capture))
    decl = [{"name": "input", "datatype": "FP32", "shape": [-1, 16], "range": {"min": -10, "max": 10}}]
    assert reg.apply(EndpointSpec(name="mm", version="1", blobs=[V1], inputs=decl)).ok
    srv = InferenceServer(reg)
    srv.start()
    try:
        ok = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [50.0] * 16}]}
        assert call(srv, "POST", "/v2/models/mm/infer", ok)[0] == 200
        assert call(srv, "POST", "/v2/models/mm/infer", bad)[0] == 400
    finally:
        srv.stop()
        reg.close()
    assert plain.seen[-2:] == [("ok", ["input"], ["output"]), ("rejected",)]
    assert capture.seen[-3:] == [("ok", ["input"], ["output"]), ("rejected",), ("rejected-inputs", ["input"])]
