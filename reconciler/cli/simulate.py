"""``modelfleet simulate``: rehearse a rollout with N simulated devices running the real agent loop."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import click

from reconciler.cli.console import Progress
from reconciler.cli.options import as_yaml, format_option, repo_option, shared_repo
from reconciler.core.errors import UserError
from reconciler.core.units import parse_duration


def _duration(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None


@click.command("simulate")
@click.option("--devices", "n", type=click.IntRange(1, 20_000), required=True, help="Simulated devices.")
@repo_option(remote=True)
@click.option("--tuf", "tuf_url", metavar="URL", help="TUF repository base URL (default: the Fleet's tuf URLs).")
@click.option("--trusted-root", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The TUF root metadata every device is provisioned with.")
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
@click.option("--duration", default="60s", show_default=True, help="How long the simulation runs.")
@click.option("--report-every", default="1s", show_default=True, help="Time between two report lines.")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads running reconcile passes (per process).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes the devices are split over (one core each: the agents' Python work holds one "
                   "process to one core).")
@click.option("--status-keys", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of status signing keys, one file per device id (as `agent keygen --output DIR/<id>` "
                   "makes them); list their public keys in the devices' manifests so gates count the devices.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Devices' state directories (default: a temporary directory, removed at the end).")
@format_option("json", "table", default="json", aliases={"text": "table"},
               help="json: one line per report (JSON lines); yaml: one document per report; table: for people.")
def simulate(n: int, repo: str | None, tuf_url: str | None, trusted_root: Path, poll_interval: str,
             heartbeat_interval: str | None, status_push_spread: str, offline_share: float, fail_share: float,
             canaries: int, labels: tuple[str, ...], duration: str, report_every: str, workers: int,
             processes: int, status_keys: Path | None, work_dir: Path | None, fmt: str) -> None:
    """Run N device agents (in one process, or --processes); print convergence over time (JSON lines).

    The devices poll and push to --repo (a URL git understands, a bare repository, or a clone's origin).
    """
    from reconciler.simulate.fleet import SimSettings, Simulation
    from reconciler.simulate.shards import ShardDied, ShardedFleet

    label_map = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--label {item!r}: expected KEY=VALUE")
        label_map[key] = value
    run_for, every = _duration("--duration", duration), _duration("--report-every", report_every)
    settings = SimSettings(
        devices=n, source_url=shared_repo(repo), trusted_root=trusted_root.resolve(), tuf_url=tuf_url,
        poll_interval=_duration("--poll-interval", poll_interval),
        heartbeat_interval=_duration("--heartbeat-interval", heartbeat_interval) if heartbeat_interval else None,
        status_push_spread=_duration("--status-push-spread", status_push_spread),
        offline_share=offline_share, fail_share=fail_share, canaries=canaries, labels=label_map, workers=workers,
        status_keys=status_keys.resolve() if status_keys else None)
    logging.getLogger("reconciler").setLevel(logging.ERROR)
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="modelfleet-sim-"))
        work_dir = tmp
    try:
        sim: Simulation | ShardedFleet
        try:
            if processes > 1:
                sim = ShardedFleet(settings, work_dir, processes, report_every=min(every, 1.0))
            else:
                sim = Simulation.create(settings, work_dir)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except ShardDied as exc:
            raise UserError(f"the simulation could not start: {exc}") from None
        try:
            progress = Progress("simulating", run_for, "s")
            if isinstance(sim, Simulation):
                sim.boot()
            for line in sim.run(run_for, report_every=every):
                progress.close()
                if fmt in ("json", "yaml"):
                    text = json.dumps(line, sort_keys=True)
                    click.echo(("---\n" + as_yaml(text)) if fmt == "yaml" else text, nl=fmt == "json")
                else:
                    vs = ", ".join(f"{v}: {c}" for v, c in line["versions"].items())
                    click.echo(f"t={line['t']:>7.1f}s  {vs}  (git polls {line['requests']['gitPolls']}, "
                               f"tuf downloads {line['requests']['tufDownloads']}, status pushes "
                               f"{line['statusPushes']})")
                progress.update(float(line["t"]), f"simulating {n} devices")
            progress.close()
            if isinstance(sim, Simulation):
                sim.flush_status(10.0)  # the shards flush their own when they stop
        except ShardDied as exc:
            raise UserError(f"the simulation stopped: {exc}") from None
        finally:
            sim.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
