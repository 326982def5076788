"""TUF through a site gateway's cache first, the central TUF repository as fallback (docs/gateway.md).

:class:`FallbackTuf` holds one :class:`~reconciler.distribution.tufclient.TufClient` per place (the gateway's
``/tuf/`` cache, then the central URLs), sharing the device's trusted metadata directory and model store, and
looks like one client to the agent. Every client runs the whole TUF workflow: the gateway's answers are checked
against the device's own trusted root like the central server's, so a gateway that serves tampered targets,
old or mixed metadata gets a refused refresh or download — and the device asks the next place in the same pass.
A gateway that freezes the metadata is passed over once the timestamp expires (``MetadataExpired``). Which place
answered is in :attr:`FallbackTuf.served_by`; a failed place is asked last for a while
(:class:`~reconciler.gitops.failover.Failover`), and :meth:`FallbackTuf.note` says so for as long as it lasts —
the agent puts it in ``ArtifactsReady``, so the operator sees a gateway that served a tampered target, not only
the device's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from reconciler.distribution.tuferrors import TufClientError
from reconciler.gitops.failover import Failover

log = logging.getLogger("reconciler.agent")


class FallbackTuf:
    """``clients`` (``(label, TufClient)``) in preference order, used as one client; see the module docstring."""

    def __init__(self, clients: list[tuple[str, Any]], *, base: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = clients
        self.failover: Failover[tuple[str, Any]] = Failover(clients, base=base, clock=clock)
        self.active = clients[-1][1]
        self.served_by: str | None = None
        self.refused: list[str] = []  # "<place>: <reason>" of the places passed over in the last call

    def note(self) -> str:
        """Which place served last, and each place asked last for now with the reason it last failed:
        ``from central (gateway http://gw:8780: TargetHashMismatch; asked last for now)``."""
        avoided = [f"{self.clients[i][0]}: {reason}" for i, reason in self.failover.avoided()]
        text = f"from {self.served_by}" if self.served_by else ""
        if avoided:
            text += f" ({'; '.join(avoided)}; asked last for now)"
        return text.strip()

    @property
    def bytes_downloaded(self) -> int:
        return sum(int(c.bytes_downloaded) for _, c in self.clients)

    @property
    def fetcher(self) -> Any:
        return getattr(self.active, "fetcher", None)

    def refresh(self) -> None:
        self.refused = []
        last: TufClientError | None = None
        for idx, (label, client) in self.failover.order():
            try:
                client.refresh()
            except TufClientError as exc:
                self._passed(idx, label, exc)
                last = exc
                continue
            self.failover.succeeded(idx)
            self.active, self.served_by = client, label
            return
        assert last is not None
        raise last

    def target_info(self, path: str) -> Any:
        return self.active.target_info(path)

    def fetch(self, paths: list[str]) -> dict[str, Any]:
        """The active place's verified targets; when it fails (a tampered or missing target, a dead cache), the
        other places in turn, each refreshed first."""
        try:
            return self.active.fetch(paths)
        except TufClientError as exc:
            first = exc
            idx = next(i for i, (_, c) in enumerate(self.clients) if c is self.active)
            self._passed(idx, self.clients[idx][0], exc)
        for idx, (label, client) in self.failover.order():
            if client is self.active:
                continue
            try:
                client.refresh()
                fetched = client.fetch(paths)
            except TufClientError as exc:
                self._passed(idx, label, exc)
                continue
            self.failover.succeeded(idx)
            self.active, self.served_by = client, label
            return fetched
        raise first

    def _passed(self, idx: int, label: str, exc: TufClientError) -> None:
        self.failover.failed(idx, exc.reason)
        self.refused.append(f"{label}: {exc.reason}")
        log.warning("TUF through %s failed, trying the next place: %s: %s", label, exc.reason, exc)
