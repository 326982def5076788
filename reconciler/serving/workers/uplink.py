"""The pool's end of every worker's uplink: request samples to the agent's observers, and the two questions a
worker cannot answer itself (``/metrics``, the pool's one view; ``/feedback``, joined by the version's observer).

A worker sends ``("events", [...])`` batches of ``observe``/``error``/``rejection``/``rejected_inputs`` events and
``("rpc", id, what, arg)`` questions over its own pipe; one thread per worker runs :meth:`Uplink.serve`. The
observers are the agent's (drift, capture, shadow), one per loaded ``(endpoint, version)``: the pool keeps that
map as it loads and retires versions, and an event for a version without one is dropped. An observer's bug is
logged and costs that event, never the worker's pipe.
"""

from __future__ import annotations

import contextlib
import logging
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from reconciler.serving.registry import Observer

log = logging.getLogger("reconciler.serving.workers")


class Uplink:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        self.metrics_registry = metrics_registry
        self.observers: dict[tuple[str, str], Observer] = {}  # (endpoint, version) -> the agent's observer

    def serve(self, up: Connection) -> None:
        """Until the worker's pipe ends: deliver its events, answer its questions."""
        while True:
            try:
                msg = up.recv()
            except (EOFError, OSError, TypeError):  # TypeError: the pool closed the pipe between recv's own
                return  # closed check and its read (the handle it then reads is None)
            if msg[0] == "events":
                for event in msg[1]:
                    self.deliver(event)
            elif msg[0] == "rpc":
                _, rpc_id, what, arg = msg
                try:
                    answer = self.answer(what, arg)
                except Exception as exc:  # an observer's bug must not take the worker's question down
                    answer = (500, {"error": f"{what} failed: {exc}"})
                with contextlib.suppress(OSError):
                    up.send((rpc_id, answer))

    def deliver(self, event: tuple[Any, ...]) -> None:
        kind, name, version, *rest = event
        obs = self.observers.get((name, version))
        if obs is None:
            return
        try:
            if kind == "observe":
                obs.observe(*rest)
            elif kind == "error":
                obs.observe_error(*rest)
            elif kind == "rejection":
                obs.observe_rejection()
            elif kind == "rejected_inputs":
                fn = getattr(obs, "observe_rejected_inputs", None)
                if fn is not None:
                    fn(*rest)
        except Exception:
            log.exception("observer of %s %s failed", name, version)

    def answer(self, what: str, arg: Any) -> Any:
        if what == "metrics":
            return generate_latest(self.metrics_registry)
        if what == "feedback":
            name, version, body = arg
            obs = self.observers.get((name, version))
            if obs is None:
                return 409, {"error": f"model {name!r} is not monitored: no feedback join"}
            return obs.feedback(body)
        return 400, {"error": f"unknown question {what!r}"}
