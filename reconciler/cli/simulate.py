"""``modelfleet simulate``: rehearse a rollout with N simulated devices running the real agent loop.

The devices get what real ones get from their agent config: Git credentials (``--username`` with
``--password-file``, ``--ca-file``), TUF credentials, status repositories (``--status-repo``, sharded by a hash
of the device id) and status keys (``--status-keys``). ``--write-inventory DIR`` writes the Device manifests of
the simulated devices instead of running them. The run prints one report line per ``--report-every`` and ends
after ``--duration``, or as soon as every ``--until`` condition holds; it then waits for the devices' last
status pushes and prints a final line (``"final": true``) that says how many devices' newest status commit the
server holds (``statusOnServer``) and, with ``--per-device``, what each device did (docs/scale.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from reconciler.cli.console import Progress
from reconciler.cli.options import as_yaml, format_option, repo_option, shared_repo
from reconciler.core.credentials import Credentials
from reconciler.core.errors import UserError
from reconciler.core.redact import redact_url, split_userinfo
from reconciler.core.units import parse_duration

DEFAULT_DURATION = "60s"
DEFAULT_UNTIL_LIMIT = "1h"  # --duration when --until is given without one


def _duration(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None


def _no_password(option: str, url: str) -> str:
    if url.startswith(("http://", "https://")) and split_userinfo(url)[2] is not None:
        raise UserError(f"{option} {redact_url(url)} embeds a password or token: give --username with "
                        "--password-file (a device never has one in a URL: its agent config refuses it, and a "
                        "URL's password makes every status push a `git push`)", exit_code=2)
    return url


def _credentials(option: str, username: str | None, password_file: Path | None, token_file: Path | None,
                 ca_file: Path | None) -> Credentials | None:
    if bool(username) != bool(password_file):
        raise UserError(f"--{option}username and --{option}password-file go together", exit_code=2)
    if password_file and token_file:
        raise UserError(f"use either --{option}password-file or --{option}token-file", exit_code=2)
    creds = Credentials(username=username, password_file=password_file, bearer_token_file=token_file,
                        ca_file=ca_file)
    return None if creds.empty else creds


def _human(line: dict[str, Any]) -> str:
    vs = ", ".join(f"{v}: {c}" for v, c in line["versions"].items())
    text = (f"t={line['t']:>7.1f}s  {vs}  (git polls {line['requests']['gitPolls']}, tuf downloads "
            f"{line['requests']['tufDownloads']}, status pushes {line['statusPushes']}, {line['rssMB']:.0f} MB)")
    if line.get("final"):
        on = line.get("statusOnServer") or {}
        text += (f"\nend: {line['until']['reason']}; status commits made {line['statusCommits']}, pushed "
                 f"{line['statusPushes']}; newest status on the server for {on.get('onServer', 0)} of "
                 f"{line['devices']} devices (behind {on.get('behind', 0)}, none yet {on.get('none', 0)}, "
                 f"unreachable {on.get('unreachable', 0)})")
    return text


@click.command("simulate")
@click.option("--devices", "n", type=click.IntRange(1, 20_000), required=True, help="Simulated devices.")
@repo_option(remote=True)
@click.option("--tuf", "tuf_url", metavar="URL", help="TUF repository base URL (default: the Fleet's tuf URLs).")
@click.option("--trusted-root", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The TUF root metadata every device is provisioned with (required to run).")
@click.option("--username", help="Git HTTP(S) user name of the devices (with --password-file), for polls and status "
                                 "pushes, as `source.credentials` in an agent config.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the devices' Git HTTP(S) password or token (mode 600).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA bundle the devices trust for HTTPS (Git and TUF).")
@click.option("--tuf-username", help="TUF HTTP user name (with --tuf-password-file).")
@click.option("--tuf-password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the TUF server's Basic auth password (mode 600).")
@click.option("--tuf-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding a bearer token for the TUF server (mode 600).")
@click.option("--status-repo", "status_repos", multiple=True, metavar="PATH|URL",
              help="A repository the devices push their status to (`status.url`); repeat it for the shards of a "
                   "sharded status repository (a device's shard: a hash of its id; with --gateway, its site's: "
                   "site k uses the k-th, modulo their number; `rollout status --status-repo` reads them all). "
                   "[default: the fleet repository]")
@click.option("--gateway", "gateways", multiple=True, metavar="URL",
              help="A site gateway (`modelfleet gateway run`); repeat for S sites: the devices are cut into S sites "
                   "of contiguous numbers, each asks its site's gateway first and --repo, --status-repo and --tuf "
                   "as fallback (`gateway.url` in the agent config, docs/gateway.md).")
@click.option("--poll-interval", default="10s", show_default=True, help="How often each device polls the repository.")
@click.option("--heartbeat-interval", default=None, help="Override the Fleet's heartbeat interval.")
@click.option("--status-push-spread", default="0s", show_default=True,
              help="The devices' status.pushSpread: a new status waits a random time up to this "
                   "before it is pushed.")
@click.option("--offline-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of devices that never reach the network.")
@click.option("--fail-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of devices whose health check fails every update.")
@click.option("--canaries", type=click.IntRange(0), default=0, show_default=True,
              help="The first K devices carry ring=canary (the others ring=stable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label every device carries.")
@click.option("--until", "until", multiple=True, metavar="CONDITION",
              help="End as soon as this holds: converged | serving:VERSION[:PERCENT] | reported:VERSION[:PERCENT] "
                   "(percent of all simulated devices, default 100); repeat for all of several. Exit 3 if "
                   "--duration passes first.")
@click.option("--duration", default=None,
              help=f"How long the simulation runs; with --until, the longest it waits. [default: {DEFAULT_DURATION}; "
                   f"{DEFAULT_UNTIL_LIMIT} with --until]")
@click.option("--report-every", default="1s", show_default=True, help="Time between two report lines.")
@click.option("--per-device", is_flag=True,
              help="Add each device's record to the final line: poll count and times, the heads its polls saw, "
                   "the versions it served from when, status commits made and pushed.")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads running reconcile passes (per process).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes the devices are split over (one core each: the agents' Python work holds one "
                   "process to one core).")
@click.option("--status-keys", type=click.Path(file_okay=False, path_type=Path),
              help="Directory of status signing keys, one file per device id (as `agent keygen --output DIR/<id>` "
                   "makes them); list their public keys in the devices' manifests (--write-inventory) so gates "
                   "count the devices.")
@click.option("--write-inventory", "inventory_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the Device manifest of each simulated device into this directory (the fleet's devices/), "
                   "with its status key when --status-keys is given (missing keys are made there), and exit.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Devices' state directories (default: a temporary directory, removed at the end).")
@format_option("json", "table", default="json", aliases={"text": "table"},
               help="json: one line per report (JSON lines); yaml: one document per report; table: for people.")
def simulate(n: int, repo: str | None, tuf_url: str | None, trusted_root: Path | None, username: str | None,
             password_file: Path | None, ca_file: Path | None, tuf_username: str | None,
             tuf_password_file: Path | None, tuf_token_file: Path | None, status_repos: tuple[str, ...],
             gateways: tuple[str, ...], poll_interval: str, heartbeat_interval: str | None, status_push_spread: str, offline_share: float,
             fail_share: float, canaries: int, labels: tuple[str, ...], until: tuple[str, ...], duration: str | None,
             report_every: str, per_device: bool, workers: int, processes: int, status_keys: Path | None,
             inventory_dir: Path | None, work_dir: Path | None, fmt: str) -> None:
    """Run N device agents (in one process, or --processes); print convergence over time (JSON lines).

    The devices poll and push to --repo (a URL git understands, a bare repository, or a clone's origin).
    """
    from reconciler.simulate.until import parse_until

    label_map = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--label {item!r}: expected KEY=VALUE")
        label_map[key] = value
    if inventory_dir is not None:
        _write_inventory(inventory_dir, n, canaries, label_map, status_keys)
        return
    if trusted_root is None:
        raise UserError("--trusted-root is required to run the simulation (only --write-inventory goes without)",
                        exit_code=2)
    if status_keys is not None and not status_keys.is_dir():
        raise UserError(f"--status-keys {status_keys}: not a directory (make the keys with --write-inventory)",
                        exit_code=2)
    try:
        conditions = [parse_until(u) for u in until]
    except ValueError as exc:
        raise UserError(f"--until {exc}", exit_code=2) from None
    run_for = _duration("--duration", duration or (DEFAULT_UNTIL_LIMIT if conditions else DEFAULT_DURATION))
    every = _duration("--report-every", report_every)
    from reconciler.simulate.fleet import SimSettings

    source = _no_password("--repo", shared_repo(repo))
    settings = SimSettings(
        devices=n, source_url=source, trusted_root=trusted_root.resolve(), tuf_url=tuf_url,
        poll_interval=_duration("--poll-interval", poll_interval),
        heartbeat_interval=_duration("--heartbeat-interval", heartbeat_interval) if heartbeat_interval else None,
        status_push_spread=_duration("--status-push-spread", status_push_spread),
        offline_share=offline_share, fail_share=fail_share, canaries=canaries, labels=label_map, workers=workers,
        status_keys=status_keys.resolve() if status_keys else None,
        credentials=_credentials("", username, password_file, None, ca_file),
        tuf_credentials=_credentials("tuf-", tuf_username, tuf_password_file, tuf_token_file, ca_file),
        status_urls=[_no_password("--status-repo", shared_repo(u, "--status-repo")) for u in status_repos],
        gateways=[_no_password("--gateway", g).rstrip("/") for g in gateways])
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="modelfleet-sim-"))
        work_dir = tmp
    try:
        met = _run(settings, work_dir, conditions, run_for, every, processes, per_device, fmt)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if conditions and not met:
        raise UserError(f"--until {' and '.join(map(str, conditions))} did not hold within {run_for:g}s",
                        exit_code=3)


def _write_inventory(directory: Path, n: int, canaries: int, labels: dict[str, str], keys: Path | None) -> None:
    from reconciler.simulate.inventory import device_manifests, write_inventory

    if keys is not None:
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        manifests = device_manifests(n, canaries=canaries, labels=labels, keys=keys.resolve() if keys else None)
        written = write_inventory(directory, manifests)
    except OSError as exc:
        raise UserError(f"cannot write the inventory: {exc}") from None
    click.echo(f"{len(manifests)} Device manifests in {directory} ({written} written)"
               + (f"; status keys in {keys}" if keys else ""), err=True)


def _emit(line: dict[str, Any], fmt: str) -> None:
    if fmt in ("json", "yaml"):
        text = json.dumps(line, sort_keys=True)
        click.echo(("---\n" + as_yaml(text)) if fmt == "yaml" else text, nl=fmt == "json")
    else:
        click.echo(_human(line))


def _run(settings: Any, work_dir: Path, conditions: list[Any], run_for: float, every: float, processes: int,
         per_device: bool, fmt: str) -> bool:
    """Run, print the lines and the final one; whether the --until conditions held."""
    from reconciler.simulate.fleet import Simulation, status_on_server
    from reconciler.simulate.shards import FLUSH_SECONDS, ShardDied, ShardedFleet
    from reconciler.simulate.until import all_hold

    sim: Simulation | ShardedFleet
    try:
        if processes > 1:
            sim = ShardedFleet(settings, work_dir, processes, report_every=min(every, 1.0), per_device=per_device)
        else:
            sim = Simulation.create(settings, work_dir)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except ShardDied as exc:
        raise UserError(f"the simulation could not start: {exc}") from None
    met = False
    final: dict[str, Any] | None = None
    stop = threading.Event()
    ctrl_c: list[bool] = []

    def on_sigint(_sig: int, _frame: Any) -> None:
        # Ctrl-C ends the run between two reads of the simulator processes' pipes, never inside one (a
        # KeyboardInterrupt in the middle of a message left the rest unread and the final read waiting forever);
        # a second Ctrl-C interrupts at once.
        if ctrl_c:
            raise KeyboardInterrupt
        ctrl_c.append(True)
        stop.set()

    t_start = time.monotonic()
    interrupted = False
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        progress = Progress("simulating", run_for, "s")
        if isinstance(sim, Simulation):
            sim.boot()
        try:
            for line in sim.run(run_for, report_every=every, stop=stop):
                progress.close()
                if not met and all_hold(conditions, line, status=settings.status):
                    met = True
                    stop.set()  # the run yields one more line and returns
                _emit(line, fmt)
                progress.update(float(line["t"]), f"simulating {settings.devices} devices")
        except KeyboardInterrupt:  # a second Ctrl-C: the devices' last pushes and the final line, then exit 130
            ctrl_c.append(True)
        interrupted = bool(ctrl_c)
        progress.close()
        if isinstance(sim, Simulation):
            sim.flush_status(FLUSH_SECONDS)  # the shards flush their own when they stop
            final = {**sim.report(), "tips": sim.status_tips()}
            if per_device:
                final["perDevice"] = sim.per_device()
    except ShardDied as exc:
        raise UserError(f"the simulation stopped: {exc}") from None
    finally:
        closed = sim.close()
        if main_thread:
            signal.signal(signal.SIGINT, previous)
        if isinstance(sim, ShardedFleet):
            final = closed
    if final is None:
        raise UserError("a simulator process did not send its last report")
    tips = final.pop("tips", {})
    reason = ("interrupted" if interrupted and not met else
              f"{' and '.join(map(str, conditions))} held after {time.monotonic() - t_start:.1f}s" if met
              else f"--duration {run_for:g}s passed" + (" before --until held" if conditions else ""))
    final.update(final=True, until={"conditions": [str(c) for c in conditions], "met": met, "reason": reason},
                 statusOnServer=status_on_server(tips, credentials=settings.credentials) if settings.status else None)
    _emit(final, fmt)
    if interrupted:
        raise KeyboardInterrupt
    return met
