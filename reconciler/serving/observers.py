"""What a loaded model version hands each request's tensors to: drift monitoring, data capture, or both.

The registry sets ``LoadedModel.observer`` per version (from its ``observer_factory``); :class:`Observer` is
the interface, :class:`Observers` fans one request out to several (``Observers.of(drift, capture)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Observer(Protocol):
    """What the registry hands each request's tensors to (set per version by ``observer_factory``)."""

    def observe(
        self,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        seconds: float,
        request_id: str | None = None,
    ) -> None: ...

    def observe_error(self, seconds: float) -> None: ...

    def observe_rejection(self) -> None: ...

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Ground truth for earlier requests (``POST /v2/models/{name}/feedback``): (HTTP status, answer)."""
        ...


class Observers:
    """Several observers behind one ``LoadedModel.observer`` (drift monitoring and data capture side by side).

    ``observe_rejected_inputs(inputs)`` is an optional extension: members that define it also get the decoded
    inputs of a request that failed validation (data capture keeps them as a trigger).
    """

    __slots__ = ("members", "_rejected")

    def __init__(self, members: Sequence[Observer]) -> None:
        self.members = tuple(members)
        self._rejected = tuple(m.observe_rejected_inputs for m in self.members  # type: ignore[attr-defined]
                               if hasattr(m, "observe_rejected_inputs"))

    @classmethod
    def of(cls, *members: Observer | None) -> Observer | None:
        """None, the single observer, or a fan-out of the given ones."""
        present = [m for m in members if m is not None]
        if not present:
            return None
        return present[0] if len(present) == 1 else cls(present)

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], seconds: float,
                request_id: str | None = None) -> None:
        for m in self.members:
            m.observe(feeds, outputs, seconds, request_id)

    def observe_error(self, seconds: float) -> None:
        for m in self.members:
            m.observe_error(seconds)

    def observe_rejection(self) -> None:
        for m in self.members:
            m.observe_rejection()

    def observe_rejected_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        for fn in self._rejected:
            fn(inputs)

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Ground truth goes to the first member that joins it (drift monitoring)."""
        for m in self.members:
            fn = getattr(m, "feedback", None)
            if fn is not None:
                return fn(body)  # type: ignore[no-any-return]
        return 409, {"error": "this model version is not monitored: no feedback join"}
