"""The options every command family shares, spelled one way: ``--repo``, ``--format``, ``--dry-run``.

- ``--repo PATH|URL`` names the fleet repository everywhere, with one default: ``$MODELFLEET_REPO``, else the
  current directory. Commands that read files (validate, render, plan) use the checkout; commands that read the
  devices' status branches or push a commit (fleet, rollout, simulate) use the current clone's ``origin``.
- ``--format table|json|yaml`` wherever output is read by machines. YAML is the JSON document re-serialised, so the
  two never differ in content; both are stable (documented keys, no colour, no progress).
- An old spelling stays accepted as a hidden alias that prints one ``warning: … is deprecated`` line on stderr.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import click
import yaml

from reconciler.core.errors import UserError

REPO_ENV = "MODELFLEET_REPO"
REPO_HELP = "Fleet repository: {what} [default: $MODELFLEET_REPO, else the current directory{remote}]."

F = Callable[..., Any]


def repo_option(*, remote: bool, required: bool = False) -> Callable[[F], F]:
    """``--repo PATH|URL`` (``--repo PATH`` where only a checkout will do); None when not given and
    ``$MODELFLEET_REPO`` is unset."""
    if remote:
        return click.option("--repo", "repo", metavar="PATH|URL", required=required, envvar=REPO_ENV,
                            help=REPO_HELP.format(what="a Git URL or a clone's path",
                                                  remote="; its origin when it is a clone"))
    return click.option("--repo", "repo", metavar="PATH", required=required, envvar=REPO_ENV,
                        help=REPO_HELP.format(what="the checkout's path", remote=""))


def local_repo(repo: str | None) -> str:
    """The fleet checkout a file-reading command works on; a URL is a usage error with the way out."""
    path = repo or "."
    if "://" in path or (":" in path.split("/")[0] and not os.path.exists(path)):
        raise UserError(f"--repo {path}: this command reads a checkout; clone the repository and give its path",
                        exit_code=2)
    return path


def warn_deprecated(old: str, new: str) -> None:
    click.echo(f"warning: {old} is deprecated; use {new}", err=True)


def deprecated_alias(old: str, dest: str, new: str, *, value: Any = None, metavar: str = "VALUE",
                     type: Any = None) -> Callable[[F], F]:
    """A hidden option ``old`` that sets parameter ``dest`` like the new spelling ``new`` does.

    A flag alias (``value`` given, e.g. ``--json`` → ``fmt="json"``) or a value alias (``--fleet DIR`` →
    ``repo=DIR``). Giving both spellings is a usage error. Apply below ``@click.command`` like an option.
    """
    key = "deprecated_" + old.lstrip("-").replace("-", "_")

    def deco(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            given = kwargs.pop(key)
            if given not in (None, False):
                warn_deprecated(old, new)
                ctx = click.get_current_context()
                if ctx.get_parameter_source(dest) == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"give {new} or {old}, not both")
                kwargs[dest] = value if value is not None else given
            return f(*args, **kwargs)

        if value is not None:
            opt = click.option(old, key, is_flag=True, hidden=True, default=False)
        else:
            opt = click.option(old, key, hidden=True, default=None, metavar=metavar, type=type)
        return opt(run)

    return deco


class FormatChoice(click.Choice):
    """``--format`` values; old names (``text`` for ``table``) still accepted, not listed."""

    def __init__(self, choices: list[str], aliases: dict[str, str] | None = None) -> None:
        super().__init__(choices)
        self.aliases = aliases or {}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.aliases:
            warn_deprecated(f"--format {value}", f"--format {self.aliases[value]}")
            return self.aliases[value]
        return super().convert(value, param, ctx)


def format_option(*choices: str, default: str = "table", aliases: dict[str, str] | None = None,
                  help: str | None = None) -> Callable[[F], F]:
    """``--format`` with ``choices`` (json and yaml always included)."""
    names = list(dict.fromkeys([*choices, "json", "yaml"]))
    return click.option("--format", "fmt", type=FormatChoice(names, aliases), default=default,
                        show_default=True,
                        help=help or "Output format; json and yaml are stable for scripts (no colour, no progress).")


def as_yaml(json_text: str) -> str:
    """The JSON document (or JSON lines) as YAML with the same content (one document per JSON line)."""
    text = json_text.strip()
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True)


def emit(doc: Any, fmt: str) -> None:
    """Print ``doc`` as indented JSON or as YAML."""
    text = json.dumps(doc, indent=2)
    click.echo(as_yaml(text) if fmt == "yaml" else text, nl=fmt != "yaml")


def emit_json_text(json_text: str, fmt: str) -> None:
    """Print a renderer's JSON text as it is, or as YAML."""
    if fmt == "yaml":
        click.echo(as_yaml(json_text), nl=False)
    else:
        click.echo(json_text, nl=not json_text.endswith("\n"))


def dry_run_option(help: str = "Show the commit that would be written; write and push nothing.") -> Callable[[F], F]:
    return click.option("--dry-run", is_flag=True, help=help)
