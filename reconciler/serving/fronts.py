"""The fronts of one serving process: the HTTP/1.1 front always, the gRPC front beside it when a port is set.

:class:`Fronts` starts and stops them together over one application core (the HTTP server's
:class:`~reconciler.serving.app.v2app.V2App`), so the agent, ``modelfleet serve`` and each worker process
(:mod:`reconciler.serving.workers`) hold one object. ``grpcio`` is the optional extra ``modelfleet[grpc]``: with a
gRPC port set and the extra missing, :func:`grpc_front` says how to install it (:class:`GrpcNotInstalled`).
"""

from __future__ import annotations

import os
from typing import Any

from reconciler.core.extras import installed
from reconciler.serving.app.v2app import V2App
from reconciler.serving.http.server import InferenceServer
from reconciler.serving.limits import ServerLimits

GRPC_EXTRA = "modelfleet[grpc]"


class GrpcNotInstalled(RuntimeError):
    """A gRPC port is set, and grpcio (the ``grpc`` extra) is not installed."""


def grpc_missing(requested_by: str) -> str:
    """``--grpc-port needs gRPC, which is not installed: pip install 'modelfleet[grpc]'``."""
    return f"{requested_by} needs gRPC, which is not installed: pip install '{GRPC_EXTRA}'"


def grpc_front(app: V2App, *, host: str, port: int, limits: ServerLimits, tls_cert: Any = None,
               tls_key: Any = None, reuse_port: bool = False, requested_by: str = "a gRPC port") -> Any:
    """A :class:`~reconciler.serving.grpc.server.GrpcServer` over ``app`` (not started)."""
    if not installed("grpc"):
        raise GrpcNotInstalled(grpc_missing(requested_by))
    from reconciler.serving.grpc.server import GrpcServer

    return GrpcServer(app, host=host, port=port, limits=limits, tls_cert=tls_cert, tls_key=tls_key,
                      reuse_port=reuse_port)


class Fronts:
    """An :class:`InferenceServer` and, with ``grpc_port``, a gRPC server over the same app."""

    def __init__(self, http: InferenceServer, grpc_port: int | None = None, *,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None,
                 requested_by: str = "a gRPC port") -> None:
        self.http = http
        self.grpc: Any = None
        if grpc_port is not None:
            self.grpc = grpc_front(http.app, host=http.host, port=grpc_port, limits=http.limits, tls_cert=tls_cert,
                                   tls_key=tls_key, requested_by=requested_by)

    @property
    def app(self) -> V2App:
        return self.http.app

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def port(self) -> int | None:
        return self.http.port

    @property
    def grpc_url(self) -> str | None:
        return self.grpc.url if self.grpc is not None else None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc is not None else None

    def start(self) -> None:
        self.http.start()
        if self.grpc is not None:
            try:
                self.grpc.start()
            except BaseException:
                self.http.stop()
                raise

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()
        self.http.stop()

    def __enter__(self) -> Fronts:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
