"""The device's TUF places behind a site gateway (FallbackTuf): which one serves, the next one tried in the same
call when one refuses, and what the operator reads in ``ArtifactsReady`` while a place is asked last."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.agent.failover import FallbackTuf
from reconciler.distribution.tuferrors import TargetHashMismatch, TufClientError


class Place:
    """A TUF client that refreshes and serves, or raises the error it is given (per call kind)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refresh_error: TufClientError | None = None
        self.fetch_error: TufClientError | None = None
        self.bytes_downloaded = 0
        self.fetches = 0

    def refresh(self) -> None:
        if self.refresh_error is not None:
            raise self.refresh_error

    def fetch(self, paths: list[str]) -> dict[str, Any]:
        self.fetches += 1
        if self.fetch_error is not None:
            raise self.fetch_error
        return {p: f"{self.name}:{p}" for p in paths}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_tampered_target_at_the_gateway_is_fetched_centrally_and_said_while_the_gateway_is_asked_last() -> None:
    gw, central, clock = Place("gw"), Place("central"), Clock()
    tuf = FallbackTuf([("gateway http://gw:8780", gw), ("central", central)], base=30.0, clock=clock)
    tuf.refresh()
    assert tuf.fetch(["m.onnx"]) == {"m.onnx": "gw:m.onnx"}
    assert tuf.note() == "from gateway http://gw:8780"

    gw.fetch_error = TargetHashMismatch("target m.onnx: downloaded file does not match its signed sha256 hash")
    assert tuf.fetch(["n.onnx"]) == {"n.onnx": "central:n.onnx"}  # the same call, the next place
    assert tuf.refused == ["gateway http://gw:8780: TargetHashMismatch"]
    assert tuf.note() == "from central (gateway http://gw:8780: TargetHashMismatch; asked last for now)"

    # the next passes refresh from the center first; the note stays while the gateway is asked last ...
    clock.now += 29
    tuf.refresh()
    assert gw.fetches == 2 and tuf.fetch(["n.onnx"]) == {"n.onnx": "central:n.onnx"} and gw.fetches == 2
    assert "TargetHashMismatch; asked last for now" in tuf.note()
    # ... and goes once its backoff is over and the gateway serves again
    clock.now += 2
    gw.fetch_error = None
    tuf.refresh()
    assert tuf.fetch(["n.onnx"]) == {"n.onnx": "gw:n.onnx"} and tuf.note() == "from gateway http://gw:8780"


def test_when_every_place_fails_the_last_error_is_raised_and_each_place_is_said() -> None:
    gw, central = Place("gw"), Place("central")
    gw.refresh_error = TufClientError("gateway down", reason="RepositoryUnavailable")
    central.refresh_error = TufClientError("center down", reason="RepositoryUnavailable")
    tuf = FallbackTuf([("gateway http://gw:8780", gw), ("central", central)])
    with pytest.raises(TufClientError, match="center down"):
        tuf.refresh()
    assert tuf.refused == ["gateway http://gw:8780: RepositoryUnavailable", "central: RepositoryUnavailable"]
    assert tuf.note() == ("(gateway http://gw:8780: RepositoryUnavailable; central: RepositoryUnavailable; "
                          "asked last for now)")
