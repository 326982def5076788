"""Tools for tests, demos and benchmarks: generated models and the end-to-end demo.

:mod:`~.modelgen` builds small ONNX models (and OpenVINO IR) with the ``onnx`` helper API — nothing is
downloaded from a model hub; :mod:`~.demo` is ``make demo``: a local Git fleet repository and TUF repository
on 127.0.0.1, an agent converging, serving and swapping with zero failed requests.
"""
