"""Serving models over the Open Inference Protocol (KServe v2 REST).

Workflow: a runtime backend (:mod:`~.runtimes`: ONNX Runtime or OpenVINO behind one small interface) loads a
model's bytes; the :class:`~.registry.ModelRegistry` owns the endpoints, swaps a new version in only after its
health check (:mod:`~.health`: golden outputs, latency, memory) passes and rolls back otherwise; the
:class:`~.server.InferenceServer` answers v2 requests (decoded and encoded by :mod:`~.v2codec` and, for JSON,
:mod:`~.v2json` in bounded slices; a request of a kind already answered runs from its :mod:`~.plans` entry)
against the registry's current version; each connection is an
:mod:`~.http1` protocol that enforces the :class:`~.limits.ServerLimits` (flow control, sizes, timeouts). :mod:`~.hwfacts` detects what the device's hardware offers (CPU flags, memory,
OpenVINO devices), the facts variant choice is made from.

To use every core, a :class:`~.workers.WorkerPool` stands in for registry + server: N processes
(:mod:`~.workerproc`, each a registry and server of its own) share the port, and the pool switches them all at
once through one generation word in shared memory (:mod:`~.control`) after every worker prepared the new version.

It imports only :mod:`reconciler.core`; the agent drives it, and ``modelfleet serve`` runs it on local files.
"""
