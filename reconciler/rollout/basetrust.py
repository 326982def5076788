"""Operator commands verify the commits they build on, with the same trust anchors the devices use.

A Git server (or anyone with push access) can add an unsigned commit to the desired-state branch. Devices
refuse it (``UnsignedCommit``) — but a ``rollout promote`` that committed a signed child on top would launder
it: devices in ``head`` mode accept a signed head whatever lies beneath. So before ``promote``, ``abort``,
``pause``, ``resume`` or ``watch`` write, :func:`verify_base` checks the new commits since the last commit this
operator's cache verified (``all``, the default) or just the head (``head``) against an allowed-signers file
and/or GPG keyring from the operator's machine (``--allowed-signers``/``--gpg-keyring``, the environment, or
git's own ``gpg.ssh.allowedSignersFile``) — never from the repository. A refusal is a
:class:`BaseNotVerified` with the device vocabulary's reason; ``--insecure-skip-verify`` is the explicit way
out for fleets that do not sign.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import reasons as R
from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text
from reconciler.gitops.verify import GitError, Verifier, run_git

EXIT_NOT_VERIFIED = 4  # docs/cli.md: the branch's new commits are not signed by a trusted signer
MAX_RANGE = 10_000  # commits verified in one go; more means the cache is far behind: verify from a newer commit


class BaseNotVerified(UserError):
    """The branch head (or a commit since the last verified one) is not signed by a trusted signer."""

    exit_code = EXIT_NOT_VERIFIED

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BaseTrust:
    """Where the operator's trust anchors are and how much history to check; ``skip``: the fleet does not sign."""

    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    mode: str = "all"  # all | head
    skip: bool = False

    @classmethod
    def resolve(cls, *, allowed_signers: Path | None, gpg_keyring: Path | None, mode: str, skip: bool,
                cwd: Path | None = None) -> BaseTrust:
        """Options first, then ``MODELFLEET_ALLOWED_SIGNERS`` / ``MODELFLEET_GPG_KEYRING``, then the
        operator's git configuration (``gpg.ssh.allowedSignersFile``)."""
        if skip:
            return cls(mode=mode, skip=True)
        signers = allowed_signers or _env_path("MODELFLEET_ALLOWED_SIGNERS")
        keyring = gpg_keyring or _env_path("MODELFLEET_GPG_KEYRING")
        if signers is None and keyring is None:
            out = run_git(["config", "--get", "gpg.ssh.allowedSignersFile"], cwd=cwd, check=False, timeout=10)
            text = out.stdout.decode(errors="replace").strip()
            signers = Path(text).expanduser() if out.returncode == 0 and text else None
        for what, path in (("allowed-signers file", signers), ("GPG keyring", keyring)):
            if path is not None and not path.exists():
                raise UserError(f"the {what} {path} does not exist")
        return cls(signers, keyring, mode, False)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def verify_base(trust: BaseTrust, git_dir: Path, head: str, branch: str, state_file: Path, *,
                timeout: float = 60) -> str:
    """Verify ``head`` (and, in ``all`` mode, every commit since the last verified one) before building on it;
    records ``head`` as verified. Returns what was checked, for the command's output."""
    if trust.skip:
        return "not verified (--insecure-skip-verify)"
    if trust.allowed_signers is None and trust.gpg_keyring is None:
        raise BaseNotVerified(
            f"cannot verify {branch} at {head[:12]} before committing on top of it: no trust anchors. Pass "
            "--allowed-signers FILE (or set git's gpg.ssh.allowedSignersFile) and/or --gpg-keyring FILE — the same "
            "anchors the devices are provisioned with — or --insecure-skip-verify for a fleet whose commits are "
            "not signed", R.VERIFICATION_FAILED)
    last = _last_verified(state_file)
    commits = [head]
    if trust.mode == "all" and last and last != head:
        anc = run_git(["merge-base", "--is-ancestor", last, head], git_dir=git_dir, check=False, timeout=timeout)
        if anc.returncode != 0:
            raise BaseNotVerified(
                f"refusing to commit on top of {branch} at {head[:12]}: {R.HISTORY_REWRITE}: it does not descend "
                f"from {last[:12]}, the last commit verified here (the branch history was rewritten). Inspect it; if the rewrite is intended, remove "
                f"{state_file} to verify from the new head", R.HISTORY_REWRITE)
        commits = run_git(["rev-list", f"--max-count={MAX_RANGE}", f"{last}..{head}"], git_dir=git_dir,
                          timeout=timeout).stdout.decode().split()
    try:
        result = Verifier(git_dir, allowed_signers=trust.allowed_signers, gpg_keyring=trust.gpg_keyring,
                          state_dir=state_file.parent, timeout=timeout).verify(commits)
    except GitError as exc:
        raise BaseNotVerified(f"cannot verify {branch} at {head[:12]}: {exc}", R.VERIFICATION_FAILED) from None
    if not result.ok:
        raise BaseNotVerified(
            f"refusing to commit on top of {branch} at {head[:12]}: {result.reason}: {result.message}. The devices "
            "refuse it too; find out who pushed it (a compromised Git server or account?) before anything else",
            result.reason)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_file, head + "\n")
    return f"{len(commits)} new commit(s) verified: {result.message}"


def _last_verified(state_file: Path) -> str | None:
    try:
        text = state_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text) else None
