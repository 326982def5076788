"""The HTTP/1.1 front: KServe v2 REST on an asyncio ``Protocol`` with the ``httptools`` parser.

:class:`~.server.InferenceServer` owns the listening sockets and the accept loop (the connection cap), in a
background thread with its own event loop; each connection is an :class:`~.http1.HttpConnection` that enforces
the :class:`~reconciler.serving.limits.ServerLimits` (sizes, flow control, pipelining, timeouts) and hands each
parsed request to the application core (:class:`~reconciler.serving.app.v2app.V2App`). Large binary-tensor
bodies are received into reused buffers (:mod:`~.bodypool`).

It depends on :mod:`reconciler.serving.app` and below, never on the gRPC front beside it.
"""
