"""``modelfleet optimize``: one fp32 ONNX model in, hardware-specific variants out (see docs/optimize.md).

Progress goes to stderr, the report (``--format table|markdown|json``) to stdout. Exit 0 when at least one
variant was kept, 1 on any error (one ``error: …`` line).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import click

from reconciler.cli.console import Progress
from reconciler.cli.options import REPO_ENV, deprecated_alias, emit_json_text, format_option
from reconciler.core.errors import UserError


def _split_variants(values: tuple[str, ...]) -> list[str] | None:
    from reconciler.optimize.plan import KIND_NAMES

    if not values:
        return None
    names = [v.strip() for item in values for v in item.split(",") if v.strip()]
    unknown = [n for n in names if n not in KIND_NAMES]
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)} (one of {', '.join(KIND_NAMES)})", exit_code=2)
    return names


def _classes(fleet_dir: Path | None, log):  # type: ignore[no-untyped-def]
    from reconciler.fleet.hwclasses import hardware_classes
    from reconciler.fleet.manifests import load_dir
    from reconciler.optimize.plan import DEFAULT_CLASSES

    if fleet_dir is None:
        log("no fleet inventory given (--repo): planning for the example hardware classes")
        return list(DEFAULT_CLASSES), {}
    if not fleet_dir.is_dir():
        raise UserError(f"--repo {fleet_dir}: no such directory")
    result = load_dir(fleet_dir)
    if result.errors:  # only the inventory matters here; the rest is `validate`'s business
        first = result.errors[0]
        log(f"{fleet_dir} has {len(result.errors)} error(s), e.g. {first.location()}: {first.message}")
    classes = hardware_classes((d.name, d.spec) for d in result.fleet.devices.values())
    if not classes:
        log(f"{fleet_dir}: no device declares facts: planning for the example hardware classes")
        return list(DEFAULT_CLASSES), result.fleet.fleet_spec
    return classes, result.fleet.fleet_spec


def _task(task: str, has_labels: bool, manifest_task: str | None, named_outputs: bool = False) -> str:
    if task != "auto":
        return task
    if has_labels or named_outputs or (manifest_task and "classif" in manifest_task):
        return "classifier"
    return "regression"


def _quant_options(path: Path | None, **flags: Any):  # type: ignore[no-untyped-def]
    """The options file, then every flag that was given over it."""
    import yaml

    from reconciler.optimize.quantopts import QuantOptions, from_document

    base = QuantOptions()
    if path is not None:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--quantize-options {path}: no such file", exit_code=2) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--quantize-options {path}: cannot read: {exc}", exit_code=2) from None
        except yaml.YAMLError as exc:
            raise UserError(f"--quantize-options {path}: not YAML or JSON: {' '.join(str(exc).split())}",
                            exit_code=2) from None
        try:
            base = from_document(doc, str(path))
        except UserError as exc:
            raise UserError(str(exc), exit_code=2) from None
    return base.merged(**flags)


def _manifest_info(manifest: Path | None, version: str | None) -> tuple[str | None, str | None]:
    """(metadata.name, spec.task) of an existing manifest, after checking the new version can go in."""
    if manifest is None or not manifest.exists():
        return None, None
    from reconciler.optimize.manifest import add_version

    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{manifest}: cannot read: {exc}") from None
    add_version(text, {"version": version or "", "variants": []}, str(manifest))  # fails early: bad file, dup
    import yaml

    data = yaml.safe_load(text)
    return str(data["metadata"]["name"]), str((data.get("spec") or {}).get("task") or "")


def _roles_note(roles, outputs) -> str:  # type: ignore[no-untyped-def]
    from reconciler.optimize.outputs import describe

    metas = {m.name: m for m in outputs}
    if roles.answer is None:
        return ("classifier outputs: none is a label (integer or string, [N] or [N, 1]) or scores (float [N, C]) "
                "output, so top1 and accuracy cannot be measured (--task regression judges the output error)")
    parts = [f"the answer is the label output {describe(metas[roles.label])}" if roles.label else
             f"the answer is the argmax of {describe(metas[roles.scores])}"]
    if roles.label and roles.scores:
        parts.append(f"scores {describe(metas[roles.scores])}")
    return "classifier outputs: " + "; ".join(parts)


def _steps(classes, requested: list[str] | None) -> int:  # type: ignore[no-untyped-def]
    """Log lines the pipeline writes: the reference, a build and a measure per planned variant, the second timing."""
    from reconciler.optimize.plan import plan_kinds

    try:
        planned = plan_kinds(classes, requested)
    except Exception:  # the pipeline reports a bad plan itself; the bar then has no end
        return 0
    return 2 + 2 * sum(1 for p in planned if p.build)


def _report(outcome, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from reconciler.optimize import report

    if fmt == "yaml":
        emit_json_text(report.RENDERERS["json"](outcome), fmt)
    else:
        click.echo(report.RENDERERS[fmt](outcome), nl=False)


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help=".npz sample: one array per model input (by name), optional `labels`.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Empty or new directory for the kept variants and their probes.")
@click.option("--variants", multiple=True, help="Kinds to build (comma list; default: what the fleet's hardware needs).")
@click.option("--max-drop", multiple=True, metavar="METRIC=VALUE",
              help="Accuracy budget, e.g. top1=1%, accuracy=0.5%, mean_rel=2%, max_abs=0.05 (repeatable).")
@click.option("--task", type=click.Choice(["auto", "classifier", "regression"]), default="auto", show_default=True,
              help="How accuracy is judged: top-1 (classifier) or output error (regression). auto: classifier when "
                   "the sample has labels or the manifest's task names a classification.")
@click.option("--label-output", metavar="NAME", default=None,
              help="Classifiers: the output that is the predicted class (integer or string, [N] or [N, 1]). "
                   "Default: detected from the outputs' types and shapes.")
@click.option("--score-output", metavar="NAME", default=None,
              help="Classifiers: the output of class scores or probabilities ([N, C]; the answer is its argmax when "
                   "there is no label output). Naming either output turns detection off.")
@click.option("--quantize-options", "quant_file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="YAML/JSON file of quantizer options (onnxruntime: and nncf: sections, see docs/optimize.md); "
                   "the flags below override it.")
@click.option("--preprocess", type=click.Choice(["auto", "full", "no-symbolic", "off"]), default=None,
              help="ONNX Runtime int8: quant_pre_process with symbolic shape inference (full), without it, or not at "
                   "all; auto tries them in that order and keeps the first that quantizes into a model that runs. "
                   "[default: auto]")
@click.option("--per-channel/--per-tensor", "per_channel", default=None,
              help="ort-int8-static: one weight scale per output channel, or one per tensor. [default: per-channel]")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile", "distribution"]),
              default=None, help="ort-int8-static: how activation ranges are calibrated. [default: minmax]")
@click.option("--op-types", multiple=True, metavar="LIST",
              help="ONNX Runtime int8: quantize only these operator types (comma list, e.g. Conv,MatMul).")
@click.option("--exclude-nodes", multiple=True, metavar="LIST",
              help="ONNX Runtime int8: leave these nodes (by name, comma list) in fp32.")
@click.option("--nncf-preset", type=click.Choice(["performance", "mixed"]), default=None,
              help="ov-int8: NNCF's quantization preset (symmetric, or asymmetric activations). [default: NNCF's]")
@click.option("--subset-size", type=click.IntRange(1), default=None,
              help="ov-int8: calibration samples NNCF uses. [default: the whole calibration part]")
@click.option("--ignored-scope", multiple=True, metavar="KIND:VALUE",
              help="ov-int8: keep matching operations in fp32: name:NODE, pattern:REGEX or type:OP (repeatable).")
@click.option("--accuracy-control", is_flag=True, default=None,
              help="ov-int8: nncf.quantize_with_accuracy_control — reverts layers to fp32 until the accuracy on the "
                   "labelled calibration samples drops at most the --max-drop accuracy budget (default 1%). Needs "
                   "labels.")
@format_option("table", "markdown")
@click.option("--batch", type=click.IntRange(1, 4096), default=8, show_default=True, help="Batch size for throughput.")
@click.option("--runs", type=click.IntRange(5, 100_000), default=50, show_default=True, help="Timed batch-1 runs.")
@click.option("--threads", type=click.IntRange(0, 1024), default=1, show_default=True,
              help="Intra-op threads while measuring (0 = the runtime's default).")
@click.option("--calibration", type=click.IntRange(1), default=None,
              help="Samples used to calibrate (default: half the sample, at most 300); the rest evaluate.")
@click.option("--repo", "fleet_dir", type=click.Path(path_type=Path, file_okay=False), envvar=REPO_ENV,
              metavar="PATH",
              help="Fleet repository whose Device inventory gives the hardware classes [default: $MODELFLEET_REPO, "
                   "else the one the --manifest is in, else example classes].")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False), help="Model manifest to add the version to.")
@click.option("--version", "version", default=None, help="The new model version (with --manifest/--publish).")
@click.option("--prefix", default=None, help="TUF target directory (default: <model>/<version>).")
@click.option("--publish", "tuf_repo", type=click.Path(path_type=Path, file_okay=False), help="TUF repository to sign into.")
@click.option("--keys", multiple=True, type=click.Path(path_type=Path, file_okay=False), help="Signing key directory (repeatable).")
@deprecated_alias("--fleet", "fleet_dir", "--repo", metavar="PATH", type=click.Path(path_type=Path, file_okay=False))
def optimize(model: Path, data: Path, out_dir: Path, variants: tuple[str, ...], max_drop: tuple[str, ...],
             task: str, label_output: str | None, score_output: str | None, quant_file: Path | None,
             preprocess: str | None, per_channel: bool | None, calibration_method: str | None,
             op_types: tuple[str, ...], exclude_nodes: tuple[str, ...], nncf_preset: str | None,
             subset_size: int | None, ignored_scope: tuple[str, ...], accuracy_control: bool | None,
             fmt: str, batch: int, runs: int, threads: int, calibration: int | None,
             fleet_dir: Path | None, manifest: Path | None, version: str | None, prefix: str | None,
             tuf_repo: Path | None, keys: tuple[Path, ...]) -> None:
    """Quantize, convert and measure MODEL (fp32 ONNX) into variants for the fleet's hardware."""
    from reconciler.fleet.desired import runtime_preferences
    from reconciler.optimize import convert, outputs as outputs_mod, pipeline
    from reconciler.optimize.budget import BudgetError, parse_budget
    from reconciler.optimize.manifest import fleet_root_of, write_version
    from reconciler.optimize.measure import load
    from reconciler.optimize.plan import class_picks
    from reconciler.optimize.quantopts import parse_scope_items, split_list
    from reconciler.optimize.sample import load_sample

    progress = Progress("optimize", None)

    def log(msg: str) -> None:
        progress.close()
        click.echo(f"optimize: {msg}", err=True)
        progress.advance(1, f"optimize: {msg}")

    if (manifest or tuf_repo) and not version:
        raise UserError("--version is required with --manifest and --publish", exit_code=2)
    if tuf_repo and not keys:
        raise UserError("--publish needs --keys DIR (the targets signing keys)", exit_code=2)
    if not model.is_file():
        raise UserError(f"{model}: no such file")
    try:
        budget = parse_budget(max_drop)
    except BudgetError as exc:
        raise UserError(f"--max-drop {exc}", exit_code=2) from None
    requested = _split_variants(variants)
    quant = _quant_options(quant_file, preprocess=preprocess, per_channel=per_channel,
                           calibration_method=calibration_method, op_types=split_list(op_types),
                           exclude_nodes=split_list(exclude_nodes), preset=nncf_preset, subset_size=subset_size,
                           accuracy_control=accuracy_control, **parse_scope_items(ignored_scope))
    manifest_name, manifest_task = _manifest_info(manifest, version)
    if fleet_dir is None and manifest is not None:
        fleet_dir = fleet_root_of(manifest)
    classes, fleet_spec = _classes(fleet_dir, log)
    progress.update(0, total=_steps(classes, requested))

    with tempfile.TemporaryDirectory(prefix="modelfleet-optimize-") as tmp:
        served = convert.servable(model, Path(tmp))
        ref = load("onnxruntime", [served.path], None, "fp32")
        inputs, outputs = list(ref.inputs), list(ref.outputs)
        ref.close()
        sample = load_sample(data, inputs, calibration=calibration)
        named = label_output is not None or score_output is not None
        the_task = _task(task, sample.labels is not None, manifest_task, named)
        roles = None
        if the_task == "classifier":
            roles = outputs_mod.detect(outputs, label=label_output, scores=score_output)
        elif named:
            raise UserError("--label-output/--score-output: only for --task classifier", exit_code=2)
        opts = pipeline.Options(batch=batch, runs=runs, threads=threads or None, task=the_task, budget=budget,
                                requested=requested, quant=quant, roles=roles)
        try:
            outcome = pipeline.run(served, sample, out_dir, classes, opts, log)
        finally:
            progress.close()
    if roles is not None:
        outcome.notes.insert(0, _roles_note(roles, outputs))
    name = manifest_name or (manifest.stem if manifest else model.stem)
    outcome.model = name
    target_dir = pipeline.target_prefix(prefix or f"{name}/{version or 'unversioned'}")
    if outcome.kept:
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        outcome.version = pipeline.version_doc(outcome, version or "0.0.0", target_dir, model, sha)
        prefs = runtime_preferences({}, fleet_spec or {})
        outcome.picks = class_picks(outcome.version, classes, prefs)
    if not outcome.kept:
        _report(outcome, fmt)
        raise UserError("no variant is within the accuracy budget; nothing was published or written to a manifest")
    if tuf_repo:
        paths = pipeline.publish(outcome, tuf_repo, list(keys), target_dir, version)
        log(f"signed {len(paths)} targets into {tuf_repo} under {target_dir}/")
    if manifest:
        write_version(manifest, outcome.version or {}, model_name=name,
                      task="image-classification" if the_task == "classifier" else "regression",
                      inputs=pipeline.interface(inputs), outputs=pipeline.interface(outputs))
        log(f"added version {version} with {len(outcome.version['variants'])} variants to {manifest}")
    progress.close()
    _report(outcome, fmt)
