"""``modelfleet gateway run|nginx-config|status`` — a site gateway (reconciler.gateway, docs/gateway.md).

``run`` supervises nginx + fcgiwrap and refreshes the mirror and relays the site's status every interval until
SIGTERM/SIGINT (systemd: ``systemd/modelfleet-gateway.service``); ``nginx-config`` prints the nginx config it
generates (for a site that runs its own nginx and fcgiwrap); ``status`` prints what the running gateway did last.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from reconciler.core.errors import UserError

DEFAULT_CONFIG = "/etc/modelfleet/gateway.yaml"

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("MODELFLEET_GATEWAY_CONFIG", DEFAULT_CONFIG), show_default=DEFAULT_CONFIG,
    help="Gateway config file (env MODELFLEET_GATEWAY_CONFIG).")


@click.group()
def gateway() -> None:
    """A site gateway: mirror, TUF cache and status relay between a site's devices and the central servers."""


@gateway.command("run")
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run_cmd(config_path: Path, log_format: str) -> None:
    """Serve the site until SIGTERM: nginx + git http-backend, the mirror refreshed, status relayed."""
    from reconciler.core.logs import setup_logging
    from reconciler.gateway.config import load_gateway_config
    from reconciler.gateway.service import Gateway

    cfg = load_gateway_config(config_path)
    setup_logging(log_format, "info")
    gw = Gateway(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (gw.stop_event.set(), gw.wake.set()))
    signal.signal(signal.SIGHUP, lambda *_: gw.wake.set())  # a round now (e.g. after a push upstream)
    from reconciler.core.credentials import CredentialError

    try:
        gw.start()
    except (OSError, RuntimeError, CredentialError) as exc:
        gw.stop()
        raise UserError(f"the gateway could not start: {exc}") from None
    click.echo(f"gateway {cfg.name} on {cfg.listen}: mirror of {gw.mirror.display_url}, status relayed to "
               f"{len(cfg.upstream_status_urls)} repositories", err=True)
    try:
        gw.run()
    finally:
        gw.stop()


@gateway.command("nginx-config")
@config_option
def nginx_config_cmd(config_path: Path) -> None:
    """Print the nginx config the gateway runs with (it holds the upstream TUF credential: keep it 0600)."""
    from reconciler.gateway.config import load_gateway_config
    from reconciler.gateway.nginx import nginx_config

    cfg = load_gateway_config(config_path)
    from reconciler.core.credentials import CredentialError

    try:
        click.echo(nginx_config(cfg, run_dir=cfg.data_dir / "run"), nl=False)
    except (ValueError, CredentialError) as exc:
        raise UserError(str(exc)) from None


@gateway.command("status")
@config_option
def status_cmd(config_path: Path) -> None:
    """What the running gateway did last (JSON): mirror heads and polls, relay pending and pushed."""
    from reconciler.gateway.config import load_gateway_config

    cfg = load_gateway_config(config_path)
    path = cfg.data_dir / "run" / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no state at {path}: is the gateway running (modelfleet gateway run)?") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    click.echo(json.dumps(state, indent=2, sort_keys=True))
