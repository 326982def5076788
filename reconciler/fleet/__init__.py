"""The desired state in Git: the pure core of modelfleet.

Workflow: bytes of a fleet repository (read from a directory or a Git revision in one place,
:mod:`~reconciler.fleet.manifests`) are parsed by the bounded safe YAML loader (:mod:`~.yamlsafe`), checked
against their kind's JSON Schema (:mod:`~.schemas`) and into a :class:`~.repository.FleetRepo`; the semantic
checks (:mod:`~.validation`, with :mod:`~.selectors`) add diagnostics at ``file:line:col``. From a valid
repository and a device's identity, :func:`~.desired.desired_state` computes what that device should run
(selectors, rollout buckets, variant choice), :mod:`~.plan` diffs two revisions per device, and
:mod:`~.docgen` renders the schemas as a reference page.

Everything here is a pure function of its inputs: no network, no runtime, no clock. It imports only
:mod:`reconciler.core`, so the CLI's ``validate``/``plan`` never load ONNX Runtime or OpenVINO.
"""
