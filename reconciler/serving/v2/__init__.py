"""The Open Inference Protocol's data, pure: no sockets, no registry, no threads.

:mod:`~.codec` turns a v2 request (JSON, optionally followed by the binary tensor data extension's raw bytes)
into numpy arrays, checks them against a model's tensors (:class:`~.codec.TensorMeta`) and encodes answers;
:mod:`~.jsonio` parses and writes the JSON tensors in bounded slices; :mod:`~.plans` remembers, per model version,
what a repeated kind of request says about its tensors so the next one skips that work; :mod:`~.handler` is what
a front and the application agree a request's answer is (:class:`~.handler.Response`, deferred work, or a Future).

Everything above depends on this package (the runtimes name their tensors with ``TensorMeta``); it depends on
nothing else in :mod:`reconciler.serving`.
"""
