"""``modelfleet completion bash|zsh|fish``: the shell completion script, from click's completion machinery.

The script calls ``modelfleet`` back with ``_MODELFLEET_COMPLETE`` set (click's protocol: ``COMP_WORDS`` and
``COMP_CWORD`` for bash and zsh), so completions always match the installed command tree, options included.
"""

from __future__ import annotations

import click

PROG = "modelfleet"
COMPLETE_VAR = "_MODELFLEET_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the completion script for SHELL (bash 4.4+, zsh, fish).

    Load it in the shell's startup file (see the examples); completions cover commands, options and choices.
    """
    from click.shell_completion import get_completion_class

    from reconciler.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above lists only shells click supports
    click.echo(cls(cli, {}, PROG, COMPLETE_VAR).source())
