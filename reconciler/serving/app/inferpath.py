"""One ``/infer`` request from body to answer: decode, validate, run (alone or in a batch), encode, count.

:class:`InferPath` is what :class:`~reconciler.serving.app.v2app.V2App` calls once it has a lease on the model
version: :meth:`InferPath.run` answers at once (inline on the event loop for a fast model, or in the thread
pool); :meth:`InferPath.submit` queues the decoded request for the version's adaptive batch
(:mod:`~reconciler.serving.batching`) and returns a ``Future`` the connection answers from when the batch is
done. Either way the lease is released, the in-flight gauge goes down and the request and latency metrics are
counted exactly once (:meth:`InferPath._done`), through metric children bound once per version (``bind``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from reconciler.serving.batching import BatchItem, QueueFull, batch_key
from reconciler.serving.registry import LoadedModel
from reconciler.serving.v2.codec import (
    CodecError,
    InferRequest,
    JsonLimits,
    RequestedOutput,
    decode_request,
    encode_response,
    select_outputs,
    validate_inputs,
)
from reconciler.serving.v2.handler import Response, error_response
from reconciler.serving.v2.jsonio import JsonError, loads_request
from reconciler.serving.v2.plans import HCL, JSON_BODY_MAX, OCTET_CT, learn, planned

_HCL = HCL
_RETRY = ((b"retry-after", b"1"),)

#: How a front turns a version's outputs into its answer: (model, request id, outputs, requested) → Response.
Encoder = Callable[[LoadedModel, str | None, dict[str, Any], list[RequestedOutput]], Response]


def _error(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    return error_response(status, message, headers)


def _header_len(headers: dict[str, str]) -> int | None:
    hl = headers.get("inference-header-content-length")
    if hl is None:
        return None
    try:
        return int(hl)
    except ValueError:
        raise CodecError(f"Inference-Header-Content-Length is not an integer: {hl!r}") from None


class InferPath:
    """The inference request path of one server (``json_limits``; ``bind(model)`` gives its metric children)."""

    def __init__(self, json_limits: JsonLimits, bind: Callable[[LoadedModel], Any]) -> None:
        self.json_limits = json_limits
        self.bind = bind

    def _decode(
        self, headers: dict[str, str], body: bytes, model: LoadedModel, doc: Any = None
    ) -> tuple[InferRequest, dict[str, Any], list[RequestedOutput]]:
        req = decode_request(body, _header_len(headers), self.json_limits, doc)
        try:
            feeds = validate_inputs(req, model.inputs)
            requested = select_outputs(req, model.output_names)
        except CodecError as exc:
            exc.request = req  # type: ignore[attr-defined]  # decoded but invalid: data capture keeps the inputs
            raise
        return req, feeds, requested

    @staticmethod
    def _rejected(model: LoadedModel, exc: CodecError) -> Response:
        if model.observer is not None:
            model.observer.observe_rejection()
            rejected_inputs = getattr(model.observer, "observe_rejected_inputs", None)
            req = getattr(exc, "request", None)
            if rejected_inputs is not None and req is not None:
                rejected_inputs(req.inputs)
        return _error(400, str(exc))

    @staticmethod
    def _encode(model: LoadedModel, req_id: str | None, outputs: dict[str, Any],
                requested: list[RequestedOutput]) -> Response:
        out, hlen = encode_response(model.name, model.version, req_id, outputs, requested)
        if hlen is None:
            return Response(200, out)
        return Response(200, out, OCTET_CT, ((_HCL, b"%d" % hlen),))

    @staticmethod
    def _done(bound: Any, lease: Any, resp: Response, t0: float, inline: bool = False) -> Response:
        lease.release()
        if inline:
            bound.counted_inline(time.perf_counter() - t0)
        else:
            bound.inflight.dec()
            bound.counted(time.perf_counter() - t0)
        if resp.status != 200:
            bound.failed(resp.status)
        return resp

    def run(
        self, model: LoadedModel, lease: Any, headers: dict[str, str], body: bytes, t0: float, inline: bool = False
    ) -> Response:
        """Answer now. ``inline``: on the event loop, which also serves ``/metrics``, so the request could never
        be seen in flight: the in-flight gauge is left alone (two locked updates saved per request).

        A request of a kind this version has answered before runs from its plan (:mod:`.plans`)."""
        bound = model.serving_metrics or self.bind(model)
        if not inline:
            bound.inflight.inc()
        try:
            header_len = _header_len(headers)
            doc = None
            if header_len is None and len(body) <= JSON_BODY_MAX:
                try:
                    doc = loads_request(body, self.json_limits)
                except JsonError as exc:
                    raise CodecError(str(exc)) from None
            hit = planned(model.plans, header_len, body, doc) if model.plans else None
            if hit is not None:
                plan, feeds = hit
                req_id, names, requested = None, plan.output_names, plan.requested
            else:
                req, feeds, requested = self._decode(headers, body, model, doc)
                req_id, names = req.id, [r.name for r in requested]
                plan = learn(model.plans, req, header_len, body, doc, model.inputs, requested)
            try:
                outputs = model.infer(feeds, names, req_id)
            except CodecError:
                raise
            except Exception as exc:
                resp = _error(500, f"inference failed: {exc}")
            else:
                resp = plan.answer(model.name, model.version, outputs) if plan is not None else None
                if resp is None:
                    resp = self._encode(model, req_id, outputs, requested)
        except CodecError as exc:
            resp = self._rejected(model, exc)
        except BaseException:
            self._done(bound, lease, _error(500, "internal error"), t0, inline)
            raise
        return self._done(bound, lease, resp, t0, inline)

    def submit(
        self, model: LoadedModel, lease: Any, headers: dict[str, str], body: bytes, t0: float
    ) -> Response | Future[Response]:
        """Decode and validate, then queue for the model's next batch; the answer arrives in the Future."""
        bound = self.bind(model)
        bound.inflight.inc()
        try:
            req, feeds, requested = self._decode(headers, body, model)
        except CodecError as exc:
            return self._done(bound, lease, self._rejected(model, exc), t0)
        return self._enqueue(model, lease, bound, req, feeds, requested, t0, self._encode)

    def _enqueue(self, model: LoadedModel, lease: Any, bound: Any, req: InferRequest, feeds: dict[str, Any],
                 requested: list[RequestedOutput], t0: float, encode: Encoder) -> Response | Future[Response]:
        batcher = model.batcher
        if batcher is None:  # batching was switched off since the lease was taken
            return self._finish_alone(model, lease, bound, req, feeds, requested, t0, encode)
        answer: Future[Response] = Future()
        observer = model.observer

        def done(outputs: dict[str, Any] | None, error: str | None, _queued: float, run_s: float) -> None:
            try:
                if outputs is None:
                    if observer is not None:
                        observer.observe_error(run_s)
                    resp = _error(500, error or "inference failed")
                else:
                    if observer is not None:
                        observer.observe(feeds, outputs, run_s, req.id)
                    resp = encode(model, req.id, outputs, requested)
            except CodecError as exc:
                resp = _error(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug costs this request, never the batch
                resp = _error(500, f"internal error: {exc}")
            answer.set_result(self._done(bound, lease, resp, t0))

        rows = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
        names = tuple(r.name for r in requested)
        if len(rows) == 1 and -1 not in rows:
            item = BatchItem(feeds, names, batch_key(feeds, names, req.parameters), rows.pop(), done)
        else:  # inputs disagree on the batch dimension: run alone, the runtime says what is wrong
            item = BatchItem(feeds, names, (object(),), batcher.policy.max_batch_size, done)
        try:
            batcher.submit(item)
        except QueueFull as exc:
            return self._done(bound, lease, _error(503, str(exc), _RETRY), t0)
        except RuntimeError as exc:
            return self._done(bound, lease, _error(503, str(exc), _RETRY), t0)
        return answer

    def _finish_alone(self, model: LoadedModel, lease: Any, bound: Any, req: InferRequest,
                      feeds: dict[str, Any], requested: list[RequestedOutput], t0: float,
                      encode: Encoder) -> Response:
        try:
            resp = encode(model, req.id, model.infer(feeds, [r.name for r in requested], req.id), requested)
        except CodecError as exc:
            resp = _error(400, str(exc))
        except Exception as exc:
            resp = _error(500, f"inference failed: {exc}")
        return self._done(bound, lease, resp, t0)

    # -- requests another front has parsed (reconciler.serving.grpc) ---------------------------------------------

    def _checked(self, model: LoadedModel, decode: Callable[[], InferRequest]
                 ) -> tuple[InferRequest, dict[str, Any], list[RequestedOutput]]:
        req = decode()
        try:
            feeds = validate_inputs(req, model.inputs)
            requested = select_outputs(req, model.output_names)
        except CodecError as exc:
            exc.request = req  # type: ignore[attr-defined]  # decoded but invalid: data capture keeps the inputs
            raise
        return req, feeds, requested

    def run_decoded(self, model: LoadedModel, lease: Any, decode: Callable[[], InferRequest], encode: Encoder,
                    t0: float) -> Response:
        """:meth:`run` for a request another front parses: ``decode()`` gives its tensors, ``encode`` the answer.
        The same checks, observers, metrics and errors as a REST request (no plans: they key on REST bodies)."""
        bound = model.serving_metrics or self.bind(model)
        bound.inflight.inc()
        try:
            req, feeds, requested = self._checked(model, decode)
            try:
                outputs = model.infer(feeds, [r.name for r in requested], req.id)
            except CodecError:
                raise
            except Exception as exc:
                resp = _error(500, f"inference failed: {exc}")
            else:
                resp = encode(model, req.id, outputs, requested)
        except CodecError as exc:
            resp = self._rejected(model, exc)
        except BaseException:
            self._done(bound, lease, _error(500, "internal error"), t0)
            raise
        return self._done(bound, lease, resp, t0)

    def submit_decoded(self, model: LoadedModel, lease: Any, decode: Callable[[], InferRequest], encode: Encoder,
                       t0: float) -> Response | Future[Response]:
        """:meth:`submit` for a request another front parses (see :meth:`run_decoded`)."""
        bound = self.bind(model)
        bound.inflight.inc()
        try:
            req, feeds, requested = self._checked(model, decode)
        except CodecError as exc:
            return self._done(bound, lease, self._rejected(model, exc), t0)
        return self._enqueue(model, lease, bound, req, feeds, requested, t0, encode)
