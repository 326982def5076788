"""``modelfleet data …`` — captured data on the device (``status``, ``export``, ``purge``) and on the training
side (``keygen`` for a campaign's key pair, ``open`` to verify and decrypt batches into ``.npz``).

The device commands read the agent config for the state dir and never decrypt anything (the device cannot);
``purge`` serves erasure requests and reports what it removed. ``open`` rejects a tampered, truncated or forged
batch (anyone with the public key can seal one: a path as its id, compressed or oversized arrays) with one error
line, writes only ``<id>.npz``/``<id>.json`` directly inside ``--out``, and still opens the others (exit 1 if any
failed).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import click

from reconciler.cli.agent import config_option
from reconciler.cli.options import deprecated_alias, dry_run_option, emit, format_option
from reconciler.core.errors import UserError


@click.group()
def data() -> None:
    """Data captured for retraining (see docs/privacy.md)."""


def _spool(config_path: Path) -> tuple[Any, Any]:
    from reconciler.agent.config import load_agent_config
    from reconciler.capture.spool import Spool

    cfg = load_agent_config(config_path)
    return cfg, Spool(cfg.state_dir)


def _parse_before(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--before {text!r}: expected a date or time like 2026-11-01 or 2026-11-01T12:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _selected(spool: Any, before: float | None, endpoint: str | None) -> list[Any]:
    from reconciler.capture.policy import select_erasure

    return select_erasure(spool.stored(), before=before, endpoint=endpoint)


@data.command("status")
@config_option
@format_option("table")
@deprecated_alias("--json", "fmt", "--format json", value="json")
def status_cmd(config_path: Path, fmt: str) -> None:
    """Sealed batches waiting on this device, per endpoint, and the audit log's totals."""
    cfg, spool = _spool(config_path)
    per: dict[str, dict[str, Any]] = {}
    for _, h in spool.list():
        e = per.setdefault(h["endpoint"], {"batches": 0, "records": 0, "bytes": 0, "oldest": h["start"],
                                           "newest": h["end"], "campaigns": set()})
        e["batches"] += 1
        e["records"] += h["records"]
        e["bytes"] += h["size"]
        e["oldest"], e["newest"] = min(e["oldest"], h["start"]), max(e["newest"], h["end"])
        e["campaigns"].add(h.get("campaign", ""))
    totals: dict[str, int] = {}
    for ev in spool.audit.read():
        totals[ev["event"]] = totals.get(ev["event"], 0) + 1
        if ev["event"] == "sealed":
            totals["records"] = totals.get("records", 0) + int(ev.get("records", 0))
    doc = {"stateDir": str(spool.root), "endpoints": {k: dict(v, oldest=_iso(v["oldest"]), newest=_iso(v["newest"]),
                                                               campaigns=sorted(v["campaigns"]))
                                                      for k, v in sorted(per.items())},
           "audit": {"batchesSealed": totals.get("sealed", 0), "recordsSealed": totals.get("records", 0),
                     "batchesUploaded": totals.get("uploaded", 0), "batchesPurged": totals.get("purged", 0),
                     "batchesExported": totals.get("exported", 0), "uploadFailures": totals.get("upload-failed", 0)}}
    if fmt in ("json", "yaml"):
        emit(doc, fmt)
        return
    if not per:
        click.echo(f"no captured data waiting in {spool.root}")
    for name, e in doc["endpoints"].items():
        click.echo(f"{name}: {e['batches']} batch(es), {e['records']} record(s), {_size(e['bytes'])}, "
                   f"{e['oldest']} .. {e['newest']}, campaign {', '.join(e['campaigns'])}")
    a = doc["audit"]
    click.echo(f"audit: {a['batchesSealed']} sealed ({a['recordsSealed']} records), {a['batchesUploaded']} uploaded, "
               f"{a['batchesExported']} exported, {a['batchesPurged']} purged, {a['uploadFailures']} upload failures")


@data.command("export")
@config_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to copy the sealed batches to (removable media).")
@click.option("--endpoint", help="Only this endpoint's batches.")
@click.option("--before", help="Only batches whose first record is before this date/time (UTC).")
@click.option("--delete", is_flag=True, help="Delete each batch from the device once its copy is on disk.")
def export_cmd(config_path: Path, out_dir: Path, endpoint: str | None, before: str | None, delete: bool) -> None:
    """Copy sealed batches (still encrypted) off the device."""
    from reconciler.capture.upload import export_batch

    _, spool = _spool(config_path)
    chosen = _selected(spool, _parse_before(before), endpoint)
    total = 0
    for b in chosen:
        try:
            export_batch(spool.path_of(b.id), out_dir)
        except FileNotFoundError:
            continue  # uploaded or purged meanwhile
        except OSError as exc:
            raise UserError(f"{out_dir}: cannot write {b.id}: {exc.strerror or exc}") from None
        spool.audit.write("exported", batch=b.id, endpoint=b.endpoint, bytes=b.size, destination="directory")
        if delete:
            spool.delete([b], "purged", "exported")
        total += b.size
        click.echo(f"exported {b.id} ({b.endpoint}, {_size(b.size)})")
    click.echo(f"{len(chosen)} batch(es), {_size(total)} exported to {out_dir}" + (" and deleted here" if delete else ""))


@data.command("purge")
@config_option
@click.option("--endpoint", help="Only this endpoint's batches.")
@click.option("--before", help="Only batches whose first record is before this date/time (UTC).")
@dry_run_option("List the batches that would be purged; delete nothing.")
def purge_cmd(config_path: Path, endpoint: str | None, before: str | None, dry_run: bool) -> None:
    """Delete captured batches now (erasure request); reports what was removed."""
    cfg, spool = _spool(config_path)
    chosen = _selected(spool, _parse_before(before), endpoint)
    if dry_run:
        for b in chosen:
            click.echo(f"would purge {b.id} ({b.endpoint}, {_iso(b.created)}, {_size(b.size)})")
        click.echo(f"dry run: {len(chosen)} batch(es), {_size(sum(b.size for b in chosen))} would be purged; "
                   "nothing was deleted")
        return
    try:
        removed = set(spool.delete(chosen, "purged", "erasure-request"))
    except OSError as exc:
        raise UserError(f"{spool.batches_dir}: cannot delete: {exc.strerror or exc}") from None
    for b in chosen:
        if b.id in removed:
            click.echo(f"purged {b.id} ({b.endpoint}, {_iso(b.created)}, {_size(b.size)})")
    total = sum(b.size for b in chosen if b.id in removed)
    click.echo(f"purged {len(removed)} batch(es), {_size(total)}")
    if cfg.pid_file.exists():
        click.echo("note: a running agent seals the records it still buffers within the policy's batch.interval; "
                   "run purge again after that to cover them")


@data.command("keygen")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the campaign's PRIVATE key (mode 0600; keep it off devices and out of Git).")
def keygen_cmd(out_path: Path) -> None:
    """Make a capture campaign's key pair; prints the public key for the Deployment's capture.recipient."""
    from reconciler.capture.batch import generate_keypair

    private, public = generate_keypair()
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{out_path}: already exists (refusing to overwrite a key)") from None
    except OSError as exc:
        raise UserError(f"{out_path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(private).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    click.echo(f"recipient: \"{base64.b64encode(public).decode()}\"")


def _load_private_key(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read key: {exc.strerror or exc}") from None
    if len(raw) == 32:
        return raw
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise UserError(f"{path}: not a capture private key (base64 of 32 bytes, from `modelfleet data keygen`)")
    return key


def _batch_files(paths: tuple[Path, ...]) -> list[Path]:
    from reconciler.capture.batch import SUFFIX

    out: list[Path] = []
    for p in paths:
        out.extend(sorted(p.rglob(f"*{SUFFIX}")) if p.is_dir() else [p])
    return out


def _shown(text: str) -> str:
    """A sealed string for the terminal: anyone can seal one, so no control sequences and no pages of it."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 100 else text[:97] + "..."


def _open_one(path: Path, key: bytes, out_fd: int, out_dir: Path, seen: dict[str, Path]) -> dict[str, Any]:
    """Open one batch into ``out_dir``; any problem is a BatchError naming the batch file."""
    from reconciler.capture.batch import BatchError, open_batch, read_batch_file, write_npz
    from reconciler.core.fsutil import atomic_write_in, check_plain_target

    try:
        opened = open_batch(read_batch_file(path), key, name=str(path))
    except OSError as exc:
        raise BatchError(f"{path}: {exc.strerror or exc}") from None
    m = opened.meta
    if m["id"] in seen:
        raise BatchError(f"{path}: batch id {m['id']} was already opened from {seen[m['id']]} (not overwritten)")
    names = (f"{m['id']}.npz", f"{m['id']}.json")
    text = (json.dumps(m, indent=1, sort_keys=True) + "\n").encode()
    try:
        for n in names:
            check_plain_target(out_fd, n)
        atomic_write_in(out_fd, names[0], lambda fh: write_npz(fh, opened.arrays))
        atomic_write_in(out_fd, names[1], lambda fh: fh.write(text))
    except OSError as exc:
        where = out_dir / exc.filename if isinstance(exc.filename, str) else out_dir
        raise BatchError(f"{path}: cannot write {where}: {exc.strerror or exc}") from None
    seen[m["id"]] = path
    return m


@data.command("open")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The campaign's private key file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for <batch id>.npz and <batch id>.json.")
@click.argument("batches", nargs=-1, required=True, type=click.Path(path_type=Path))
def open_cmd(key_path: Path, out_dir: Path, batches: tuple[Path, ...]) -> None:
    """Verify and decrypt batches into .npz (arrays keyed by input/output name) plus metadata JSON."""
    from reconciler.capture.batch import BatchError

    key = _load_private_key(key_path)
    files = _batch_files(batches)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write there: {exc.strerror or exc}") from None
    seen: dict[str, Path] = {}
    failed = 0
    try:
        for path in files:
            try:
                m = _open_one(path, key, out_fd, out_dir, seen)
            except BatchError as exc:
                click.echo(f"error: {exc}", err=True)
                failed += 1
                continue
            except Exception as exc:  # one hostile batch fails alone, whatever it breaks
                text = " ".join(str(exc).split())[:200]
                click.echo(f"error: {path}: cannot open: {type(exc).__name__}: {text}", err=True)
                failed += 1
                continue
            click.echo(f"opened {m['id']}: {_shown(m['device'])} {_shown(m['endpoint'])} {_shown(m['model'])} "
                       f"{_shown(m['modelVersion'])}, {m['records']} record(s), {_iso(m['start'])} .. {_iso(m['end'])}")
    finally:
        os.close(out_fd)
    click.echo(f"{len(files) - failed} of {len(files)} batch(es) opened into {out_dir}")
    if failed:
        raise SystemExit(1)
