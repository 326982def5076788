"""The order a device tries its servers in: the site gateway first, the central servers as fallback.

A device behind a site gateway (``spec.gateway`` in its agent config, docs/gateway.md) has two places for each
of its three conversations — the fleet repository (polls and fetches), its status branch (pushes) and the TUF
repository — and asks the gateway first. :class:`Failover` keeps that preference and remembers failures: an
endpoint that failed is tried last for a while (doubling from ``base`` up to ``maximum`` seconds per
consecutive failure), so a gateway that is down costs one failed request per backoff period, not one per poll;
a success resets it. A failure may carry its reason: :meth:`Failover.avoided` lists the endpoints asked last
now with the reason each last failed, for the conditions that say so while it lasts. Pure and thread safe; the
clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Failover(Generic[T]):
    """Endpoints in preference order; a failed one goes last until its backoff ends (see the module docstring)."""

    def __init__(self, endpoints: Sequence[T], *, base: float = 30.0, maximum: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ValueError("no endpoint to fail over between")
        self.endpoints = list(endpoints)
        self.base, self.maximum, self.clock = base, maximum, clock
        self._failures = [0] * len(self.endpoints)
        self._until = [0.0] * len(self.endpoints)
        self._reasons: dict[int, str] = {}
        self._lock = threading.Lock()

    def order(self) -> list[tuple[int, T]]:
        """(index, endpoint) to try now: the preferred ones not backing off, then the backing-off ones (the one
        whose backoff ends first first), so there is always something to try."""
        now = self.clock()
        with self._lock:
            ready = [i for i in range(len(self.endpoints)) if self._until[i] <= now]
            waiting = sorted((i for i in range(len(self.endpoints)) if self._until[i] > now),
                             key=lambda i: self._until[i])
        return [(i, self.endpoints[i]) for i in ready + waiting]

    def failed(self, index: int, reason: str | None = None) -> None:
        with self._lock:
            if reason is not None:
                self._reasons[index] = reason
            self._failures[index] += 1
            delay = min(self.maximum, self.base * 2 ** min(self._failures[index] - 1, 20))
            self._until[index] = self.clock() + delay

    def succeeded(self, index: int) -> None:
        with self._lock:
            self._reasons.pop(index, None)
            self._failures[index] = 0
            self._until[index] = 0.0

    def backing_off(self, index: int) -> bool:
        with self._lock:
            return self._until[index] > self.clock()

    def avoided(self) -> list[tuple[int, str]]:
        """(index, reason it last failed with) of each endpoint asked last now, in preference order."""
        now = self.clock()
        with self._lock:
            return [(i, r) for i, r in sorted(self._reasons.items()) if self._until[i] > now]
