"""The gRPC front: the Open Inference Protocol's ``inference.GRPCInferenceService`` beside the HTTP front.

``grpc_predict_v2.proto`` is the protocol's service and messages (field numbers are the wire contract every v2
client shares); ``grpc_predict_v2_pb2*.py`` are generated from it (``scripts/gen_grpc.py``) and committed.
:mod:`~.tensors` turns a ``ModelInferRequest`` into the decoded request the application core checks and runs —
raw contents (``raw_input_contents``, the binary extension's layout) or typed contents — and the outputs into a
``ModelInferResponse`` of the same form; :mod:`~.wire` walks a large message's top-level fields so its raw
contents stay views of the received bytes (protobuf would copy each twice) and writes raw outputs after the rest. :class:`~.server.GrpcServer` runs a ``grpc.aio`` server in a thread of
its own and answers each RPC through the same :class:`~reconciler.serving.app.v2app.V2App` the HTTP front
calls: one registry (switches and rollbacks), one bearer token (metadata ``authorization: Bearer …``), one
set of metrics, batches and drift/capture hooks; the :class:`~reconciler.serving.limits.ServerLimits` become
gRPC's own (message size, streams per connection, connections, inferences in progress, handshake, idle and keepalive).
Errors are gRPC status codes (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, UNAVAILABLE, …).

``grpcio`` is the optional extra ``modelfleet[grpc]``: nothing imports this package unless a gRPC port is set.
It depends on :mod:`reconciler.serving.app` and below, never on the HTTP front beside it.
"""
