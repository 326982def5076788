"""``modelfleet check``: pre-flight checks of the operator's machine (``--repo``) or of a device (``--agent-config``).

The facts are gathered by :mod:`reconciler.check.facts`, judged by :mod:`reconciler.check.judge` and printed by
:mod:`reconciler.check.render`; this module only reads the options and picks the exit code (1 on an error,
or on a warning with ``--strict``).
"""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.check.model import WARNING, Report
from reconciler.cli.console import echo, level_color, paint
from reconciler.cli.options import emit_json_text, format_option, repo_option
from reconciler.cli.remote import credential_options, credentials as _creds, status_repo as _repo
from reconciler.core.errors import UserError
from reconciler.core.units import parse_duration

# Options of the operator side; giving one with --agent-config is a usage error.
OPERATOR_ONLY = ("repo", "branch", "prefix", "cache_dir", "tuf_repo", "tuf_url", "expiry_warning", "username",
                 "password_file")


def _seconds(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command("check")
@click.option("--agent-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Device side: check this agent config and what it names (credentials, clock, disk, runtimes). "
                   "Run it as the agent's user.")
@repo_option(remote=True)
@click.option("--base", "branch", default="main", show_default=True, help="Desired-state branch.")
@click.option("--prefix", default="status/", show_default=True, help="Status branch prefix.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Local cache (default ~/.cache/modelfleet).")
@credential_options
@click.option("--tuf-repo", type=click.Path(file_okay=False, path_type=Path),
              help="The publisher's TUF repository directory (the one `modelfleet repo init` made).")
@click.option("--tuf-url", metavar="URL",
              help="Where devices fetch TUF metadata. [default: the Fleet's spec.tuf.metadataUrl at the branch head]")
@click.option("--expiry-warning", default="7d", show_default=True, metavar="DURATION",
              help="Warn when a TUF role expires within this (or within half its lifetime, when shorter).")
@click.option("--timeout", default="30s", show_default=True, help="Timeout of one Git operation or HTTP request.")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@format_option("table")
@click.pass_context
def check_cmd(ctx: click.Context, agent_config: Path | None, repo: str | None, branch: str, prefix: str,
              cache_dir: Path | None, username: str | None, password_file: Path | None, ca_file: Path | None,
              tuf_repo: Path | None, tuf_url: str | None, expiry_warning: str, timeout: str, strict: bool,
              fmt: str) -> None:
    """Check that this machine is set up for its side of the fleet, like `flux check --pre`.

    Operator side (the default): git, commit signing, the fleet repository and its status branches, the TUF
    repository's expiries. Device side (--agent-config): the config, secret file modes, the status key, the Git
    and TUF servers and the clock, the state dir, disk space, runtimes. Each check is ok, a warning or an error,
    with what to do.
    """
    from reconciler.check import facts, judge, render

    if tuf_repo is not None and tuf_url:
        raise click.UsageError("give --tuf-repo or --tuf-url, not both")
    if agent_config is not None:
        given = [name for name in OPERATOR_ONLY
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            opt = "--" + given[0].replace("_", "-").replace("branch", "base")
            raise click.UsageError(f"{opt} is an operator-side option; --agent-config checks a device")
        report = Report("device", tuple(judge.judge_device(facts.gather_device(agent_config))))
    else:
        warn_within = _seconds("--expiry-warning", expiry_warning)
        secs = _seconds("--timeout", timeout)
        creds = _creds(username, password_file, ca_file)
        sr, repo_error = None, ""
        try:
            sr = _repo(repo, cache_dir, branch, prefix, timeout, creds)
        except UserError as exc:  # no repository to name: the other checks still run, this one says why
            repo_error = str(exc)
        found = facts.gather_operator(sr, repo_error=repo_error, tuf_repo=tuf_repo, tuf_url=tuf_url,
                                      ca_file=ca_file, timeout=secs)
        report = Report("operator", tuple(judge.judge_operator(found, expiry_warning=warn_within)))
    if fmt == "table":
        echo(render.table(report, lambda text, status: paint(text, level_color(status)) if level_color(status)
                          else text))
    else:
        emit_json_text(render.as_json(report, strict=strict), fmt)
    failed = report.failed(strict)
    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        why = " (--strict: warnings fail too)" if any(c.status == WARNING for c in failed) else ""
        raise UserError(f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed{why}: {names}")
