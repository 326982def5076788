"""Fleet simulator: N device agents in one process, running the real reconcile loop.

Each simulated device is a real :class:`reconciler.agent.loop.Agent` (source polling, manifests, desired state,
TUF refresh and download, status pushes) with its own identity, labels and state directory; what differs is the
:class:`~reconciler.simulate.components.SimComponents` wiring: devices that serve the same model digest share
one runtime session (one ONNX Runtime session, not N), and faults are injected per device (offline: no Git or
TUF traffic at all; failing: the health check of a chosen version fails). :mod:`~reconciler.simulate.fleet`
schedules the agents on a small thread pool and prints convergence over time as JSON lines.
"""
