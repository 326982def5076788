"""The ``modelfleet`` command line.

Each command family lives in the module that owns it and is registered here:
``validate``/``render``/``plan``/``docs`` (cli.fleetrepo), ``repo``/``tuf-client`` (cli.repo),
``fleet`` (cli.fleet, ``fleet drift`` in cli.drift), ``serve`` (cli.serve), ``agent`` (cli.agent),
``optimize`` (cli.optimize), ``baseline`` (cli.baseline), ``rollout`` (cli.rollout), ``simulate`` (cli.simulate),
``data`` (cli.data), ``explain`` (cli.explain), ``completion`` (cli.completion), ``check`` (cli.check). Shared
options live in cli.options (those of the commands that talk to the fleet's remote in cli.remote), terminal output
(colour, progress) in cli.console, examples and exit codes in cli.helptext.

User errors (:class:`reconciler.core.errors.UserError`) are printed as ``error: …`` and exit non-zero; never a
traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from reconciler import __version__
from reconciler.cli import helptext
from reconciler.cli.console import color_enabled, paint
from reconciler.core.errors import UserError

# (module, attribute) of each sub-command, imported lazily so `modelfleet validate` does not pay for
# onnxruntime/openvino imports.
_COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("reconciler.cli.fleetrepo", "validate_cmd"),
    "render": ("reconciler.cli.fleetrepo", "render_cmd"),
    "plan": ("reconciler.cli.fleetrepo", "plan_cmd"),
    "docs": ("reconciler.cli.fleetrepo", "docs_cmd"),
    "repo": ("reconciler.cli.repo", "repo"),
    "tuf-client": ("reconciler.cli.repo", "tuf_client"),
    "fleet": ("reconciler.cli.fleet", "fleet"),
    "serve": ("reconciler.cli.serve", "serve"),
    "agent": ("reconciler.cli.agent", "agent"),
    "gateway": ("reconciler.cli.gateway", "gateway"),
    "optimize": ("reconciler.cli.optimize", "optimize"),
    "baseline": ("reconciler.cli.baseline", "baseline_cmd"),
    "rollout": ("reconciler.cli.rollout", "rollout"),
    "simulate": ("reconciler.cli.simulate", "simulate"),
    "data": ("reconciler.cli.data", "data"),
    "explain": ("reconciler.cli.explain", "explain_cmd"),
    "completion": ("reconciler.cli.completion", "completion_cmd"),
    "check": ("reconciler.cli.check", "check_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        try:
            module = importlib.import_module(spec[0])
        except ModuleNotFoundError as exc:
            if exc.name == spec[0]:
                return None
            raise
        cmd = getattr(module, spec[1], None)
        return None if cmd is None else helptext.attach(cmd, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelfleet")
def cli() -> None:
    """GitOps for AI models on edge devices: the operator, publisher and device commands.

    The fleet repository is --repo PATH|URL everywhere (default: $MODELFLEET_REPO, else the current directory).
    Machine-readable output: --format json|yaml. Exit codes: 0 success, 1 failure, 2 usage error. Reference:
    docs/cli.md.
    """


helptext.attach(cli, "")


def _error(message: str) -> None:
    click.echo(paint("error:", "red", err=True, bold=True) + " " + message, err=True, color=color_enabled(err=True))


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="modelfleet", standalone_mode=False)
    except UserError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:  # a file or directory the command was pointed at: the user can fix it
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        sys.exit(1)
    except Exception as exc:  # a bug: still one line for the operator, the traceback on request
        if os.environ.get("MODELFLEET_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:500]
        _error(f"unexpected {type(exc).__name__}: {text} (a bug; MODELFLEET_DEBUG=1 shows where)")
        sys.exit(1)


if __name__ == "__main__":
    main()
