"""``modelfleet fleet``: the fleet's state as the devices reported it on their ``status/<device-id>`` branches.

``fleet status`` fetches every status branch once (shallow) and prints a table/JSON/Markdown report with
Ready, applied commit vs the branch head, endpoint versions and heartbeat age (STALE past ``--stale-after``).
``fleet history DEVICE`` lists one device's status commits over time; ``fleet drift`` (cli.drift) plots drift.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import click

from reconciler.cli.console import color_enabled, echo, paint
from reconciler.cli.options import deprecated_alias, emit_json_text, format_option, repo_option
from reconciler.cli.remote import credential_options, credentials, status_repo
from reconciler.core.credentials import CredentialError
from reconciler.core.errors import UserError
from reconciler.core.termsafe import escape
from reconciler.core.units import parse_duration
from reconciler.gitops.fleetstatus import fleet_report, history, render, render_device, render_history
from reconciler.gitops.verify import GitError

_repo_options = [
    repo_option(remote=True),
    click.option("--base", "branch", default="main", show_default=True, help="Desired-state branch."),
    click.option("--prefix", default="status/", show_default=True, help="Status branch prefix."),
    click.option("--cache-dir", type=click.Path(path_type=Path), help="Local cache (default ~/.cache/modelfleet)."),
    click.option("--timeout", default="120s", show_default=True, help="Timeout of one Git operation."),
    format_option("table", "markdown"),
]


def repo_options(f):  # type: ignore[no-untyped-def]
    f = deprecated_alias("--branch", "branch", "--base", metavar="BRANCH")(f)
    f = credential_options(f)
    for opt in reversed(_repo_options):
        f = opt(f)
    return f


class _FleetGroup(click.Group):
    """``fleet drift`` lives in cli.drift (it pulls numpy and the drift package); loaded only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "drift"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "drift":
            from reconciler.cli import helptext

            return helptext.attach(importlib.import_module("reconciler.cli.drift").drift_cmd, "fleet drift")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_FleetGroup)
def fleet() -> None:
    """Fleet-wide status from the devices' status branches."""


@fleet.command("status")
@repo_options
@click.option("--stale-after", default="15m", show_default=True, metavar="DURATION",
              help="Mark devices whose last heartbeat is older than this as STALE.")
@click.option("--device", "device", metavar="ID", help="One device in full: trust, every condition with its "
              "message, every endpoint (with --format json: that device's row).")
def status_cmd(repo: str | None, branch: str, prefix: str, cache_dir: Path | None, timeout: str, fmt: str,
               username: str | None, password_file: Path | None, ca_file: Path | None, stale_after: str,
               device: str | None) -> None:
    """One table: device, applied commit vs branch head, endpoints, Ready, heartbeat age."""
    try:
        stale = parse_duration(stale_after)
    except ValueError as exc:
        raise UserError(f"--stale-after: {exc}") from None
    sr = status_repo(repo, cache_dir, branch, prefix, timeout, credentials(username, password_file, ca_file))
    try:
        report = fleet_report(sr, stale_after=stale)
    except (GitError, CredentialError) as exc:
        raise UserError(f"cannot read status branches from {sr.display_url}: {exc}") from None
    if device is not None:
        known = {r.device for r in report.rows} | set(report.never_reported)
        if device not in known:
            raise UserError(f"no device {escape(device)!r}: not in the inventory and no {prefix}{escape(device)} "
                            "branch")
        if fmt in ("json", "yaml"):
            row = next((d for d in json.loads(render(report, "json"))["devices"] if d["device"] == device), None)
            emit_json_text(json.dumps(row or {"device": device, "neverReported": True}, indent=2), fmt)
        else:
            click.echo(render_device(report, device))
        return
    if not report.rows and fmt == "table":
        click.echo(f"no device has reported yet (no {prefix}* branches in {sr.display_url})")
        if report.never_reported:
            click.echo(f"never reported ({len(report.never_reported)} in the inventory): "
                       + ", ".join(escape(d) for d in report.never_reported[:50]))
        return
    if fmt == "yaml":
        emit_json_text(render(report, "json"), fmt)
    elif fmt == "table":
        echo(_paint_words(render(report, fmt)))
    else:
        click.echo(render(report, fmt))


def _paint_words(table: str) -> str:
    """True green, False and STALE red, on a terminal only; escapes take no width, so the columns stay aligned."""
    if not color_enabled():
        return table
    colours = {"True": "green", "False": "red", "STALE": "red"}
    return re.sub(r"\b(True|False|STALE)\b", lambda m: paint(m.group(1), colours[m.group(1)]), table)


@fleet.command("history")
@click.argument("device")
@repo_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
def history_cmd(device: str, repo: str | None, branch: str, prefix: str, cache_dir: Path | None, timeout: str,
                fmt: str, username: str | None, password_file: Path | None, ca_file: Path | None, limit: int) -> None:
    """DEVICE's status commits over time (what ran when), newest first."""
    sr = status_repo(repo, cache_dir, branch, prefix, timeout, credentials(username, password_file, ca_file))
    try:
        entries = history(sr, device, limit)
    except KeyError:
        raise UserError(f"no status branch {prefix}{escape(device)} in {sr.display_url}") from None
    except (GitError, CredentialError) as exc:
        raise UserError(f"cannot read {prefix}{escape(device)} from {sr.display_url}: {exc}") from None
    if fmt == "yaml":
        emit_json_text(render_history(device, entries, "json"), fmt)
    else:
        click.echo(render_history(device, entries, fmt))

