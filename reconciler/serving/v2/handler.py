"""What the HTTP/1.1 layer (``http1``) and the application behind it (``server.V2App``) agree on: the
:class:`Handler` contract, and what a handler answers: a :class:`Response` at once, :class:`Deferred` work for the
server's thread pool, or a ``concurrent.futures.Future`` another thread completes (adaptive batching)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

JSON_CT = b"application/json"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON_CT
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Deferred:
    """Work to run in the thread pool; produces a :class:`Response`, or a ``Future`` of one (a request queued
    for an adaptive batch: the connection answers when the batch is done)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Response | concurrent.futures.Future[Response]]) -> None:
        self.fn = fn


def error_response(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    import json

    return Response(status, json.dumps({"error": message}, separators=(",", ":")).encode(), JSON_CT, headers)


class Handler(Protocol):
    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response | Deferred | concurrent.futures.Future[Response]: ...

    def body_limit(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, str]:
        """The largest body this request may have, and how to name that limit in the 413 message."""
        ...
