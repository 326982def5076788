"""``modelfleet agent run|once|status|reconcile`` — the device agent's command line.

``run`` is the daemon (systemd ``Type=notify``); ``once`` runs a single pass and exits non-zero when the device is
not converged; ``status`` prints the local status the agent wrote (``<stateDir>/status.json``); ``reconcile``
sends SIGHUP to the running agent (pid file in the state dir) for an immediate pass.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import click

from reconciler.agent.config import AgentConfig, load_agent_config
from reconciler.cli.options import deprecated_alias, emit_json_text, format_option
from reconciler.core.errors import UserError

DEFAULT_CONFIG = "/etc/modelfleet/agent.yaml"

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("MODELFLEET_AGENT_CONFIG", DEFAULT_CONFIG), show_default=DEFAULT_CONFIG,
    help="Agent config file (env MODELFLEET_AGENT_CONFIG).",
)


@click.group()
def agent() -> None:
    """The device agent: serve the last good models and reconcile the fleet's desired state."""


def _setup(config_path: Path, log_format: str | None = None) -> AgentConfig:
    from reconciler.core.logs import setup_logging

    cfg = load_agent_config(config_path)
    setup_logging(log_format or cfg.log_format, cfg.log_level)
    return cfg


@agent.command("run")
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Override the config's log format.")
def run_cmd(config_path: Path, log_format: str | None) -> None:
    """Run the agent until SIGTERM (systemd Type=notify)."""
    from reconciler.agent.loop import Agent

    cfg = _setup(config_path, log_format)
    Agent(cfg).run()


@agent.command("keygen")
@config_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the key here (default: status.signingKey, else <stateDir>/identity/status_ed25519); with "
                   "--output the agent config is not needed.")
@click.option("--comment", help="Comment after the public key (default: <deviceId>@modelfleet).")
@click.option("--show", is_flag=True, help="Print the public key of the existing key; make none.")
@click.pass_context
def keygen_cmd(ctx: click.Context, config_path: Path, output: Path | None, comment: str | None, show: bool) -> None:
    """Make the device's status signing key (Ed25519, 0600) and print its public key.

    Put the printed line into the device's manifest (spec.statusKeys) by pull request: operator tools count
    only status commits signed by a key listed there. To rotate, make a key with --output at a new path, list
    both public keys, then point status.signingKey at the new one (docs/operations.md).
    """
    from reconciler.identity import keys

    from_config = output is None or ctx.get_parameter_source("config_path") != click.core.ParameterSource.DEFAULT
    cfg = load_agent_config(config_path) if from_config else None
    path = output or (cfg.status_signing_key or cfg.default_status_key if cfg is not None else None)
    assert path is not None
    try:
        key = keys.load(path) if show else keys.generate(path)
    except keys.CredentialError as exc:
        raise UserError(str(exc)) from None
    label = comment if comment is not None else f"{cfg.device_id}@modelfleet" if cfg is not None else ""
    click.echo(keys.public_line(key, label))
    if not show:
        where = f"devices/{cfg.device_id}.yaml" if cfg is not None else "the device's manifest"
        click.echo(f"wrote {path} (0600); add the line above to {where} under spec.statusKeys", err=True)


@agent.command("once")
@config_option
@format_option("table")
@deprecated_alias("--json", "fmt", "--format json", value="json")
def once_cmd(config_path: Path, fmt: str) -> None:
    """Run one reconcile pass; exit 1 if the device is not converged."""
    from reconciler.agent.loop import Agent

    cfg = _setup(config_path)
    a = Agent(cfg)
    try:
        a.boot()
        res = a.reconcile_once(force=True)
        if a.c.status_writer is not None:
            a.c.status_writer.flush(cfg.source_timeout)
    finally:
        a.close()
    if fmt in ("json", "yaml"):
        emit_json_text(json.dumps({"commit": res.commit, "converged": res.converged, "failedStep": res.failed_step,
                                   "message": res.message, "endpoints": res.endpoints}, indent=1), fmt)
    else:
        click.echo(_table(res.endpoints))
        state = "converged" if res.converged else "NOT converged"
        click.echo(f"commit {res.commit or '-'}: {state}" + (f" ({res.failed_step}: {res.message})"
                                                            if res.failed_step else ""))
    if not res.converged:
        # UserError, not click's Exit: the CLI runs click with standalone_mode=False, which swallows Exit codes.
        raise UserError("device not converged" + (f": step {res.failed_step} failed" if res.failed_step else ""))


def _precision(e: dict[str, Any]) -> str:
    """The PRECISION cell: the declared precision, ``fp16->bf16`` when the runtime computes in another one."""
    declared, effective = e.get("precision"), e.get("effectivePrecision")
    if declared and effective and effective != declared:
        return f"{declared}->{effective}"
    return str(declared or "-")


def _table(endpoints: list[dict[str, Any]]) -> str:
    rows = [("ENDPOINT", "STATE", "VERSION", "DESIRED", "PREVIOUS", "RUNTIME", "PRECISION", "MESSAGE")]
    for e in endpoints:
        rows.append((e["name"], e["state"], e.get("version") or "-", e.get("desiredVersion") or "-",
                     e.get("previousVersion") or "-", e.get("runtime") or "-", _precision(e),
                     (e.get("message") or "")[:80]))
    if len(rows) == 1:
        return "(no endpoints)"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows).rstrip()


def _running_pid(cfg: AgentConfig) -> int | None:
    try:
        pid = int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


@agent.command("status")
@config_option
@format_option("table", help="table for people; json/yaml: the DeviceStatus document.")
@deprecated_alias("--json", "fmt", "--format json", value="json")
def status_cmd(config_path: Path, fmt: str) -> None:
    """Print the device's local status."""
    cfg = load_agent_config(config_path)
    try:
        doc = json.loads(cfg.status_file.read_text())
    except FileNotFoundError:
        raise UserError(f"no status yet in {cfg.state_dir} (has the agent run?)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {cfg.status_file}: {exc}") from None
    if fmt in ("json", "yaml"):
        emit_json_text(json.dumps(doc, indent=1), fmt)
        return
    st = doc.get("status", {})
    pid = _running_pid(cfg)
    click.echo(f"device      {doc.get('metadata', {}).get('name', '?')}  "
               f"(agent {'running, pid ' + str(pid) if pid else 'not running'})")
    click.echo(f"applied     {st.get('appliedCommit') or '-'}")
    click.echo(f"attempted   {st.get('attemptedCommit') or '-'}")
    click.echo(f"heartbeat   {st.get('heartbeat', '-')}")
    rep = st.get("reporting")
    if isinstance(rep, dict):
        failed = rep.get("failedPushes") or 0
        click.echo(f"status push last landed {rep.get('lastPushTime') or 'never'}"
                   + (f"; {failed} failed push(es) since: {str(rep.get('lastError', ''))[:160]}" if failed else ""))
    click.echo("")
    click.echo(_table(st.get("endpoints") or []))
    click.echo("")
    for c in st.get("conditions") or []:
        msg = c.get("message", "")
        click.echo(f"{c['type']:<16}{c['status']:<8}{c.get('reason', ''):<23} {msg[:100]}")
    for f in st.get("failures") or []:
        click.echo(f"held back   {f.get('endpoint')} {f.get('version')} ({f.get('reason', '')[:60]}) "
                   f"until {f.get('retryAfter')}")


@agent.command("reconcile")
@config_option
def reconcile_cmd(config_path: Path) -> None:
    """Ask the running agent for an immediate pass (SIGHUP)."""
    cfg = load_agent_config(config_path)
    pid = _running_pid(cfg)
    if pid is None:
        raise UserError(f"no agent running on state dir {cfg.state_dir}")
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise UserError(f"not allowed to signal the agent (pid {pid}); run as its user or root") from None
    click.echo(f"reconcile requested (pid {pid})")
