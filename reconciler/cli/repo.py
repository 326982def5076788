"""``modelfleet repo …`` (publisher) and ``modelfleet tuf-client`` (TUF conformance client-under-test).

``repo`` wraps :mod:`reconciler.distribution.tufrepo`; ``tuf-client`` implements the tuf-conformance CLI protocol
(``init`` / ``refresh`` / ``download``) on the same :class:`~reconciler.distribution.tufclient.TufClient` and
:class:`~reconciler.distribution.store.ModelStore` the agent uses: targets land in a store under the metadata dir and are
then copied to ``TARGET_DIR/<url-quoted target path>``. Every failure exits 1 with ``error: <reason>: …``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from reconciler.cli.console import Progress
from reconciler.cli.options import dry_run_option, emit, format_option
from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_bytes
from reconciler.core.units import format_duration, parse_duration
from reconciler.distribution import modelcrypto, tufrepo


def _duration(text: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _role_values(values: tuple[str, ...], what: str, conv):  # type: ignore[no-untyped-def]
    out = {}
    for item in values:
        role, sep, val = item.partition("=")
        if not sep or role not in tufrepo.TOP_LEVEL:
            raise UserError(f"bad --{what} {item!r}: use ROLE=VALUE with ROLE one of {', '.join(tufrepo.TOP_LEVEL)}")
        try:
            out[role] = conv(val)
        except ValueError:
            raise UserError(f"bad --{what} value in {item!r}") from None
    return out


def _keys_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--keys", "keys", multiple=True, type=click.Path(path_type=Path), required=True,
        help="Directory holding signing keys (repeatable: e.g. a team key dir and the online key dir).",
    )(f)


_dry_run = dry_run_option("Sign in a scratch copy of the metadata and show what would change; write nothing.")


@contextlib.contextmanager
def _scratch(repo_dir: Path, dry_run: bool) -> Iterator[Path]:
    """``repo_dir`` itself, or for a dry run a throw-away copy of its metadata (and settings): the operation runs
    for real there (keys, delegations and thresholds all checked) and the metadata it would write is listed."""
    if not dry_run:
        yield repo_dir
        return
    with tempfile.TemporaryDirectory(prefix="modelfleet-dry-run-") as tmp:
        work = Path(tmp) / "repo"
        meta = repo_dir / "metadata"
        if not (meta / "root.json").is_file():
            raise UserError(f"{repo_dir} is not a TUF repository (no metadata/root.json); run `modelfleet repo init`")
        shutil.copytree(meta, work / "metadata")
        if (repo_dir / tufrepo.CONFIG_NAME).is_file():
            shutil.copy2(repo_dir / tufrepo.CONFIG_NAME, work / tufrepo.CONFIG_NAME)
        yield work
        changed = sorted(p.name for p in (work / "metadata").iterdir()
                         if not (meta / p.name).is_file() or (meta / p.name).read_bytes() != p.read_bytes())
        click.echo(f"dry run: would write metadata/{{{','.join(changed)}}} in {repo_dir}; nothing was written",
                   err=True)


def _scratch_keys(dirs: list[Path], work: Path, dry_run: bool) -> list[Path]:
    """The key directories, or for a dry run copies of them next to the scratch metadata: an operation that
    writes a new key or retires an old one (delegate, rotate-key) does so there, and the copies go with it."""
    if not dry_run:
        return dirs
    out = []
    for i, d in enumerate(dirs):
        copy = work.parent / f"keys-{i}"
        if d.is_dir():
            shutil.copytree(d, copy)
        out.append(copy)
    return out


@click.group("repo")
def repo() -> None:
    """Publish models into a signed TUF repository (a static directory for any web server)."""


@repo.command("init")
@click.argument("repo_dir", type=click.Path(path_type=Path))
@click.option("--keys", "keys", type=click.Path(path_type=Path), required=True,
              help="Directory for the online keys (targets, snapshot, timestamp).")
@click.option("--root-keys", type=click.Path(path_type=Path),
              help="Directory for the root key(s); keep it offline. Default: <keys>-root.")
@click.option("--threshold", multiple=True, metavar="ROLE=N", help="Signature threshold (and key count) per role.")
@click.option("--expiry", multiple=True, metavar="ROLE=DURATION",
              help="Expiry per role, e.g. timestamp=12h (defaults: root 365d, targets 90d, snapshot 7d, timestamp 1d).")
def init_cmd(repo_dir: Path, keys: Path, root_keys: Path | None, threshold: tuple[str, ...], expiry: tuple[str, ...]) -> None:
    """Create a repository with fresh ed25519 keys."""
    ids = tufrepo.init_repo(
        repo_dir, keys, root_keys,
        thresholds=_role_values(threshold, "threshold", int),
        expiry=_role_values(expiry, "expiry", _duration),
    )
    for role, kids in ids.items():
        click.echo(f"{role:<10} {', '.join(k[:16] for k in kids)}")
    click.echo(f"root keys in {root_keys or tufrepo.default_root_keys_dir(keys)} — move them offline")
    click.echo(f"trusted root: {Path(repo_dir) / 'metadata' / '1.root.json'} — provision it on devices as "
               "tuf.trustedRoot")


@repo.command("add")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--path", "prefix", required=True, help="Target path prefix, e.g. vision/classifier/1.2.0.")
@click.option("--model", help="Model name recorded in the target's custom metadata.")
@click.option("--version", "version", help="Model version recorded in the target's custom metadata.")
@click.option("--encrypt-key", type=click.Path(path_type=Path), help="AES-256 key file: publish encrypted.")
@click.option("--role", help="Sign into this role (default: the role whose delegated paths match).")
@_keys_option
@_dry_run
def add_cmd(repo_dir: Path, files: tuple[Path, ...], prefix: str, model: str | None, version: str | None,
            encrypt_key: Path | None, role: str | None, keys: tuple[Path, ...], dry_run: bool) -> None:
    """Add model files as signed targets."""
    key = None
    if encrypt_key is not None:
        try:
            key = modelcrypto.load_key_file(encrypt_key)
        except modelcrypto.KeyFileError as exc:
            raise UserError(str(exc)) from None
    total = sum(f.stat().st_size for f in files if f.is_file())
    with _scratch(repo_dir, dry_run) as work, Progress(f"signing {len(files)} file(s)", total, "B") as bar:
        rows = tufrepo.add_targets(work, keys, list(files), prefix, model=model, version=version,
                                   encrypt_key=key, role=role, progress=bar.advance)
    for r in rows:
        click.echo(f"{'would add' if dry_run else 'added'} {r.path} ({r.length} bytes, sha256 {r.sha256[:16]}…, "
                   f"role {r.role})")


@repo.command("remove")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("paths", nargs=-1, required=True)
@_keys_option
@_dry_run
def remove_cmd(repo_dir: Path, paths: tuple[str, ...], keys: tuple[Path, ...], dry_run: bool) -> None:
    """Remove targets (unsign them)."""
    with _scratch(repo_dir, dry_run) as work:
        tufrepo.remove_targets(work, keys, list(paths))
    click.echo(f"{'would remove' if dry_run else 'removed'} {len(paths)} target(s)")


@repo.command("list")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@format_option("table")
def list_cmd(repo_dir: Path, fmt: str) -> None:
    """Table of signed targets."""
    rows = tufrepo.list_targets(repo_dir)
    if fmt in ("json", "yaml"):
        emit({"targets": [{"path": r.path, "length": r.length, "sha256": r.sha256, "role": r.role,
                           "custom": r.custom} for r in rows]}, fmt)
        return
    table = [("PATH", "SIZE", "SHA256", "ROLE", "MODEL", "VERSION", "ENC")]
    for r in rows:
        table.append((r.path, str(r.length), r.sha256[:12], r.role, str(r.custom.get("model", "")),
                      str(r.custom.get("version", "")), "yes" if r.custom.get("encrypted") else ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@repo.command("refresh")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@_keys_option
@_dry_run
def refresh_cmd(repo_dir: Path, keys: tuple[Path, ...], dry_run: bool) -> None:
    """Re-sign snapshot and timestamp with fresh expiries (run from cron)."""
    with _scratch(repo_dir, dry_run) as work:
        snap, ts = tufrepo.refresh(work, keys)
    click.echo(f"{'would sign ' if dry_run else ''}snapshot v{snap}, timestamp v{ts}")


@repo.command("delegate")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("role")
@click.option("--prefix", "prefixes", multiple=True, help="Delegate everything under this directory (vision/).")
@click.option("--pattern", "patterns", multiple=True, help="Delegate a TUF path pattern (* never matches /).")
@click.option("--team-keys", type=click.Path(path_type=Path), required=True, help="Where the team's key is written.")
@_keys_option
@_dry_run
def delegate_cmd(repo_dir: Path, role: str, prefixes: tuple[str, ...], patterns: tuple[str, ...],
                 team_keys: Path, keys: tuple[Path, ...], dry_run: bool) -> None:
    """Delegate a path prefix to a team key (the team cannot sign outside it)."""
    paths = [*patterns, *(p for pre in prefixes for p in tufrepo.prefix_patterns(pre))]
    with _scratch(repo_dir, dry_run) as work:
        [team_dir] = _scratch_keys([team_keys], work, dry_run)
        kids = tufrepo.delegate(work, keys, role, paths, team_dir)
    if dry_run:
        click.echo(f"would delegate {', '.join(prefixes or patterns)} to {role} (a new key in {team_keys}; "
                   "no key was written)")
    else:
        click.echo(f"delegated {', '.join(prefixes or patterns)} to {role} (key {kids[0][:16]}, in {team_keys})")


@repo.command("rotate-key")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("role", type=click.Choice(list(tufrepo.TOP_LEVEL)))
@click.option("--root-keys", type=click.Path(path_type=Path), required=True, help="Directory of the root key(s).")
@_keys_option
@_dry_run
def rotate_cmd(repo_dir: Path, role: str, root_keys: Path, keys: tuple[Path, ...], dry_run: bool) -> None:
    """Replace ROLE's key: a new root version signed by the old and new root keys."""
    with _scratch(repo_dir, dry_run) as work:
        *key_dirs, root_dir = _scratch_keys([*keys, root_keys], work, dry_run)
        kid = tufrepo.rotate_key(work, key_dirs, [root_dir], role)
    if dry_run:
        click.echo(f"{role}: would sign a new root version with a new {role} key and move the old key to retired/; "
                   "no key was written or moved")
    else:
        click.echo(f"{role}: new key {kid[:16]}; old key moved to retired/")


@repo.command("verify")
@click.argument("repo_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--within", default="6h", show_default=True,
              help="Fail when any metadata expires within this time (timestamp expires after 1d by default).")
@format_option("table", help="table: problems on stderr; json/yaml: {ok, problems} on stdout for a CI job.")
def verify_cmd(repo_dir: Path, within: str, fmt: str) -> None:
    """Check signatures, versions, target files and expiries (exit 1 on any problem; for CI)."""
    problems = tufrepo.verify_repo(repo_dir, within=_duration(within))
    if fmt in ("json", "yaml"):
        emit({"ok": not problems, "within": within, "problems": list(problems)}, fmt)
        if problems:
            raise UserError(f"{len(problems)} problem(s) in {repo_dir}")
        return
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise UserError(f"{len(problems)} problem(s) in {repo_dir}")
    click.echo(f"ok: {repo_dir} is consistent and valid for at least {format_duration(_duration(within).total_seconds())}")


@repo.command("gen-key")
@click.argument("key_file", type=click.Path(path_type=Path))
def genkey_cmd(key_file: Path) -> None:
    """Write a new AES-256 model encryption key (hex) to KEY_FILE (0600)."""
    if key_file.exists():
        raise UserError(f"{key_file} exists; refusing to overwrite a key")
    modelcrypto.write_key_file(key_file, modelcrypto.generate_key())
    click.echo(f"wrote {key_file}")


# ---------------------------------------------------------------------------------------- tuf conformance


@click.group("tuf-client")
@click.option("--metadata-dir", type=click.Path(path_type=Path), help="Trusted metadata directory (required).")
@click.option("--metadata-url")
@click.option("--target-name", "target_names", multiple=True)
@click.option("--target-base-url")
@click.option("--target-dir", type=click.Path(path_type=Path))
@click.option("--max-concurrent", default=2, show_default=True)
@click.pass_context
def tuf_client(ctx: click.Context, **opts: object) -> None:
    """TUF client speaking the tuf-conformance client-under-test protocol."""
    ctx.obj = opts


def _metadata_dir(opts: dict) -> Path:
    """``--metadata-dir``, checked by each sub-command (not click's required=True, so that `tuf-client download
    --help` works without it)."""
    if opts.get("metadata_dir") is None:
        raise click.UsageError("Missing option '--metadata-dir'.")
    return opts["metadata_dir"]  # type: ignore[no-any-return]


def _client(opts: dict, progress: bool = False):  # type: ignore[no-untyped-def]
    from reconciler.distribution.store import ModelStore
    from reconciler.distribution.tufclient import TufClient

    mdir = _metadata_dir(opts)
    if not opts.get("metadata_url"):
        raise UserError("--metadata-url is required")
    if not (mdir / "root.json").exists():
        raise UserError(f"no trusted root in {mdir}; run `init` first")
    cb = None
    if progress:
        bar = Progress("downloading", None, "B", trim_left=True)

        def cb(path: str, done: int, total: int) -> None:
            bar.update(done, path, total)
            if done >= total:
                bar.close()

    return TufClient(
        mdir, opts["metadata_url"], opts.get("target_base_url") or opts["metadata_url"], mdir / "root.json",
        ModelStore(mdir / "store"), max_concurrent=int(opts["max_concurrent"]), progress=cb,  # type: ignore[arg-type]
    )


def _fail(exc: Exception) -> UserError:
    """One line for any failure: the client's reason code, or ``unexpected error`` for anything else."""
    from reconciler.distribution.tufclient import TufClientError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TufClientError):
        return UserError(f"{exc.reason}: {text}")
    return UserError(f"unexpected error: {type(exc).__name__}: {text}")


def _one_line(command: Callable[..., None]) -> Callable[..., None]:
    """The conformance protocol and our CLI rule: any failure is one line and exit 1, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (UserError, click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            raise _fail(exc) from None

    return run


@tuf_client.command("init")
@click.argument("trusted_root", type=click.Path(path_type=Path))
@click.pass_obj
@_one_line
def tuf_init(opts: dict, trusted_root: Path) -> None:
    """Trust TRUSTED_ROOT (copied, no network)."""
    mdir = _metadata_dir(opts)
    try:
        data = trusted_root.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {trusted_root}: {exc.strerror}") from None
    mdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(mdir / "root.json", data)


@tuf_client.command("refresh")
@click.pass_obj
@_one_line
def tuf_refresh(opts: dict) -> None:
    """Update top-level metadata."""
    _client(opts).refresh()


@tuf_client.command("download")
@click.pass_obj
@_one_line
def tuf_download(opts: dict) -> None:
    """Download --target-name targets (in order, stop at the first failure) into --target-dir."""
    names: tuple[str, ...] = opts["target_names"]  # type: ignore[assignment]
    tdir: Path | None = opts["target_dir"]  # type: ignore[assignment]
    if not names or tdir is None or not opts.get("target_base_url"):
        raise UserError("download needs --target-name, --target-base-url and --target-dir")
    client = _client(opts, progress=True)
    client.refresh()
    for name in names:
        stored = client.fetch([name])[name]
        dst = tdir / quote(name, "")
        tdir.mkdir(parents=True, exist_ok=True)
        if not (dst.exists() and dst.stat().st_size == stored.length and _same(dst, stored.store_path)):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(stored.store_path, tmp)
            tmp.chmod(0o644)
            tmp.replace(dst)


def _same(a: Path, b: Path) -> bool:
    from reconciler.distribution.store import sha256_file

    return sha256_file(a) == sha256_file(b)
