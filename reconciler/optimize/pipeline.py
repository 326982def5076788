"""``optimize``: one fp32 ONNX model in, measured, budget-checked, signed variants and a manifest version out.

Steps, each a function below: ``plan`` (which kinds, from the hardware classes) → ``build`` every planned kind
into a work directory (a failing library call fails that variant only, with the step, the exception's type and
its message in the report; ONNX Runtime's quantizers fall back to other pre-processing routes first) →
``measure`` the fp32 reference and each variant on this machine → ``decide`` (accuracy budget, then variants no
device would pick) → ``write`` the kept files and a golden probe per variant into ``--out`` → ``publish`` them
into the TUF repository → ``manifest`` (a new version, written last, so it never names a file that was not
signed). A model with ZipMap outputs is served as the copy :func:`~.convert.servable` makes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text
from reconciler.optimize import budget as budget_mod, convert, measure
from reconciler.optimize.convert import BuildContext, Servable
from reconciler.optimize.failure import Failure, StepError, describe, one_line
from reconciler.optimize.manifest import schema_accepts
from reconciler.optimize.outputs import Roles
from reconciler.optimize.plan import (
    HardwareClass,
    PlannedKind,
    kind,
    manifest_variants,
    plan_kinds,
    superseded,
)
from reconciler.optimize.quantopts import QuantOptions
from reconciler.optimize.sample import Sample
from reconciler.serving.health import HealthPolicy, run_health_check
from reconciler.serving.runtimes import Backend
from reconciler.serving.v2.codec import TensorMeta, datatype_of, tensor_to_json_data

PROBE_SAMPLES = 2


@dataclass(frozen=True)
class Options:
    batch: int = 8
    runs: int = 50
    threads: int | None = 1
    task: str = "regression"
    budget: Mapping[str, float] = field(default_factory=dict)
    requested: Sequence[str] | None = None
    measure_memory: bool = True
    quant: QuantOptions = field(default_factory=QuantOptions)
    roles: Roles | None = None  # a classifier's label/scores outputs (None: detected from the outputs)


@dataclass
class VariantResult:
    kind: str
    runtime: str
    precision: str
    status: str  # reference | kept | dropped | skipped | failed
    reason: str = ""
    files: list[Path] = field(default_factory=list)
    size: int = 0
    agreement: budget_mod.Agreement | None = None
    speed: measure.Speed | None = None
    memory: measure.Memory | None = None
    probe: Path | None = None
    route: str = ""  # how the files were made (which quantizer, which pre-processing)
    attempts: list[Failure] = field(default_factory=list)  # routes that failed before the one that ran
    error: Failure | None = None  # why a failed variant failed (the last attempt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "runtime": self.runtime, "precision": self.precision, "status": self.status,
            "reason": self.reason, "route": self.route, "attempts": [a.to_dict() for a in self.attempts],
            "error": self.error.to_dict() if self.error else None,
            "files": [f.name for f in self.files], "sizeBytes": self.size,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "speed": measure.to_dict(self.speed) if self.speed else None,
            "memory": measure.to_dict(self.memory) if self.memory else None,
            "probe": self.probe.name if self.probe else None,
        }


@dataclass
class Outcome:
    model: str
    task: str
    budget: dict[str, float]
    samples: int
    calibration: int
    reference: VariantResult
    variants: list[VariantResult]
    classes: list[HardwareClass]
    picks: dict[str, str] = field(default_factory=dict)
    version: dict[str, Any] | None = None
    published: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what optimize read or changed about the model itself
    quant: dict[str, Any] = field(default_factory=dict)  # quantizer options that differ from the defaults

    @property
    def kept(self) -> list[VariantResult]:
        return [v for v in self.variants if v.status == "kept"]


Log = Callable[[str], None]


def run(model: Path | Servable, sample: Sample, out_dir: Path, classes: Sequence[HardwareClass], opts: Options,
        log: Log) -> Outcome:
    """Plan, build, measure, decide and write; ``publish``/``manifest`` are separate calls on the outcome."""
    served = model if isinstance(model, Servable) else Servable(model, model)
    planned = plan_kinds(classes, opts.requested)
    to_build = [p.kind.name for p in planned if p.build]
    convert.check_extra(to_build)
    eff_budget = budget_mod.effective_budget(opts.budget, opts.task, sample.labels is not None)
    notes = [*served.notes(), *_checked_options(opts, sample, to_build)]
    prepare_out_dir(out_dir)
    ctx = BuildContext(sample, opts.quant, opts.roles, eff_budget.get("accuracy", 0.01))
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=out_dir) as tmp:
        work = Path(tmp)
        log(f"measuring the fp32 reference {served.source.name}")
        ref_backend = measure.load("onnxruntime", [served.path], opts.threads, "fp32")
        evaluation = sample.evaluation()
        reference = VariantResult("fp32-reference", "onnxruntime", "fp32", "reference", "the input model",
                                  [served.path], measure.size_bytes([served.path]))
        try:
            try:
                ref_out = measure.run_all(ref_backend, evaluation)
                reference.agreement = budget_mod.agreement(ref_out, ref_out, task=opts.task, roles=opts.roles,
                                                           labels=sample.eval_labels())
                _measure_speed(reference, ref_backend, evaluation, opts)
            except UserError:
                raise
            except Exception as exc:  # the sample fits the declared inputs but the model cannot run it
                raise UserError(f"{served.source}: the fp32 model fails on the sample: {_one_line(exc)}") from None
            convert.check_servable(served, evaluation, ref_out)
            results = [_build_and_measure(p, served.path, work, ctx, ref_out, opts, log) for p in planned]
            # A second timing pass over the reference and every variant, the better figure of each kept: the
            # warm-up or drift of a busy machine then hits no model alone, and every ratio compares like with like.
            log("timing every model a second time")
            again = measure.speed(ref_backend, evaluation, batch=opts.batch, runs=opts.runs)
            reference.speed = measure.best(reference.speed, again) if reference.speed else again
        finally:
            ref_backend.close()
        for r in results:
            _time_again(r, evaluation, opts)
        decide(results, eff_budget)
        for r in results:
            if r.status == "kept":
                write_kept(r, out_dir, evaluation, opts)
    return Outcome(served.source.stem, opts.task, eff_budget, sample.size, sample.calibration, reference, results,
                   list(classes), notes=notes, quant=opts.quant.summary())


def _checked_options(opts: Options, sample: Sample, to_build: Sequence[str]) -> list[str]:
    """Refuse option combinations that cannot work before any work starts; notes for those that do nothing."""
    notes = []
    if opts.quant.accuracy_control:
        roles = opts.roles
        if opts.task != "classifier" or sample.labels is None or roles is None or roles.answer is None:
            raise UserError("--accuracy-control needs a classifier (a label or scores output) and labels in the "
                            "sample: it keeps the int8 model's accuracy against them", exit_code=2)
        if "ov-int8" not in to_build:
            notes.append("--accuracy-control applies to ov-int8, which is not built here")
    return notes


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty directory (nothing is overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _measure_speed(r: VariantResult, backend: Backend, evaluation: dict[str, np.ndarray], opts: Options) -> None:
    r.speed = measure.speed(backend, evaluation, batch=opts.batch, runs=opts.runs)
    if opts.measure_memory:
        r.memory = measure.memory(r.runtime, r.files, opts.threads, r.precision, measure.batch_of(evaluation, 1))


def _build_and_measure(p: PlannedKind, model: Path, work: Path, ctx: BuildContext, ref_out: dict[str, np.ndarray],
                       opts: Options, log: Log) -> VariantResult:
    k = p.kind
    r = VariantResult(k.name, k.runtime, k.precision, "skipped", p.reason)
    if not p.build:
        return r
    log(f"building {k.name} ({k.library})")
    try:
        built = convert.build(k.name, model, work, ctx)
    except StepError as exc:
        return _failed(r, exc.failures)
    except Exception as exc:  # a library failing on one variant must not cost the others
        return _failed(r, [describe(f"building with {k.library}", exc)])
    r.files, r.route, r.attempts = built.files, built.route, built.attempts
    r.size = measure.size_bytes(r.files)
    log(f"measuring {k.name}")
    step = f"loading it in {k.runtime}"
    try:
        backend = measure.load(k.runtime, r.files, opts.threads, k.precision)
        try:
            step = f"running the evaluation sample in {k.runtime}"
            got = measure.run_all(backend, ctx.sample.evaluation())
            step = "comparing its outputs with the fp32 reference's"
            r.agreement = budget_mod.agreement(ref_out, got, task=opts.task, roles=opts.roles,
                                               labels=ctx.sample.eval_labels())
            step = "timing it and measuring its memory at load"
            _measure_speed(r, backend, ctx.sample.evaluation(), opts)
        finally:
            backend.close()
    except Exception as exc:
        return _failed(r, [*r.attempts, describe(step, exc)])
    r.status, r.reason = "kept", p.reason
    return r


def _failed(r: VariantResult, failures: list[Failure]) -> VariantResult:
    r.status, r.error, r.attempts = "failed", failures[-1], failures[:-1]
    if len(failures) == 1:
        r.reason = failures[0].text()
    else:
        r.reason = f"{len(failures)} attempts failed: " + " | ".join(
            f"{i}. {f.text()}" for i, f in enumerate(failures, 1))
    r.speed = r.memory = r.agreement = None
    return r


def _time_again(r: VariantResult, evaluation: dict[str, np.ndarray], opts: Options) -> None:
    if r.speed is None:
        return
    try:
        backend = measure.load(r.runtime, r.files, opts.threads, r.precision)
        try:
            r.speed = measure.best(r.speed, measure.speed(backend, evaluation, batch=opts.batch, runs=opts.runs))
        finally:
            backend.close()
    except Exception:  # it loaded and ran a minute ago: the first pass's figures stand
        return


def _one_line(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def decide(results: Sequence[VariantResult], budget: Mapping[str, float]) -> None:
    """Drop measured variants over the budget, then those no device would pick. Pure over the results."""
    for r in results:
        if r.status == "kept" and r.agreement is not None:
            why = budget_mod.over_budget(r.agreement, budget)
            if why:
                r.status, r.reason = "dropped", f"over the accuracy budget: {why}"
    shadowed = superseded([r.kind for r in results if r.status == "kept"])
    for r in results:
        if r.kind in shadowed:
            r.status = "dropped"
            r.reason = f"superseded: every device that could run it picks {shadowed[r.kind]} first"


def probe_policy(precision: str) -> HealthPolicy:
    """The policy a device applies to this variant when its deployment sets no tolerances of its own."""
    return HealthPolicy.from_spec(None, precision)


def write_kept(r: VariantResult, out_dir: Path, evaluation: dict[str, np.ndarray], opts: Options) -> None:
    """Move the variant's files into ``out_dir`` and write its golden probe, checked like the device does."""
    moved = []
    for f in r.files:
        dst = out_dir / f.name
        shutil.move(str(f), dst)
        moved.append(dst)
    r.files = moved
    backend = measure.load(r.runtime, r.files, opts.threads, r.precision)
    try:
        feeds = measure.batch_of(evaluation, PROBE_SAMPLES)
        outputs = backend.infer(feeds)
        probe = {"inputs": [_tensor(n, a) for n, a in feeds.items()],
                 "outputs": [_tensor(n, np.asarray(a)) for n, a in outputs.items()]}
        check = run_health_check(backend, probe, probe_policy(r.precision), rss_before_mb=0.0)
    finally:
        backend.close()
    if not check.ok:
        raise UserError(f"{r.kind}: its own golden probe fails the health check: {check.message}")
    r.probe = out_dir / f"{r.kind}.probe.json"
    atomic_write_text(r.probe, json.dumps(probe, separators=(",", ":")) + "\n")


def _tensor(name: str, arr: np.ndarray) -> dict[str, Any]:
    datatype = datatype_of(arr)
    return {"name": name, "datatype": datatype, "shape": list(arr.shape),
            "data": tensor_to_json_data(name, arr, datatype)}


def target_prefix(prefix: str) -> str:
    p = prefix.strip("/")
    if not p or ".." in p.split("/"):
        raise UserError(f"--prefix {prefix!r}: a relative TUF target path without '..'")
    return p


def version_doc(outcome: Outcome, version: str, prefix: str, source: Path, source_sha256: str) -> dict[str, Any]:
    """The manifest's new ``versions[]`` entry for the kept variants."""
    kept = [r.kind for r in outcome.kept]
    if not kept:
        raise UserError("no variant was kept, so there is nothing to write into the manifest")
    targets = {r.kind: [f"{prefix}/{f.name}" for f in r.files] for r in outcome.kept}
    probes = {r.kind: f"{prefix}/{r.probe.name}" for r in outcome.kept if r.probe is not None}
    doc: dict[str, Any] = {
        "version": version,
        "description": f"Optimized by `modelfleet optimize` from {source.name} (sha256 {source_sha256[:12]}).",
        "variants": manifest_variants(kept, targets, probes, with_precision=schema_accepts("precision")),
    }
    return doc


def publish(outcome: Outcome, repo_dir: Path, key_dirs: Sequence[Path], prefix: str, version: str | None) -> list[str]:
    """Sign every kept file and its probe into the TUF repository under ``prefix``; returns the target paths."""
    from reconciler.distribution.tufrepo import add_targets

    paths: list[str] = []
    for r in outcome.kept:
        files = [*r.files, *([r.probe] if r.probe else [])]
        rows = add_targets(repo_dir, key_dirs, files, prefix, model=outcome.model, version=version,
                           custom={"variant": r.kind, "precision": kind(r.kind).precision})
        paths.extend(row.path for row in rows)
    outcome.published = paths
    return paths


def interface(meta: Sequence[TensorMeta]) -> list[dict[str, Any]]:
    """Model manifest tensor entries for a backend's inputs/outputs."""
    return [{"name": m.name, "datatype": m.datatype, "shape": list(m.shape)} for m in meta]
