"""Operator commands on a fleet repository: ``validate``, ``render``, ``plan`` and ``docs``.

They read a directory or a Git revision, never execute anything from it, and report problems as
``file:line:column`` diagnostics. Exit codes: validate 0 valid / 1 invalid / 2 usage; plan with
``--detailed-exitcode`` 0 no change / 2 changes / 1 error (Terraform's convention).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from reconciler.cli.console import echo, paint
from reconciler.cli.options import emit, emit_json_text, fleet_revisions, format_option, repo_option
from reconciler.core.diagnostics import NOTE
from reconciler.core.errors import UserError
from reconciler.core.termsafe import escape
from reconciler.fleet.desired import DeviceIdentity, desired_state
from reconciler.fleet.manifests import LoadResult, load_dir, load_git
from reconciler.fleet.yamlsafe import YamlError, load_documents

if TYPE_CHECKING:
    from reconciler.cli.modelcheck import Checked
    from reconciler.distribution.signedtargets import SignedTargets


def _signed_targets(tuf_repo: str | None) -> SignedTargets | None:
    if not tuf_repo:
        return None
    from reconciler.distribution.signedtargets import SignedTargets

    try:
        return SignedTargets(Path(tuf_repo))
    except Exception as exc:  # the publisher module reports its own clear errors
        raise UserError(f"cannot read TUF repository {tuf_repo}: {exc}") from None


def _load(path: str, rev: str | None = None, tuf_targets: set[str] | None = None) -> LoadResult:
    p = Path(path)
    if rev is None and not p.exists():
        raise UserError(f"{path}: no such directory", exit_code=2)
    if rev is None and not p.is_dir():
        raise UserError(f"{path}: not a directory (give the fleet repository's root)", exit_code=2)
    return load_git(p, rev, tuf_targets=tuf_targets) if rev else load_dir(p, tuf_targets=tuf_targets)


def _check_published(result: LoadResult, signed: SignedTargets) -> Checked:
    """Each variant's files against the signed hashes, opened in their runtime (:mod:`reconciler.cli.modelcheck`)."""
    from reconciler.cli.modelcheck import check_published
    from reconciler.fleet.validation import precision_checks

    checked = check_published(result.fleet, signed)
    result.diagnostics.extend(checked.diagnostics)
    result.diagnostics.extend(precision_checks(result.fleet, checked.precisions))
    return checked


def _repo_arg(path: str | None, repo: str | None) -> str | None:
    """The positional PATH (kept: ``modelfleet validate fleet/``) or ``--repo``; both at once is a usage error."""
    if path is not None and repo is not None and path != repo:
        raise UserError(f"give the fleet repository once: PATH {path} or --repo {repo}", exit_code=2)
    return path if path is not None else repo


@click.command("validate")
@click.argument("path", required=False, type=click.Path(file_okay=False))
@repo_option(remote=False)
@format_option("table", "github", aliases={"text": "table"},
               help="table: file:line:col diagnostics; github: workflow annotations; json/yaml for scripts.")
@click.option("--rev", default=None, help="Validate this Git revision (read from the commit tree) instead of the files.")
@click.option("--tuf-repo", default=None, type=click.Path(),
              help="Local TUF repository (metadata/ + targets/): also check that every file a variant names is "
                   "signed and matches its signed hashes, and open each model in its runtime to compare its "
                   "inputs/outputs and probe with the Model, as a device does.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate_cmd(path: str | None, repo: str | None, fmt: str, rev: str | None, tuf_repo: str | None,
                 strict: bool) -> None:
    """Validate a fleet repository: YAML, JSON Schemas, references, rollouts, selectors, conflicts.

    PATH is the same as --repo PATH. With --repo URL, the branch the URL's HEAD names is validated (or --rev).
    """
    signed = _signed_targets(tuf_repo)
    with fleet_revisions(_repo_arg(path, repo)) as (where, cloned):
        if cloned:
            rev = rev or "HEAD"
        result = _load(where, rev, signed.paths() if signed is not None else None)
    checked = _check_published(result, signed) if signed is not None else None
    path = where if not cloned else ""
    base = Path(path)
    diags = result.diagnostics
    failed = bool(result.errors) or (strict and bool(result.warnings))

    def shown(file: str) -> str:
        return str(base / file) if rev is None else file

    tuf = ({"repository": tuf_repo, "files": checked.files, "opened": checked.opened}
           if checked is not None else None)
    if fmt in ("json", "yaml"):
        doc = {"valid": not failed, "files": result.files,
               "diagnostics": [dict(d.to_dict(), file=shown(d.file)) for d in diags]}
        emit(doc if tuf is None else dict(doc, tuf=tuf), fmt)
    elif fmt == "github":
        for d in diags:
            click.echo(type(d)(**dict(d.__dict__, file=shown(d.file))).format_github())
    else:
        for d in diags:
            line = type(d)(**dict(d.__dict__, file=shown(d.file))).format_text()
            echo(_paint_diagnostic(line, d.is_error), err=d.is_error)
        fl = result.fleet
        notes = sum(d.severity == NOTE for d in diags)
        summary = (f"{result.files} files: {len(fl.models)} models, {len(fl.deployments)} deployments, "
                   f"{len(fl.devices)} devices; {len(result.errors)} errors, {len(result.warnings)} warnings"
                   + (f", {notes} notes" if notes else ""))
        if tuf is not None:
            echo(f"TUF repository {tuf_repo}: {tuf['files']} target files checked against their signed hashes, "
                 f"{tuf['opened']} models opened", err=failed)
        verdict = paint("invalid:", "red", err=True, bold=True) if failed else paint("valid:", "green", bold=True)
        echo(verdict + " " + summary, err=failed)
    sys.exit(1 if failed else 0)


def _paint_diagnostic(line: str, is_error: bool) -> str:
    """``file:line:col: error: …`` with the level word coloured (on a terminal only)."""
    for word, colour in (("error:", "red"), ("warning:", "yellow")):
        at = line.find(" " + word)
        if at >= 0:
            return line[:at + 1] + paint(word, colour, err=is_error, bold=True) + line[at + 1 + len(word):]
    return line


def _parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not key=value", param_hint="--labels")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _read_facts(path: str | None) -> dict:
    if not path:
        return {}
    try:
        docs = load_documents(Path(path).read_bytes(), path)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    except YamlError as exc:
        raise UserError(f"{path}:{exc.line}:{exc.column}: {exc.message}") from None
    facts = docs[0].data if docs else {}
    if not isinstance(facts, dict):
        raise UserError(f"{path}:1:1: facts must be a mapping such as `hw.arch: x86_64`")
    import jsonschema

    from reconciler.fleet.schemas import load_schema

    schema = load_schema("common.schema.json")["$defs"]["facts"]
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(facts))
    if err is not None:
        line, col = docs[0].position(tuple(err.absolute_path))
        raise UserError(f"{path}:{line}:{col}: {err.message}")
    return facts


def _require_valid(result: LoadResult, what: str) -> None:
    if result.errors:
        for d in result.errors[:20]:
            click.echo(d.format_text(), err=True)
        raise UserError(f"{what} is invalid ({len(result.errors)} errors); fix it first (`modelfleet validate`)")


@click.command("render")
@click.option("--device", "device_id", default=None, help="Device id.")
@click.option("--classes", "by_class", is_flag=True,
              help="Instead of one device: which variant each hardware class of the inventory runs, per endpoint.")
@click.option("--labels", "labels", multiple=True, help="Extra label key=value (repeatable); overrides inventory labels.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="YAML/JSON file of hardware facts (hw.arch, …).")
@click.option("--rev", default=None, help="Render this Git revision instead of the files.")
@click.argument("path", required=False, type=click.Path(file_okay=False))
@repo_option(remote=False)
@format_option("yaml", default="yaml", help="yaml (the default) or json.")
def render_cmd(device_id: str | None, by_class: bool, labels: tuple[str, ...], facts_file: str | None,
               rev: str | None, path: str | None, repo: str | None, fmt: str) -> None:
    """Print one device's desired state (or, with --classes, each hardware class's variants) as YAML.

    PATH is the same as --repo PATH. --device names a device of the inventory (devices/); a device it does not
    list is rendered only from the --labels (and --facts) you give it.
    """
    if by_class == bool(device_id):
        raise UserError("give either --device ID or --classes", exit_code=2)
    source = _repo_arg(path, repo)
    with fleet_revisions(source) as (where, cloned):
        result = _load(where, rev or ("HEAD" if cloned else None))
    path = str(source) if cloned else where
    _require_valid(result, path)
    if by_class:
        if labels or facts_file:
            raise UserError("--labels and --facts describe one device; they do not go with --classes", exit_code=2)
        _dump(_render_classes(result), fmt)
        return
    assert device_id is not None
    inv = result.fleet.devices.get(device_id)
    if inv is None and not labels and not facts_file:
        raise UserError(_unknown_device(device_id, sorted(result.fleet.devices), path))
    all_labels = dict(inv.labels) if inv else {}
    all_labels.update(_parse_labels(labels))
    facts = dict((inv.spec.get("facts") or {}) if inv else {})
    facts.update(_read_facts(facts_file))
    state = desired_state(result.fleet, DeviceIdentity(device_id, all_labels), facts)
    doc = state.to_dict()
    doc["inventory"] = inv is not None
    _dump(doc, fmt)


def _unknown_device(device_id: str, known: list[str], where: str) -> str:
    """Why ``render --device`` refuses an id the inventory does not list, and how to find the right one."""
    import difflib

    close = difflib.get_close_matches(device_id, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(known[:10]) + (f", … {len(known) - 10} more" if len(known) > 10 else "")
    devices = f"the inventory lists {len(known)}: {listed}" if known else "the inventory lists none"
    return (f"no device {escape(device_id)!r} in {where}/devices/ ({devices}); {hint}`modelfleet fleet status` "
            "shows the devices that report; to render a device that is not in the inventory, give its labels: "
            f"--device {escape(device_id)} --labels KEY=VALUE")


def _dump(doc: dict, fmt: str) -> None:
    if fmt == "json":
        emit(doc, fmt)
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), nl=False)


def _render_classes(result: LoadResult) -> dict:
    """Per hardware class: its devices, facts and, per endpoint its devices serve, the variant they run."""
    from reconciler.fleet.hwclasses import hardware_classes

    fleet = result.fleet
    out: dict = {}
    for hc in hardware_classes((d.name, d.spec) for d in fleet.devices.values()):
        endpoints: dict[str, set[str]] = {}
        issues: list[str] = []
        for name in hc.devices:
            state = desired_state(fleet, DeviceIdentity(name, fleet.devices[name].labels), hc.facts)
            for ep in state.endpoints.values():
                endpoints.setdefault(ep.name, set()).add(f"{ep.model} {ep.version}: {ep.variant} ({ep.runtime})")
            issues += [f"{name}/{i.endpoint}: {i.reason}: {i.message}" for i in state.issues]
        # Devices of one class share facts, so they differ only by rollout membership (version) and labels.
        doc: dict = {"devices": list(hc.devices), "facts": dict(hc.facts),
                     "endpoints": {k: " | ".join(sorted(v)) for k, v in sorted(endpoints.items())}}
        if issues:
            doc["issues"] = issues
        out[hc.name] = doc
    without = sorted(d.name for d in fleet.devices.values() if not d.spec.get("facts"))
    if without:
        out["(no facts declared)"] = {"devices": without}
    return {"classes": out}


@click.command("plan")
@repo_option(remote=False)
@click.option("--base", required=True, help="Base revision (e.g. origin/main).")
@click.option("--head", default="HEAD", show_default=True, help="Head revision (the PR).")
@click.option("--path", "subpath", default=None, help="Sub-directory of the fleet inside the repository.")
@format_option("table", "markdown", aliases={"text": "table"},
               help="table: per device; markdown: for a pull-request comment; json/yaml for scripts.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when nothing changes, 2 when something changes, 1 on an error (Terraform's convention).")
def plan_cmd(repo: str | None, base: str, head: str, subpath: str | None, fmt: str, detailed_exitcode: bool) -> None:
    """Show, per device, what changes between two revisions of the fleet repository."""
    from reconciler.fleet.plan import make_plan, render_json, render_markdown, render_text

    with fleet_revisions(repo) as (where, _):
        try:
            import git

            git.Repo(where, search_parent_directories=True)
        except Exception:
            raise UserError(f"{where}: not a Git repository") from None
        base_r = load_git(where, base, subpath)
        _require_valid(base_r, f"base revision {base}")
        head_r = load_git(where, head, subpath)
        _require_valid(head_r, f"head revision {head}")
    plan = make_plan(base_r.fleet, head_r.fleet)
    if fmt in ("json", "yaml"):
        emit_json_text(render_json(plan), fmt)
    else:
        click.echo({"table": render_text, "markdown": render_markdown}[fmt](plan), nl=False)
    if detailed_exitcode:
        sys.exit(2 if plan.changes else 0)


@click.group("docs")
def docs_cmd() -> None:
    """Documentation helpers."""


@docs_cmd.command("generate")
@click.option("--output", "-o", default="-", help="File to write (default stdout).")
@click.option("--check", is_flag=True, help="Exit 1 if OUTPUT is not up to date.")
def docs_generate(output: str, check: bool) -> None:
    """Generate the manifest reference (docs/manifests.md) from the JSON Schemas."""
    from reconciler.fleet.docgen import generate

    _write_generated(generate(), output, check, "make docs")


@docs_cmd.command("cli")
@click.option("--output", "-o", default="-", help="File to write (default stdout).")
@click.option("--check", is_flag=True, help="Exit 1 if OUTPUT is not up to date.")
def docs_cli(output: str, check: bool) -> None:
    """Generate the command reference (docs/cli.md) from the command tree."""
    from reconciler.cli.clidoc import generate

    _write_generated(generate(), output, check, f"modelfleet docs cli --output {output}")


def _write_generated(text: str, output: str, check: bool, how: str) -> None:
    from reconciler.core.fsutil import atomic_write_text

    if check:
        try:
            current = Path(output).read_text(encoding="utf-8") if Path(output).exists() else ""
        except OSError as exc:
            raise UserError(f"{output}: {exc.strerror}") from None
        if current != text:
            raise UserError(f"{output} is out of date; run `{how}`")
        click.echo(f"{output} is up to date")
    elif output == "-":
        click.echo(text, nl=False)
    else:
        try:
            atomic_write_text(output, text)
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output}")


@docs_cmd.command("reasons")
@click.option("--output", "-o", default="-", help="Markdown page whose reasons table to rewrite (default: print it).")
@click.option("--check", is_flag=True, help="Exit 1 if OUTPUT's table is not up to date.")
def docs_reasons(output: str, check: bool) -> None:
    """The table of reason codes (reconciler/core/reasons.py) for the operations runbook."""
    from reconciler.core import reasons as R
    from reconciler.core.fsutil import atomic_write_text

    table = R.markdown_table()
    if output == "-":
        click.echo(table, nl=False)
        return
    try:
        current = Path(output).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{output}: {exc.strerror}") from None
    if R.TABLE_BEGIN not in current or R.TABLE_END not in current:
        raise UserError(f"{output}: no reasons table markers ({R.TABLE_BEGIN} … {R.TABLE_END})")
    head, rest = current.split(R.TABLE_BEGIN, 1)
    text = head + R.TABLE_BEGIN + "\n" + table + R.TABLE_END + rest.split(R.TABLE_END, 1)[1]
    if check:
        if text != current:
            raise UserError(f"{output}: the reasons table is out of date; run `modelfleet docs reasons -o {output}`")
        click.echo(f"{output} is up to date")
    elif text != current:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}")
    else:
        click.echo(f"{output} is up to date")
