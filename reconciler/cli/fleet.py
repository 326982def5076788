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
from reconciler.cli.options import deprecated_alias, emit_json_text, format_option, repo_option, shared_repo
from reconciler.core.credentials import CredentialError, Credentials, basic_authorization
from reconciler.core.errors import UserError
from reconciler.core.redact import redact_url, split_userinfo
from reconciler.core.termsafe import escape
from reconciler.core.units import parse_duration
from reconciler.gitops.fleetstatus import fleet_report, history, render, render_device, render_history
from reconciler.gitops.statusrepo import StatusRepo
from reconciler.gitops.verify import GitError


def remote_url(url: str) -> tuple[str, str | None]:
    """``url`` without a password or token in its userinfo (warning once on stderr) and the Basic authorization
    made from it (None when there was none); shared by every operator command that talks to the fleet repo."""
    if url.startswith(("http://", "https://")):
        clean, user, password = split_userinfo(url)
        if password is not None:
            # Taken out of the URL (and so out of every git command line); still, it sat in shell history.
            click.echo(f"warning: {redact_url(url)} embeds a password or token; it is sent as a header, but "
                       "prefer --username with --password-file", err=True)
            return clean, basic_authorization(user or "", password)
    return url, None


def _repo(repo: str | None, cache_dir: Path | None, branch: str, prefix: str, timeout: str,
          creds: Credentials | None = None) -> StatusRepo:
    url, inline = remote_url(shared_repo(repo))
    try:
        secs = parse_duration(timeout)
    except ValueError as exc:
        raise UserError(f"--timeout: {exc}") from None
    return StatusRepo(url, cache_dir, branch=branch, prefix=prefix, timeout=secs, credentials=creds,
                      authorization=inline, status_urls=status_repos())


_repo_options = [
    repo_option(remote=True),
    click.option("--base", "branch", default="main", show_default=True, help="Desired-state branch."),
    click.option("--prefix", default="status/", show_default=True, help="Status branch prefix."),
    click.option("--cache-dir", type=click.Path(path_type=Path), help="Local cache (default ~/.cache/modelfleet)."),
    click.option("--timeout", default="120s", show_default=True, help="Timeout of one Git operation."),
    format_option("table", "markdown"),
]

_credential_options = [
    click.option("--username", help="HTTP(S) user name (with --password-file)."),
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="File holding the HTTP(S) password or token (mode 600)."),
    click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), help="CA bundle for HTTPS."),
]


def _creds(username: str | None, password_file: Path | None, ca_file: Path | None) -> Credentials:
    if bool(username) != bool(password_file):
        raise UserError("--username and --password-file go together")
    return Credentials(username=username, password_file=password_file, ca_file=ca_file)


STATUS_REPOS_KEY = "modelfleet.status_repos"


def _remember_status_repos(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    ctx.meta[STATUS_REPOS_KEY] = value
    return value


# Not passed to each command function: :func:`status_repos` reads it, so every status-reading command has it.
_status_repo_option = click.option(
    "--status-repo", "status_repos", multiple=True, metavar="PATH|URL", expose_value=False,
    callback=_remember_status_repos,
    help="A repository the devices push their status branches to (`status.url` in their agent config; a clone's "
         "path means its origin, like --repo); repeat it for each shard of a sharded status repository "
         "(docs/scale.md). [default: the fleet repository]")


def status_repos() -> list[str]:
    """The ``--status-repo`` URLs of the running command (empty: the fleet repository holds the statuses)."""
    ctx = click.get_current_context(silent=True)
    out = []
    for url in (ctx.meta.get(STATUS_REPOS_KEY, ()) if ctx else ()):
        if url.startswith(("http://", "https://")) and split_userinfo(url)[2] is not None:
            raise UserError(f"--status-repo {redact_url(url)} embeds a password or token: use --username with "
                            "--password-file (they apply to every repository)")
        out.append(shared_repo(url, "--status-repo"))
    return out


def credential_options(f):  # type: ignore[no-untyped-def]
    """``--username``, ``--password-file``, ``--ca-file`` (build the Credentials with :func:`_creds`) and
    ``--status-repo`` (read with :func:`status_repos`)."""
    for opt in reversed([*_credential_options, _status_repo_option]):
        f = opt(f)
    return f


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
    sr = _repo(repo, cache_dir, branch, prefix, timeout, _creds(username, password_file, ca_file))
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
    sr = _repo(repo, cache_dir, branch, prefix, timeout, _creds(username, password_file, ca_file))
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

