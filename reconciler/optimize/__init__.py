"""From one trained fp32 ONNX model to hardware-specific, measured, signed variants (``modelfleet optimize``).

Workflow: :mod:`~.plan` (pure) reads the fleet's hardware classes from the Device inventory and picks the variant
kinds worth building, each with the ``requires`` a device must meet; :mod:`~.sample` reads the ``.npz``
calibration/evaluation sample; :mod:`~.convert` builds each kind with the library that does it (ONNX Runtime
graph optimization and quantization, OpenVINO conversion, NNCF post-training quantization); :mod:`~.measure`
runs every variant through the device's own runtime backends for accuracy agreement, latency, throughput, size
and peak memory at load; :mod:`~.budget` (pure) turns agreement into keep/drop decisions; :mod:`~.pipeline`
orchestrates, writes a golden probe per kept variant, signs into the TUF repository and hands the new version to
:mod:`~.manifest` (a comment-preserving round-trip edit, validated before it is written); :mod:`~.report` (pure)
renders the table a pull request shows. :mod:`~.inspect` reads the precision a model file really has, for
``modelfleet validate``.

It may use ``serving`` (runtimes, health check), ``distribution.tufrepo`` (publishing) and ``fleet`` (manifests,
variant choice); only the CLI imports it.
"""
