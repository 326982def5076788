"""The options every command family shares, spelled one way: ``--repo``, ``--format``, ``--dry-run``.

- ``--repo PATH|URL`` names the fleet repository everywhere, with one default: ``$MODELFLEET_REPO``, else the
  current directory. Commands that read files (validate, render, plan) use the checkout, or clone a URL for the
  command's duration (:func:`fleet_revisions`); commands that read the devices' status branches or push a commit
  (fleet, rollout, simulate) use where the devices push (:func:`shared_repo`): a URL or a bare repository as
  given, a clone's ``origin``.
- ``--format table|json|yaml`` wherever output is read by machines. YAML is the JSON document re-serialised, so the
  two never differ in content; both are stable (documented keys, no colour, no progress).
- An old spelling stays accepted as a hidden alias that prints one ``warning: … is deprecated`` line on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from reconciler.core.errors import UserError

REPO_ENV = "MODELFLEET_REPO"
REPO_HELP = "Fleet repository: {what} [default: $MODELFLEET_REPO, else the current directory]."

F = Callable[..., Any]


def repo_option(*, remote: bool, required: bool = False) -> Callable[[F], F]:
    """``--repo PATH|URL``; None when not given and ``$MODELFLEET_REPO`` is unset. ``remote``: the command reads
    status branches or pushes (a clone's origin by default); else it reads a checkout (a URL is cloned)."""
    if remote:
        what = "a Git URL, a bare repository's path, or a clone's path, which means its origin"
    else:
        what = "a checkout's path (its files are read), or a Git URL (cloned for the command)"
    return click.option("--repo", "repo", metavar="PATH|URL", required=required, envvar=REPO_ENV,
                        shell_complete=_complete_dirs, help=REPO_HELP.format(what=what))


def _complete_dirs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Let the shell complete directory names (a URL is typed, not completed)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="dir")]


def is_url(repo: str) -> bool:
    """A URL git understands (``https://…``, ``ssh://…``, scp-style ``host:path``) rather than a local path."""
    return "://" in repo or (":" in repo.split("/")[0] and not os.path.exists(repo))


def shared_repo(repo: str | None, option: str = "--repo") -> str:
    """The one ``--repo`` rule of the commands that read the devices' status branches or push a commit (``fleet``,
    ``rollout``, ``simulate``, and each ``--status-repo``): where the devices push.

    - a URL means itself;
    - a clone's path (a work tree, or a directory inside one, whose repository has an ``origin`` remote) means
      that clone's origin, a relative origin path taken from the clone's top directory;
    - a bare repository's path, or a repository without ``origin``, means itself (made absolute).

    Not given: ``$MODELFLEET_REPO`` (click reads it into ``repo``), else the current directory, by the same rule.
    ``option`` names the option in error messages.
    """
    where = repo or "."
    if is_url(where):
        return where
    if not os.path.exists(where):
        raise UserError(f"{option} {where!r} not found (give a URL git understands or an existing path)")

    def git(*args: str) -> tuple[int, str]:
        try:
            p = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"cannot run git: {exc}") from None
        return p.returncode, (p.stdout if p.returncode == 0 else p.stderr).strip()

    rc, bare = git("rev-parse", "--is-bare-repository")
    if rc != 0:
        what = f"{option} {where}" if repo else "the current directory"
        raise UserError(f"{what} is not in a Git repository: give the fleet repository with --repo URL|PATH")
    if bare == "true":
        return git("rev-parse", "--absolute-git-dir")[1]
    rc, top = git("rev-parse", "--show-toplevel")
    if rc != 0:  # inside a clone's .git directory
        top = git("rev-parse", "--absolute-git-dir")[1]
    rc, origin = git("remote", "get-url", "origin")
    if rc != 0 or not origin:
        return top
    if is_url(origin) or os.path.isabs(origin):
        return origin
    return os.path.normpath(os.path.join(top, origin))


def local_clone(repo: str | None) -> Path | None:
    """The top directory of the clone ``--repo`` names by :func:`shared_repo`'s rule (a work tree, or the current
    directory when ``--repo`` is not given, whose repository has an ``origin``), or None (a URL, a bare repository,
    no origin). A command that pushes to the origin fast-forwards it afterwards."""
    where = repo or "."
    if is_url(where) or not os.path.isdir(where):
        return None

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or git("rev-parse", "--is-bare-repository") != "false" or not git("remote", "get-url", "origin"):
        return None
    return Path(top)


@contextlib.contextmanager
def fleet_revisions(repo: str | None, timeout: float = 300) -> Iterator[tuple[str, bool]]:
    """(where to read Git revisions, whether it is a fresh clone of a URL): ``--repo URL`` is cloned bare into a
    temporary directory for the command's duration (its branches are then ``main``, not ``origin/main``)."""
    where = repo or "."
    if not is_url(where):
        yield where, False
        return
    from reconciler.core.redact import redact_url, split_userinfo
    from reconciler.gitops.verify import git_message

    if where.lower().startswith(("http://", "https://")) and split_userinfo(where)[0] != where:
        # Any userinfo, a user name too: https://<token>@host is how GitHub documents a token in a URL.
        raise UserError(f"--repo {redact_url(where)}: credentials in the URL would show in `ps`; clone with your "
                        "credential helper and give the clone's path", exit_code=2)
    with tempfile.TemporaryDirectory(prefix="modelfleet-clone-") as tmp:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # never wait for a password on a terminal
        try:
            p = subprocess.run(["git", "clone", "--quiet", "--bare", "--no-tags", "--", where, tmp + "/repo.git"],
                               capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"cannot clone {redact_url(where)}: no answer within {timeout:g}s") from None
        if p.returncode != 0:
            why = git_message(p.stderr) or f"git exited {p.returncode}"
            raise UserError(f"cannot clone {redact_url(where)}: {why}")
        yield tmp + "/repo.git", True


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
