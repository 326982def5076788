"""What every command that talks to the fleet repository's remote shares: the URL (a password taken out of it),
the credential options, ``--status-repo`` and the :class:`~reconciler.gitops.statusrepo.StatusRepo` they build.

Used by ``fleet`` (cli.fleet), ``fleet drift`` (cli.drift) and ``rollout`` (cli.rollout); a module of its own so
that none of them imports another.
"""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.cli.options import shared_repo
from reconciler.core.credentials import Credentials, basic_authorization
from reconciler.core.errors import UserError
from reconciler.core.redact import redact_url, split_userinfo
from reconciler.core.units import parse_duration
from reconciler.gitops.statusrepo import StatusRepo


def remote_url(url: str) -> tuple[str, str | None]:
    """``url`` without a password or token in its userinfo (warning once on stderr) and the Basic authorization
    made from it (None when there was none); shared by every operator command that talks to the fleet repo."""
    if url.lower().startswith(("http://", "https://")):
        clean, user, password = split_userinfo(url)
        if password is not None or user is not None:
            # Taken out of the URL (and so out of every git command line); still, it sat in shell history. A user
            # name alone is taken out too: it is how GitHub documents a token (https://<token>@github.com/…).
            click.echo(f"warning: {redact_url(url)} embeds a password or token; it is sent as a header, but "
                       "prefer --username with --password-file", err=True)
            return clean, basic_authorization(user or "", password or "")
    return url, None


def parse_timeout(timeout: str) -> float:
    try:
        return parse_duration(timeout)
    except ValueError as exc:
        raise UserError(f"--timeout: {exc}") from None


def status_repo(repo: str | None, cache_dir: Path | None, branch: str, prefix: str, timeout: str,
                creds: Credentials | None = None) -> StatusRepo:
    """The status branches (and desired-state branch) of ``--repo`` by the one ``--repo`` rule (:func:`shared_repo`)."""
    url, inline = remote_url(shared_repo(repo))
    return StatusRepo(url, cache_dir, branch=branch, prefix=prefix, timeout=parse_timeout(timeout),
                      credentials=creds, authorization=inline, status_urls=status_repos())


_credential_options = [
    click.option("--username", help="HTTP(S) user name (with --password-file)."),
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="File holding the HTTP(S) password or token (mode 600)."),
    click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), help="CA bundle for HTTPS."),
]


def credentials(username: str | None, password_file: Path | None, ca_file: Path | None) -> Credentials:
    """The :class:`Credentials` of the ``--username``/``--password-file``/``--ca-file`` options."""
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
        if url.lower().startswith(("http://", "https://")) and split_userinfo(url)[0] != url:
            raise UserError(f"--status-repo {redact_url(url)} embeds a password or token: use --username with "
                            "--password-file (they apply to every repository)")
        out.append(shared_repo(url, "--status-repo"))
    return out


def credential_options(f):  # type: ignore[no-untyped-def]
    """``--username``, ``--password-file``, ``--ca-file`` (build the Credentials with :func:`credentials`) and
    ``--status-repo`` (read with :func:`status_repos`)."""
    for opt in reversed([*_credential_options, _status_repo_option]):
        f = opt(f)
    return f
