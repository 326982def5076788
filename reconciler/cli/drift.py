"""``modelfleet fleet drift``: drift per deployment, version, site and device over time, from the status history.

Reads every device's ``status/<device-id>`` branch history (``--limit`` commits each, ``--since`` by
heartbeat), takes the ``drift`` sections the agents wrote, and merges each device's newest window counts per
site and for the fleet (``--baselines`` gives the baseline files the merged counts are scored against; the
TUF targets folder works). ``--html`` writes a self-contained page with plots, ``--png`` the plots alone.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click

from reconciler.cli.options import deprecated_alias, emit_json_text, format_option, repo_option
from reconciler.cli.remote import status_repo
from reconciler.core.errors import UserError
from reconciler.core.units import parse_duration
from reconciler.gitops.verify import GitError


@click.command("drift")
@repo_option(remote=True)
@click.option("--base", "branch", default="main", show_default=True, help="Desired-state branch.")
@click.option("--prefix", default="status/", show_default=True, help="Status branch prefix.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Local cache (default ~/.cache/modelfleet).")
@click.option("--timeout", default="120s", show_default=True, help="Timeout of one Git operation.")
@click.option("--deployment", help="Only this deployment.")
@click.option("--since", metavar="DURATION", help="Only status commits whose heartbeat is this recent (e.g. 7d).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000),
              help="Status commits read per device.")
@click.option("--site-label", default="site", show_default=True, help="Device label that names its site.")
@click.option("--baselines", "baselines", multiple=True, type=click.Path(path_type=Path),
              help="Baseline files or folders (e.g. the TUF targets dir) to score merged counts against.")
@format_option("table")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), help="Write an HTML report.")
@click.option("--png", "png_out", type=click.Path(path_type=Path, dir_okay=False), help="Write the plots as PNG.")
@deprecated_alias("--branch", "branch", "--base", metavar="BRANCH")
def drift_cmd(repo: str | None, branch: str, prefix: str, cache_dir: Path | None, timeout: str,
              deployment: str | None, since: str | None, limit: int, site_label: str, baselines: tuple[Path, ...],
              fmt: str, html_out: Path | None, png_out: Path | None) -> None:
    """Drift scores over time per deployment, version, site and device, and fleet-level drift."""
    from reconciler.core.fsutil import atomic_write_bytes, atomic_write_text
    from reconciler.drift.baseline import BaselineError, load_baselines
    from reconciler.drift.report import aggregate, points_from_history, render

    now = _dt.datetime.now(_dt.timezone.utc)
    try:
        cutoff = now - _dt.timedelta(seconds=parse_duration(since)) if since else None
    except ValueError as exc:
        raise UserError(f"--since: {exc}") from None
    try:
        known = load_baselines(list(baselines))
    except (BaselineError, OSError) as exc:
        raise UserError(f"--baselines: {exc}") from None
    sr = status_repo(repo, cache_dir, branch, prefix, timeout)
    points = []
    try:
        read = sr.read()
        # Only devices whose newest status is trusted, and only their trusted commits (docs/security.md).
        for device in sorted(d for d, rec in read.records.items() if rec.trust.trusted):
            docs = [doc for _, _, doc, trust in sr.history_docs(device, limit) if trust.trusted]
            points.extend(points_from_history(device, docs, site_label=site_label, since=cutoff,
                                              deployment=deployment))
    except GitError as exc:
        raise UserError(f"cannot read status branches from {sr.url}: {exc}") from None
    rows = aggregate(points, known)
    table = render(rows, points, "table")
    if fmt in ("json", "yaml"):
        emit_json_text(render(rows, points, "json"), fmt)
    elif rows:
        click.echo(table)
    else:
        click.echo(f"no drift reported in {prefix}* branches of {sr.url}" + (f" since {since}" if since else ""))
    if html_out is None and png_out is None:
        return
    from reconciler.drift.plots import combined_png, html_report

    groups = {}
    for r in rows:
        key = (r.deployment, r.version)
        if key not in groups:
            groups[key] = ([p for p in points if (p.deployment, p.version) == key],
                           [x for x in rows if (x.deployment, x.version) == key])
    try:
        if html_out is not None:
            atomic_write_text(html_out, html_report("modelfleet drift report", now.isoformat(timespec="seconds"),
                                                    table, groups))
            click.echo(f"wrote {html_out}", err=True)
        if png_out is not None:
            atomic_write_bytes(png_out, combined_png(groups))
            click.echo(f"wrote {png_out}", err=True)
    except OSError as exc:
        raise UserError(f"cannot write the report: {exc.strerror or exc}") from None
