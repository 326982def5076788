"""Serving from every core: N worker processes sharing the ports, one control plane.

A :class:`~.pool.WorkerPool` has the registry's methods (``apply``, ``rollback``, ``remove``, ``endpoints``,
``models``) and the server's (``start``, ``stop``, ``url``), so the agent and ``modelfleet serve`` drive it where
they would drive a registry and a server. Each worker (:mod:`~.workerproc`) is a process with its own registry
and fronts; the pool switches all of them at once through one generation word in shared memory
(:mod:`~.control`) after every worker prepared the new version, and sums their metrics (:mod:`~.poolmetrics`).

It is the outermost part of :mod:`reconciler.serving`: it starts the fronts, and nothing in serving imports it.
"""
