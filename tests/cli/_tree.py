"""The whole ``modelfleet`` command tree, as an operator walks it with ``--help``."""

from __future__ import annotations

import click

from reconciler.cli.clidoc import root_context, walk


def commands() -> list[tuple[str, click.Command, click.Context]]:
    """(path after ``modelfleet``, command, context) for every visible command, groups included."""
    cli, ctx = root_context()
    return [(c.command_path.removeprefix("modelfleet").strip(), cmd, c) for cmd, c in walk(cli, ctx)]


def leaves() -> list[tuple[str, click.Command, click.Context]]:
    return [t for t in commands() if not isinstance(t[1], click.Group)]
