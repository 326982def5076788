"""The application core both fronts call: what a v2 request means, over the model registry.

:class:`~.v2app.V2App` holds the routes of the Open Inference Protocol — health, metadata, repository index,
inference, feedback — and the bearer token, the inference metrics and the choice where a request runs (inline on
the front's event loop for a fast model, in a thread pool, or queued for an adaptive batch);
:class:`~.inferpath.InferPath` takes one inference from decoded tensors to the answer, counting it exactly once.
The HTTP/1.1 front (:mod:`reconciler.serving.http`) and the gRPC front (:mod:`reconciler.serving.grpc`) are thin:
they turn their wire format into these calls and the answers back, so a version switch, a limit, a metric, a
batch, a drift or capture hook behaves the same whichever way a request came in.

It depends on the registry and on :mod:`reconciler.serving.v2`; nothing in it knows a socket.
"""
