"""``modelfleet baseline MODEL --data SAMPLE.npz --out baseline.json``: the drift baseline of a model version.

Runs the model (``.onnx`` on ONNX Runtime, ``.xml`` + ``.bin`` on OpenVINO) on the reference sample (arrays
keyed by model input name, an optional ``labels`` array is ground truth: not monitored, it calibrates the
label-free accuracy estimate) and writes the per-feature reference bins, summary statistics, the false-alarm
rates per window size measured on a held-out half of the sample, and the confidence calibration of a
classifier with probability outputs (see docs/monitoring.md).
Publish the file with ``modelfleet repo add`` next to the model and name it in the version's
``driftBaseline.target``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

from reconciler.cli.options import emit, format_option
from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text


def _model_files(path: Path, runtime: str | None) -> tuple[list[Path], str]:
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    if path.suffix.lower() == ".xml":
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise UserError(f"{path}: OpenVINO IR needs its weights file {weights.name} beside it")
        return [path, weights], "openvino"
    if path.suffix.lower() == ".onnx":
        return [path], runtime or "onnxruntime"
    raise UserError(f"{path}: unknown model format (expected .onnx or OpenVINO .xml)")


def _selection(inputs: tuple[str, ...], layouts: tuple[str, ...]) -> tuple[list[str] | None, dict[str, str]]:
    names = [n.strip() for arg in inputs for n in arg.split(",") if n.strip()] or None
    forced: dict[str, str] = {}
    for item in layouts:
        name, sep, layout = item.partition("=")
        if not sep or not name or not layout:
            raise UserError(f"--layout {item!r}: expected NAME=LAYOUT")
        forced[name] = layout
    return names, forced


@click.command("baseline")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="Reference sample (.npz): one array per model input, optional 'labels'.")
@click.option("--inputs", multiple=True, metavar="NAME[,NAME…]", help="Monitor only these inputs (default: all).")
@click.option("--layout", "layouts", multiple=True, metavar="NAME=LAYOUT",
              help="Override the guessed layout of a tensor (tabular, channels, signal, classes, labels, scores).")
@click.option("--bins", default=10, show_default=True, type=click.IntRange(2, 64), help="Bins per numeric feature.")
@click.option("--window", default=1000, show_default=True, type=click.IntRange(10, 10_000_000),
              help="The deployment's drift.window: the false-alarm rate is estimated up to this window size.")
@click.option("--min-samples", default=200, show_default=True, type=click.IntRange(1, 10_000_000),
              help="The deployment's drift.minSamples: the smallest window size the estimate looks at.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), help="Runtime for .onnx files.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Baseline file to write.")
@format_option("table", aliases={"text": "table"}, help="table: a summary for people; json/yaml for scripts.")
def baseline_cmd(model: Path, data: Path, inputs: tuple[str, ...], layouts: tuple[str, ...], bins: int, window: int,
                 min_samples: int, runtime: str | None, out: Path, fmt: str) -> None:
    """Write the drift baseline of MODEL computed on a reference sample."""
    from reconciler.drift.baseline import BaselineError, build_baseline, layouts_for, load_sample, run_model
    from reconciler.drift.monitor import MAX_STATUS_FEATURES

    files, rt = _model_files(model, runtime)
    names, forced = _selection(inputs, layouts)
    try:
        arrays, labels = load_sample(data)
        tensors, in_meta, out_meta = run_model(files, rt, arrays, str(data))
        lays = layouts_for(tensors, in_meta, out_meta, names, forced)
        doc = build_baseline(lays, tensors, bins=bins, window=window, min_samples=min(min_samples, window),
                             labels=labels,
                             model={"file": model.name, "sha256": hashlib.sha256(files[0].read_bytes()).hexdigest(),
                                    "runtime": rt})
    except BaselineError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # a layout that does not fit the tensor
        raise UserError(f"{data}: {exc}") from None
    text = json.dumps(doc, indent=1) + "\n"
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    fa = doc["falseAlarm"]
    perf = doc.get("performance")
    status_cap = len(doc["features"]) > MAX_STATUS_FEATURES
    if fmt in ("json", "yaml"):
        emit({"out": str(out), "sha256": digest, "rows": doc["sample"]["rows"],
              "features": [f["name"] for f in doc["features"]], "falseAlarm": fa,
              **({"performance": {k: v for k, v in perf.items() if k not in ("edges", "expected", "reference")}}
                 if perf else {})}, fmt)
    else:
        click.echo(f"wrote {out} ({len(doc['features'])} features from {doc['sample']['rows']} rows, sha256 {digest[:12]})")
        for t in doc["tensors"]:
            click.echo(f"  {t['role']:<6} {t['name']}: {t['layout']}")
        discrete = [f["name"] for f in doc["features"] if f.get("binning") == "values"]
        if discrete:
            click.echo(f"  one bin per value (integer features): {_names(discrete)}")
        if perf:
            how = (f"calibrated on the sample's labels, reference accuracy {perf['referenceAccuracy']:.1%}"
                   if perf["calibrated"] else "not calibrated: the sample has no labels")
            click.echo(f"  label-free accuracy estimate from {perf['output']} ({how}); on the sample: "
                       f"{perf['referenceEstimate']:.1%}")
        click.echo(f"estimated false alarms of unshifted windows: {fa['trials']} windows per size drawn from "
                   f"{fa['heldOutRows']} held-out rows, binned on the other {fa['referenceRows']}:")
        click.echo("  method  samples  warn at   rate  alert at   rate")
        for method, r in fa["methods"].items():
            for e in r["bySize"]:
                click.echo(f"  {method:<6} {e['samples']:>8} {e['warnAt']:>8.3f} {e['warnRate']:>6.1%} "
                           f"{e['alertAt']:>9.3f} {e['alertRate']:>6.1%}")
    _warnings(doc, MAX_STATUS_FEATURES if status_cap else None)


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _warnings(doc: dict, status_cap: int | None) -> None:
    fa = doc["falseAlarm"]
    if not fa["sizes"] or fa["heldOutRows"] < fa["sizes"][-1]:
        covered = [s for s in fa["sizes"] if s <= fa["heldOutRows"]]
        click.echo(f"warning: {fa['heldOutRows']} held-out rows cover windows up to "
                   f"{covered[-1] if covered else 0} samples, not the window of {fa['window']}: a sample of at "
                   f"least {2 * fa['window']} rows checks the whole range", err=True)
    noisy = sorted({m for m, r in fa["methods"].items() if (r["warnRate"] or 0) > 0.01})
    if noisy:
        click.echo(f"warning: {', '.join(noisy)} warned on more than 1 % of unshifted held-out windows: use a "
                   "larger sample, fewer --bins or higher thresholds", err=True)
    if status_cap:
        click.echo(f"warning: {len(doc['features'])} features; a status carries the bin counts of the "
                   f"{status_cap} worst only (drift.binsOmitted says how many were left out), so fleet "
                   "reports merge those: monitor fewer inputs with --inputs", err=True)
