"""Serving models over the Open Inference Protocol (KServe v2): REST, and gRPC beside it.

The layout follows the request, from the wire inward (docs/serving.md#layout; import-linter checks the order):

- :mod:`~.workers`: N worker processes sharing the ports, one control plane that switches them all at once
  through one generation word in shared memory; it stands where registry + fronts stand in one process;
- :mod:`~.fronts`: the fronts of one process, started and stopped together;
- :mod:`~.http` (HTTP/1.1 connections, limits and flow control, the listening sockets) and :mod:`~.grpc`
  (``inference.GRPCInferenceService`` on grpc.aio, the optional ``grpc`` extra): two thin fronts that never
  import each other and call the same
- :mod:`~.app`: the application core — routes, bearer token, metrics, where a request runs (inline, thread pool,
  adaptive batch) and :class:`~.app.inferpath.InferPath`, one inference from tensors to answer;
- :mod:`~.registry`: the endpoints and their versions, swapped in only after the health check (:mod:`~.health`:
  golden outputs, latency, memory) passes and rolled back otherwise, with :mod:`~.batching`, the request hooks
  of drift monitoring and data capture (:mod:`~.observers`) and the manifest's interface check
  (:mod:`~.interface`);
- :mod:`~.runtimes`: ONNX Runtime or OpenVINO behind one small interface, at the precision a variant declares
  (:mod:`~.precision`); :mod:`~.hwfacts` detects what the device's hardware offers, the facts variant choice is
  made from; :mod:`~.limits` is the one value every front's limits come from;
- :mod:`~.v2`: the protocol's data, pure — tensor codecs (binary and JSON, in bounded slices), request plans and
  what a front and the application agree an answer is.

It imports only :mod:`reconciler.core`; the agent drives it, and ``modelfleet serve`` runs it on local files.
"""
