"""``modelfleet rollout``: status, promote, abort, pause, resume and watch a deployment's progressive rollout.

Everything is read from Git (the desired-state branch, its history, the devices' ``status/*`` branches) and
every change is one commit: pushed to the branch (``--commit``, the default), pushed to a new branch for a
pull request (``--branch NAME``) or printed as a patch (``--patch``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from reconciler.cli.console import paint
from reconciler.cli.options import (
    as_yaml,
    dry_run_option,
    emit_json_text,
    format_option,
    local_clone,
    repo_option,
    shared_repo,
)
from reconciler.cli.remote import credential_options, credentials, parse_timeout, remote_url, status_repos
from reconciler.core.credentials import CredentialError
from reconciler.core.errors import UserError
from reconciler.core.redact import redact_url
from reconciler.core.units import parse_duration
from reconciler.gitops.verify import GitError
from reconciler.rollout import edit
from reconciler.rollout.basetrust import BaseTrust
from reconciler.rollout.evaluate import COMPLETE, FAILED, PAUSED, READY, RolloutStatus
from reconciler.rollout.gitrepo import RolloutRepo
from reconciler.rollout.render import render
from reconciler.rollout.watch import act, gates_summary, watch

_read_options = [
    click.argument("deployment"),
    repo_option(remote=True),
    click.option("--base", "base", default="main", show_default=True, help="Desired-state branch."),
    click.option("--path", "subpath", default=None, help="Sub-directory of the fleet inside the repository."),
    click.option("--prefix", default="status/", show_default=True, help="Status branch prefix."),
    click.option("--cache-dir", type=click.Path(path_type=Path), help="Local cache (default ~/.cache/modelfleet)."),
    click.option("--timeout", default="120s", show_default=True, help="Timeout of one Git operation."),
]


def read_options(f):  # type: ignore[no-untyped-def]
    f = credential_options(f)
    for opt in reversed(_read_options):
        f = opt(f)
    return f


BASE_TRUST_KEY = "modelfleet.base_trust"


def _remember(name: str):  # type: ignore[no-untyped-def]
    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        ctx.meta.setdefault(BASE_TRUST_KEY, {})[name] = value
        return value
    return callback


# Not passed to each command function: _base_trust() reads them, so every writing command has them.
_verify_options = [
    click.option("--allowed-signers", type=click.Path(dir_okay=False, path_type=Path), expose_value=False,
                  callback=_remember("allowed_signers"),
                  help="Allowed-signers file the branch's commits are verified against before a commit is built on "
                       "them (the devices' anchor; env MODELFLEET_ALLOWED_SIGNERS, else git's "
                       "gpg.ssh.allowedSignersFile)."),
    click.option("--gpg-keyring", type=click.Path(path_type=Path), expose_value=False,
                 callback=_remember("gpg_keyring"),
                 help="GPG keyring to verify against instead of / as well as (env MODELFLEET_GPG_KEYRING)."),
    click.option("--verify", "verify_mode", type=click.Choice(["all", "head"]), default="all", show_default=True,
                 expose_value=False, callback=_remember("mode"),
                 help="all: every commit since the last one verified here; head: the branch head only."),
    click.option("--insecure-skip-verify", is_flag=True, envvar="MODELFLEET_INSECURE_SKIP_VERIFY",
                 expose_value=False, callback=_remember("skip"),
                 help="Build on the branch without verifying its signatures (fleets whose commits are not signed)."),
]


def verify_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed(_verify_options):
        f = opt(f)
    return f


def _base_trust() -> BaseTrust:
    ctx = click.get_current_context(silent=True)
    given = dict(ctx.meta.get(BASE_TRUST_KEY, {})) if ctx else {}
    return BaseTrust.resolve(allowed_signers=given.get("allowed_signers"), gpg_keyring=given.get("gpg_keyring"),
                             mode=str(given.get("mode") or "all"), skip=bool(given.get("skip")))


def write_options(f):  # type: ignore[no-untyped-def]
    f = verify_options(f)
    f = click.option("--branch", "branch_name", metavar="NAME",
                     help="Push the commit to a new branch NAME (for a pull request) instead.")(f)
    f = click.option("--patch", "as_patch", is_flag=True, help="Print the commit as a patch; push nothing.")(f)
    f = click.option("--commit", "as_commit", is_flag=True, help="Push one commit to the branch (default).")(f)
    f = dry_run_option()(f)
    return f


def _repo(repo: str | None, base: str, subpath: str | None, prefix: str, cache_dir: Path | None,
          timeout: str, username: str | None, password_file: Path | None, ca_file: Path | None) -> RolloutRepo:
    creds = credentials(username, password_file, ca_file)
    url, inline = remote_url(shared_repo(repo))
    return RolloutRepo(url, cache_dir, branch=base, prefix=prefix, subpath=subpath, timeout=parse_timeout(timeout),
                       credentials=creds, authorization=inline, status_urls=status_repos(), base_trust=_base_trust(),
                       clone=local_clone(repo))


def _mode(as_commit: bool, as_patch: bool, branch_name: str | None, dry_run: bool = False) -> str:
    if sum([as_commit, as_patch, branch_name is not None]) > 1:
        raise UserError("choose one of --commit, --patch and --branch NAME", exit_code=2)
    # A dry run builds the same commit in a throw-away clone and prints it: nothing is pushed anywhere.
    return "patch" if as_patch or dry_run else "branch" if branch_name else "commit"


def _status(rr: RolloutRepo, deployment: str):  # type: ignore[no-untyped-def]
    try:
        return rr.status(deployment)
    except (GitError, CredentialError) as exc:
        raise UserError(f"cannot read {redact_url(rr.url)}: {exc}") from None


def _done(mode: str, result: str, what: str, rr: RolloutRepo, branch_name: str | None, dry_run: bool = False,
          as_patch: bool = False) -> None:
    if dry_run:
        target = f"new branch {branch_name}" if branch_name else "a patch" if as_patch else rr.branch
        click.echo(f"dry run: would commit ({what}) to {target} of {redact_url(rr.url)}; nothing was written",
                   err=True)
        click.echo(result, nl=False)
    elif mode == "patch":
        click.echo(result, nl=False)
    elif mode == "branch":
        click.echo(f"{what}: commit {result[:12]} pushed to new branch {branch_name} of {redact_url(rr.url)}")
    else:
        click.echo(f"{what}: commit {result[:12]} pushed to {rr.branch} of {redact_url(rr.url)}")
        clone = rr.update_clone(result)  # the operator's clone follows, or they are told how to update it
        if clone:
            click.echo(clone)


@click.group()
def rollout() -> None:
    """Progressive rollouts gated by the devices' own status in Git."""


@rollout.command("status")
@read_options
@format_option("table", "markdown")
def status_cmd(deployment: str, repo: str | None, base: str, subpath: str | None, prefix: str,
               cache_dir: Path | None, timeout: str, username: str | None,
               password_file: Path | None, ca_file: Path | None, fmt: str) -> None:
    """Per step: targeted, updated, healthy, failed, unknown devices; each gate; the phase."""
    rr = _repo(repo, base, subpath, prefix, cache_dir, timeout, username, password_file, ca_file)
    _, st = _status(rr, deployment)
    if fmt == "yaml":
        emit_json_text(render(st, "json"), fmt)
    elif fmt == "table":
        click.echo(_paint_phase(render(st, fmt)))
    else:
        click.echo(render(st, fmt))


def _paint_phase(text: str) -> str:
    """The phase word coloured on a terminal: an operator scans for Failed and Paused."""
    colours = {FAILED: "red", PAUSED: "yellow", READY: "green", COMPLETE: "green"}
    for phase, colour in colours.items():
        text = text.replace(f"Phase: {phase}", f"Phase: {paint(phase, colour, bold=True)}")
    return text


@rollout.command("promote")
@read_options
@write_options
@click.option("--force", "force_reason", metavar="REASON",
              help="Promote even though the gates do not pass; REASON goes into the commit message.")
def promote_cmd(deployment: str, repo: str | None, base: str, subpath: str | None, prefix: str,
                cache_dir: Path | None, timeout: str, username: str | None,
                password_file: Path | None, ca_file: Path | None, as_commit: bool, as_patch: bool, branch_name: str | None,
                dry_run: bool, force_reason: str | None) -> None:
    """Advance the rollout one step when its gates pass; at the last step, complete it (the rollout block goes).

    The commit is pushed to the branch, and a clone given as --repo (or the one you are in) is fast-forwarded.
    """
    mode = _mode(as_commit, as_patch, branch_name, dry_run)
    rr = _repo(repo, base, subpath, prefix, cache_dir, timeout, username, password_file, ca_file)
    snap, st = _status(rr, deployment)
    if st.phase == COMPLETE:
        raise UserError(f"deployment {deployment} is not in a rollout (it runs {st.version})")
    if force_reason is not None and not force_reason.strip():
        raise UserError("--force needs a reason")
    if st.phase != READY and force_reason is None:
        if st.phase == FAILED:
            raise UserError(f"refusing to promote {deployment}: {st.message}; `modelfleet rollout abort "
                            f"{deployment}` {_abort_does(st)}", exit_code=3)
        if st.phase == PAUSED:
            raise UserError(f"refusing to promote {deployment}: the rollout is paused (resume it first)", exit_code=3)
        raise UserError(f"refusing to promote {deployment}: gates do not pass at step {st.step} "
                        f"({st.current.name}): {st.message.removeprefix('waiting for ')}", exit_code=3)
    extra = f"Forced by the operator: {force_reason.strip()}" if force_reason else ""
    result = act(rr, deployment, "promote", st, snap, mode=mode, branch_name=branch_name, extra=extra)
    nxt = st.step + 1
    if st.last_step:
        what = f"completed rollout of {deployment} {st.version} (every selected device runs it; the rollout block is gone)"
    else:
        last = ", its last step" if nxt == len(st.steps) - 1 else ""
        what = f"promoted {deployment} {st.version} to step {nxt} ({st.steps[nxt].name}){last}"
    if st.shadow_pending:
        what = (f"shadow of {deployment} {st.version} passed at step {st.step} ({st.current.name}): "
                f"its devices switch to {st.version}")
    _done(mode, result, what + (" (forced)" if force_reason else ""), rr, branch_name, dry_run, as_patch)
    if nxt == len(st.steps) - 1 and mode != "patch" and not st.shadow_pending:
        # Deliberately two steps: the last step's gates still guard it, and `abort` still works until it completes.
        click.echo(f"next: once step {nxt}'s gates pass (`modelfleet rollout status {deployment}`), "
                   f"`modelfleet rollout promote {deployment}` completes the rollout")


def _abort_does(st: RolloutStatus) -> str:
    """What ``abort`` does to this rollout, for the messages that point at it."""
    if st.from_version is None:
        return (f"removes deployment {st.deployment} (a first rollout: no rollout.from), so every device stops "
                f"serving {st.endpoint}")
    return f"sends every device back to {st.from_version}"


@rollout.command("abort")
@read_options
@write_options
@click.option("--reason", default="", help="Why, for the commit message.")
def abort_cmd(deployment: str, repo: str | None, base: str, subpath: str | None, prefix: str,
              cache_dir: Path | None, timeout: str, username: str | None,
              password_file: Path | None, ca_file: Path | None, as_commit: bool, as_patch: bool, branch_name: str | None,
              dry_run: bool, reason: str) -> None:
    """Send every device back to rollout.from in one commit.

    A first rollout (no rollout.from) goes back to nothing: the deployment is removed, so every device stops
    serving it; `git revert` of the commit brings it back.
    """
    mode = _mode(as_commit, as_patch, branch_name, dry_run)
    rr = _repo(repo, base, subpath, prefix, cache_dir, timeout, username, password_file, ca_file)
    snap, st = _status(rr, deployment)
    if st.phase == COMPLETE:
        raise UserError(f"deployment {deployment} is not in a rollout (it runs {st.version})")
    result = act(rr, deployment, "abort", st, snap, mode=mode, branch_name=branch_name,
                 extra=f"Reason: {reason}" if reason else "")
    if st.from_version is None:
        what = (f"aborted {deployment} {st.version}, a first rollout: deployment {deployment} removed, every device "
                f"stops serving {st.endpoint}")
    else:
        what = f"aborted {deployment} {st.version}: every device back to {st.from_version}"
    _done(mode, result, what, rr, branch_name, dry_run, as_patch)
    if st.from_version is None and mode != "patch":
        click.echo(f"to bring it back: `git revert {result[:12]}` (then push)")


def _pause_resume(paused: bool, deployment: str, repo: str | None, base: str, subpath: str | None, prefix: str,
                  cache_dir: Path | None, timeout: str, username: str | None,
                  password_file: Path | None, ca_file: Path | None, as_commit: bool, as_patch: bool,
                  branch_name: str | None, dry_run: bool) -> None:
    mode = _mode(as_commit, as_patch, branch_name, dry_run)
    rr = _repo(repo, base, subpath, prefix, cache_dir, timeout, username, password_file, ca_file)
    snap, st = _status(rr, deployment)
    if st.phase == COMPLETE:
        raise UserError(f"deployment {deployment} is not in a rollout (it runs {st.version})")

    def fn(text: str) -> edit.Edit:
        try:
            return edit.set_paused(text, deployment, paused)
        except edit.EditError as exc:
            raise UserError(str(exc)) from None

    result = rr.write(snap, deployment, fn, mode=mode, message_body=gates_summary(st), branch_name=branch_name)
    _done(mode, result, f"{'paused' if paused else 'resumed'} rollout of {deployment} at step {st.step}", rr,
          branch_name, dry_run, as_patch)


@rollout.command("pause")
@read_options
@write_options
def pause_cmd(**kw: object) -> None:
    """Mark the rollout paused: promoters leave it alone (devices are not affected)."""
    _pause_resume(True, **kw)  # type: ignore[arg-type]


@rollout.command("resume")
@read_options
@write_options
def resume_cmd(**kw: object) -> None:
    """Clear a pause."""
    _pause_resume(False, **kw)  # type: ignore[arg-type]


@rollout.command("watch")
@read_options
@click.option("--interval", default="60s", show_default=True, help="Time between evaluations.")
@click.option("--max-iterations", type=click.IntRange(1, 10_000_000), default=None,
              help="Stop after this many evaluations (default: until complete or aborted).")
@click.option("--once", is_flag=True, help="Evaluate once (and act), then exit: for a CI job.")
@format_option("table", aliases={"text": "table"}, help="table: one line per evaluation; json/yaml: one document each.")
@dry_run_option("Evaluate once and show the commit it would write; write and push nothing.")
@verify_options
def watch_cmd(deployment: str, repo: str | None, base: str, subpath: str | None, prefix: str,
              cache_dir: Path | None, timeout: str, username: str | None,
              password_file: Path | None, ca_file: Path | None, interval: str, max_iterations: int | None, once: bool,
              fmt: str, dry_run: bool) -> None:
    """Promote when the gates pass, abort when the step failed; stateless, so any number may run.

    With --dry-run: evaluate once and print the commit it would write (implies --once).
    """
    try:
        secs = parse_duration(interval)
    except ValueError as exc:
        raise UserError(f"--interval: {exc}") from None
    rr = _repo(repo, base, subpath, prefix, cache_dir, timeout, username, password_file, ca_file)
    if dry_run:
        _watch_dry_run(rr, deployment)
        return
    try:
        for tick in watch(rr, deployment, interval=secs, max_iterations=1 if once else max_iterations):
            if fmt in ("json", "yaml"):
                line = json.dumps(tick.__dict__, sort_keys=True)
                click.echo(("---\n" + as_yaml(line)) if fmt == "yaml" else line, nl=fmt == "json")
            else:
                act_text = f"{tick.action} -> {tick.commit[:12]}" if tick.commit else (tick.action or "wait")
                click.echo(f"[{tick.iteration}] step {tick.step} {tick.phase}: {act_text} ({tick.message})")
            clone = rr.update_clone(tick.commit) if tick.commit else None
            if clone:  # on stderr: stdout is one line (or document) per evaluation
                click.echo(clone, err=True)
    except (GitError, CredentialError) as exc:
        raise UserError(f"cannot read {redact_url(rr.url)}: {exc}") from None


def _watch_dry_run(rr: RolloutRepo, deployment: str) -> None:
    from reconciler.rollout.watch import next_action

    snap, st = _status(rr, deployment)
    action = None if st.phase == COMPLETE else next_action(st)
    if action is None:
        click.echo(f"dry run: step {st.step} {st.phase}: nothing to do ({st.message})", err=True)
        return
    try:
        patch = act(rr, deployment, action, st, snap, mode="patch", extra="Written by `modelfleet rollout watch`.")
    except (GitError, CredentialError) as exc:
        raise UserError(f"cannot read {redact_url(rr.url)}: {exc}") from None
    click.echo(f"dry run: step {st.step} {st.phase}: would {action} with this commit to {rr.branch} of "
               f"{redact_url(rr.url)}; nothing was written", err=True)
    click.echo(patch, nl=False)
