"""Drift and performance monitoring on the device, in constant memory.

Workflow: a publisher runs ``modelfleet baseline MODEL --data SAMPLE.npz`` (:mod:`~.baseline`), which runs the
model on a reference sample and writes, per monitored feature (:mod:`~.features`: tabular columns, per-channel
summaries of images/audio, predicted classes, output scores), fixed quantile bin edges and the reference
proportions (one bin per value for integer features), the false-alarm rate of the thresholds at each window
size measured on a held-out half of the sample, and for a classifier with probability outputs the calibration
of its confidence (the label-free accuracy estimate). The baseline
is signed into TUF next to the model and named by the model version's ``driftBaseline``.

On the device the agent fetches it with the model; the registry hands every request's tensors to the version's
:class:`~.monitor.EndpointMonitor` (count, sample, enqueue — nothing more on the request path) and the
:class:`~.monitor.DriftSupervisor` thread bins them into a fixed-size window. The pure math (:mod:`~.stats`:
edges, PSI, Jensen–Shannon, binned KS, L∞, windows, merging, verdicts, false alarms) and the deployment's
``drift`` settings and status decisions (:mod:`~.settings`) do no I/O. Each pass the agent's status document
gets per-endpoint ``drift`` (worst features, compact bin counts) and ``operational`` sections and the device
conditions ``DriftDetected`` / ``Degraded``; :mod:`~.metrics` exports bounded Prometheus series.

Operators read it back with ``modelfleet fleet drift`` (:mod:`~.report`): scores over time per deployment,
version and site from the status history, fleet-level drift from the merged bin counts, HTML/PNG plots.
"""
