"""The server's request handler (``V2App``) behind other HTTP stacks, for ``bench_serving.py --only stacks``.

Imported by the stack's own process: ``granian --interface rsgi _stack_apps:rsgi`` (or ``:asgi``), or run as
``python _stack_apps.py uvicorn|stdlib PORT``. The model is the file named by ``$MF_BENCH_MODEL``, served as
endpoint ``tiny`` with one intra-op thread, as ``modelfleet serve --threads 1`` serves it. Each adapter hands
the request to the same ``V2App.handle`` our own HTTP layer calls, so the stacks differ only in the HTTP part.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reconciler.serving.app.v2app import V2App, _Deferred
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from reconciler.serving.v2.handler import Response

_registry = ModelRegistry()
_loaded = _registry.apply(EndpointSpec("tiny", "1", files=[Path(os.environ["MF_BENCH_MODEL"])], threads=1))
if not _loaded.ok:
    raise SystemExit(f"cannot load the bench model: {_loaded.message}")
_app = V2App(_registry)


def _answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
    resp = _app.handle(method, path, headers, body)
    return resp.fn() if isinstance(resp, _Deferred) else resp  # type: ignore[return-value]


async def rsgi(scope: Any, proto: Any) -> None:
    """Granian's own interface (RSGI): the body in one await, the response in one call."""
    body = await proto()
    r = _answer(scope.method, scope.path, dict(scope.headers.items()), body)
    proto.response_bytes(r.status, [("content-type", r.content_type.decode("latin-1")),
                                    *((k.decode("latin-1"), v.decode("latin-1")) for k, v in r.headers)], r.body)


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app (no framework): what uvicorn and granian's ASGI interface call."""
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    r = _answer(scope["method"], scope["path"], headers, b"".join(chunks))
    await send({"type": "http.response.start", "status": r.status,
                "headers": [(b"content-type", r.content_type), (b"content-length", b"%d" % len(r.body)), *r.headers]})
    await send({"type": "http.response.body", "body": r.body})


class _StdlibHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        r = _answer("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.send_response(r.status)
        self.send_header("content-type", r.content_type.decode("latin-1"))
        self.send_header("content-length", str(len(r.body)))
        for k, v in r.headers:
            self.send_header(k.decode("latin-1"), v.decode("latin-1"))
        self.end_headers()
        self.wfile.write(r.body)

    def log_message(self, *args: Any) -> None:
        pass


def main(stack: str, port: int) -> None:
    if stack == "uvicorn":
        import uvicorn

        uvicorn.run(asgi, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="error",
                    access_log=False, lifespan="off")
    elif stack == "stdlib":
        ThreadingHTTPServer(("127.0.0.1", port), _StdlibHandler).serve_forever()
    else:
        raise SystemExit(f"unknown stack {stack!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
