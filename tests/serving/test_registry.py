# ruff: noqa: F811  (pytest fixtures imported from _serving_fixtures)
"""Model registry: health-gated switches, automatic rollback, draining of in-flight requests."""

from __future__ import annotations

import threading
import time

import numpy as np

from reconciler.devkit.modelgen import matmul_model
from reconciler.serving.registry import ModelRegistry
from tests._serving_fixtures import NAN, PROBE_V1, PROBE_V2, V2, registry, spec  # noqa: F401

X = np.array(PROBE_V1["inputs"][0]["data"], dtype=np.float32).reshape(2, 16)


def served(reg: ModelRegistry) -> float:
    with reg.get("mm") as m:
        return float(m.infer({"input": X})["output"][0, 0])


def test_availability_swap_keeps_previous_and_rollback_is_instant(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", probe=PROBE_V1)).ok
    v1 = served(registry)
    r = registry.apply(spec("2", V2, PROBE_V2, digest="sha256:v2"))
    assert r.ok and r.load_ms > 0
    assert served(registry) == v1 + 1.0
    st = registry.endpoints()["mm"]
    assert (st.version, st.previous_version, st.digest, st.ready) == ("2", "1", "sha256:v2", True)
    t0 = time.perf_counter()
    assert registry.rollback("mm")
    assert time.perf_counter() - t0 < 1.0
    assert served(registry) == v1 and registry.endpoints()["mm"].previous_version == "2"
    # Re-applying a version that is still loaded is a switch, not a load.
    assert registry.apply(spec("2", V2, PROBE_V2, digest="sha256:v2")).message.startswith("switched")
    assert registry.apply(spec("2", V2, PROBE_V2, digest="sha256:v2")).reason == "AlreadyActive"


def test_failed_health_check_never_becomes_active(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", probe=PROBE_V1)).ok
    v1 = served(registry)
    cases = [
        (spec("2", NAN, None), "NonFiniteOutput"),
        (spec("3", V2, PROBE_V1), "ProbeMismatch"),
        (spec("4", V2, PROBE_V2, health={"maxLatencyMs": 1e-6}), "LatencyTooHigh"),
        (spec("5", b"garbage"), "LoadFailed"),
        (
            spec("6", V2, None, inputs=[{"name": "input", "datatype": "INT8", "shape": [-1, 16]}]),
            "InterfaceMismatch",
        ),
    ]
    for s, reason in cases:
        r = registry.apply(s)
        assert (r.ok, r.reason) == (False, reason), r
        assert served(registry) == v1
        st = registry.endpoints()["mm"]
        assert (
            st.version == "1"
            and st.last_failure["reason"] == reason
            and st.last_failure["version"] == s.version
        )


def test_resource_strategy_reloads_old_version_when_new_fails(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", probe=PROBE_V1, strategy="resource")).ok
    v1 = served(registry)
    r = registry.apply(spec("2", NAN, None, strategy="resource"))
    assert (r.ok, r.reason, r.rolled_back) == (False, "NonFiniteOutput", True)
    assert served(registry) == v1
    assert registry.endpoints()["mm"].previous_version is None
    assert registry.apply(spec("2", V2, PROBE_V2, strategy="resource")).ok
    assert served(registry) == v1 + 1.0
    assert registry.endpoints()["mm"].previous_version is None  # resource mode keeps one copy
    assert registry.rollback("mm")  # reloads version 1 from its blobs
    assert served(registry) == v1


def test_old_version_drains_in_flight_requests_before_unload(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", probe=PROBE_V1, keep_previous=False)).ok
    lease = registry.get("mm")
    old = lease.model
    done = threading.Event()
    t = threading.Thread(
        target=lambda: (registry.apply(spec("2", V2, PROBE_V2, keep_previous=False)), done.set())
    )
    t.start()
    # The switch happens at once; the unload waits for our lease.
    deadline = time.monotonic() + 5
    while registry.endpoints()["mm"].version != "2" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.endpoints()["mm"].version == "2"
    assert not done.wait(0.2)
    assert old.infer({"input": X})["output"].shape == (2, 4)  # still usable while leased
    lease.release()
    assert done.wait(5)
    t.join()
    assert registry.endpoints()["mm"].previous_version is None


def test_concurrent_requests_see_no_error_during_swaps(registry: ModelRegistry) -> None:
    assert registry.apply(spec("1", probe=PROBE_V1)).ok
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                served(registry)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(10):
        assert registry.apply(spec(str(i + 2), matmul_model(seed=1, bias=float(i + 1)))).ok
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    registry.remove("mm")
    assert "mm" not in registry.endpoints()
