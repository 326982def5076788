"""Commit signature verification against trust anchors provisioned on the device (like Flux's ``verify``).

Workflow: :class:`Verifier` reads the commits' signature headers (one ``git cat-file``); :func:`classify_signature`
(pure) takes the format from the one header git verifies, the way git does, and refuses a commit with several
signature headers or only one git would not verify. Git is then asked for the status of each format's commits
in ONE ``git log`` call (``%G?``/``%GS``/``%GK``) per format, in which only that format's program can run
against only that format's trust anchor: ``gpg.ssh.allowedSignersFile`` at the provisioned allowed-signers file
for SSH, ``GNUPGHOME`` at a private home holding only the provisioned GPG keyring for GPG. :func:`judge` (pure)
turns each answer into a verdict; the first refused commit decides the :class:`VerifyResult`, which names the
signer seen.

Also home of :func:`run_git`, the one place that starts git: no system/global config surprises for hooks,
a hard timeout that kills the whole process group, and never an interactive prompt.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.core import reasons as R
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.redact import redact

# Reasons (Condition.reason) shared with gitsource.
VERIFIED = R.VERIFIED
UNSIGNED = R.UNSIGNED_COMMIT
VERIFICATION_FAILED = R.VERIFICATION_FAILED
AMBIGUOUS_SIGNATURE = R.AMBIGUOUS_SIGNATURE

#: The one signature header git verifies in a repository of each object format; it leaves a header of the other
#: format out of the signed payload and never checks it.
SIGNATURE_HEADER: dict[str, bytes] = {"sha1": b"gpgsig", "sha256": b"gpgsig-sha256"}
OBJECT_FORMAT_BY_ID_LENGTH = {40: "sha1", 64: "sha256"}
#: How git tells a signature's format (its ``gpg_format`` table): by the line the signature starts with.
SIGNATURE_STARTS: tuple[tuple[bytes, str], ...] = (
    (b"-----BEGIN PGP SIGNATURE-----", "gpg"),
    (b"-----BEGIN PGP MESSAGE-----", "gpg"),
    (b"-----BEGIN SIGNED MESSAGE-----", "x509"),
    (b"-----BEGIN SSH SIGNATURE-----", "ssh"),
)
# A program that can never start (/dev/null is no directory): every format's verifier but the one a `git log`
# run is for, so that a signature git takes for another format can never be checked against the wrong anchor.
NO_PROGRAM = "/dev/null/disabled"

# Options given to every git invocation: hooks can never run (fetch runs reference-transaction hooks),
# no credential prompts, no automatic gc racing our own measurements.
SAFE_GIT_OPTIONS: tuple[str, ...] = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "credential.interactive=false",
    "-c", "protocol.ext.allow=never",
    "-c", "maintenance.auto=false",
    "-c", "gc.auto=0",
)


MAX_GNUPG_HOME_BYTES = 80  # + "/S.gpg-agent.browser" (20) stays within a socket address (107)


@functools.cache
def _alias_dir() -> Path:
    """This process's private directory (0700, a name no one can guess) for short GNUPGHOME aliases: one per
    process, not one per verification (a Verifier is made for every new head), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="modelfleet-gpg-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


#: Lines git prints after the reason itself, saying nothing the reason does not (``ls-remote``/``fetch`` of an
#: unreachable or unknown repository); left out of :func:`git_message`.
GIT_BOILERPLATE: tuple[str, ...] = ("Please make sure you have the correct access rights", "and the repository exists.")


def git_message(text: str, limit: int = 1500) -> str:
    """git's (multi-line) error output as one line for a user error: ``hint:`` and boilerplate lines and repeats
    left out, a line ending in ``:`` continued by the next, the others joined with ``; `` (the end kept when it
    is longer than ``limit``)."""
    out = ""
    seen: set[str] = set()
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("hint:") or line in GIT_BOILERPLATE or line in seen:
            continue
        seen.add(line)
        out = f"{out}{' ' if out.endswith(':') else '; ' if out else ''}{line}"
    return out if len(out) <= limit else "…" + out[-limit:]


class GitError(Exception):
    """A git command failed; ``timed_out`` tells a timeout from an error exit."""

    def __init__(self, message: str, *, timed_out: bool = False, returncode: int | None = None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.returncode = returncode


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            # No GIT_SSH_COMMAND default: the service user's core.sshCommand and ~/.ssh/config apply. ssh cannot
            # prompt anyway (new session without a terminal, stdin closed); configured SSH credentials set their
            # own command with BatchMode (gitops.auth).
        }
    )
    if extra:
        env.update(extra)
    return env


def run_git(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    timeout: float | None = 30.0,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git <args>``; raise :class:`GitError` on timeout (process group killed) or, if ``check``, failure."""
    cmd = ["git", *SAFE_GIT_OPTIONS]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    cmd.extend(args)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=git_env(env),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so a timeout can kill git *and* its ssh/upload-pack children
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise GitError(f"git {args[0]} timed out after {timeout:g}s", timed_out=True) from None
    if check and proc.returncode != 0:
        msg = git_message(err.decode("utf-8", "replace")) or git_message(out.decode("utf-8", "replace"))
        # Redacted here, once, for every caller: git echoes URLs (with their userinfo) in its errors.
        raise GitError(redact(f"git {args[0]} failed: {msg}"), returncode=proc.returncode)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@dataclass(frozen=True)
class CommitSignature:
    """What git saw on one commit."""

    commit: str
    format: str  # "ssh" | "gpg" | "x509" | "unknown" | "ambiguous" | "none"
    status: str  # git's %G? letter: G good, U good/unknown validity, B bad, X/Y expired, R revoked, E cannot check, N none
    signer: str | None  # principal (ssh) or user id (gpg) when known
    key: str | None  # key fingerprint (ssh SHA256:…) or gpg key id
    problem: str | None = None  # why an "ambiguous" commit's signature headers are refused unread


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    reason: str
    message: str
    signer: str | None = None
    commit: str | None = None


def init_bare(git_dir: Path, *, timeout: float | None = 30.0) -> None:
    """Create an empty bare repository at ``git_dir`` with git's sample hooks removed (none may ever run)."""
    git_dir.parent.mkdir(parents=True, exist_ok=True)
    run_git(["init", "--bare", "--quiet", str(git_dir)], timeout=timeout)
    hooks = git_dir / "hooks"
    if hooks.is_dir():
        for sample in hooks.iterdir():
            sample.unlink()


def classify_signature(raw_commit: bytes, object_format: str = "sha1") -> tuple[str, str | None]:
    """The signature format of a raw commit object (``git cat-file commit``) as git will verify it, and why it
    is refused unread if it is ``ambiguous``.

    Git treats every header line starting with ``gpgsig`` as a signature header; it verifies the concatenation
    of its own object format's ones, in the format the first starts with. A commit with several (git would
    verify one and the device might judge another) or with only one git does not verify is ``ambiguous``."""
    header = raw_commit.split(b"\n\n", 1)[0]
    found = [line.split(b" ", 1) for line in header.split(b"\n") if line.startswith(b"gpgsig")]
    if not found:
        return "none", None
    names = [f[0][:40].decode("ascii", "replace") for f in found]
    if len(found) > 1:
        return "ambiguous", (f"carries {len(found)} signature headers ({', '.join(names)}); a signed commit "
                             f"has exactly one")
    expected = SIGNATURE_HEADER[object_format]
    if found[0][0] != expected:
        return "ambiguous", (f"has only a {names[0]} signature header, which git does not verify in a "
                             f"{object_format} repository (it verifies {expected.decode()})")
    value = found[0][1] if len(found[0]) == 2 else b""
    for start, fmt in SIGNATURE_STARTS:
        if value.startswith(start):
            return fmt, None
    return "unknown", None


def judge(sig: CommitSignature, *, ssh_trusted: bool, gpg_trusted: bool) -> VerifyResult:
    """Pure verdict on one commit's signature given which trust anchors are provisioned."""
    short = sig.commit[:12]
    seen = sig.signer or sig.key
    if sig.format == "none":
        return VerifyResult(False, UNSIGNED, f"commit {short} is not signed", None, sig.commit)
    if sig.format == "ambiguous":
        return VerifyResult(False, AMBIGUOUS_SIGNATURE, f"commit {short} {sig.problem}", None, sig.commit)
    if sig.format == "ssh":
        if not ssh_trusted:
            return VerifyResult(False, VERIFICATION_FAILED,
                                f"commit {short} has an SSH signature but no allowed-signers file is provisioned",
                                seen, sig.commit)
        # git reports an SSH key that is not in the allowed-signers file as "U" with no principal.
        if sig.status == "G" and sig.signer:
            return VerifyResult(True, VERIFIED, f"commit {short} signed by {sig.signer} ({sig.key})", sig.signer, sig.commit)
        if sig.status in ("U", "E"):
            return VerifyResult(False, VERIFICATION_FAILED,
                                f"commit {short} is signed by key {sig.key}, which is not an allowed signer", seen, sig.commit)
    elif sig.format == "gpg":
        if not gpg_trusted:
            return VerifyResult(False, VERIFICATION_FAILED,
                                f"commit {short} has a GPG signature but no GPG keyring is provisioned",
                                seen, sig.commit)
        # A "gpg" status comes from a run where only gpg could verify, against a private GNUPGHOME holding only
        # the provisioned keyring: a good signature by any key in it is trusted even though gpg itself reports
        # the owner trust as unknown ("U").
        if sig.status in ("G", "U"):
            return VerifyResult(True, VERIFIED, f"commit {short} signed by {sig.signer} ({sig.key})", seen, sig.commit)
        if sig.status == "E":
            return VerifyResult(False, VERIFICATION_FAILED,
                                f"commit {short} is signed by GPG key {sig.key}, which is not in the provisioned keyring",
                                seen, sig.commit)
    elif sig.format == "unknown":
        return VerifyResult(False, VERIFICATION_FAILED, f"commit {short} has a signature in a format git does not know",
                            seen, sig.commit)
    else:
        return VerifyResult(False, VERIFICATION_FAILED, f"commit {short} has an unsupported {sig.format} signature",
                            seen, sig.commit)
    words = {"B": "a bad signature", "X": "an expired signature", "Y": "a signature by an expired key",
             "R": "a signature by a revoked key"}
    what = words.get(sig.status, f"a signature git could not verify (status {sig.status})")
    return VerifyResult(False, VERIFICATION_FAILED, f"commit {short} has {what} (key {sig.key})", seen, sig.commit)


APPROVE_TRAILER = "Approve-Unsigned"
APPROVABLE = (UNSIGNED, VERIFICATION_FAILED)  # never a commit git cannot judge unambiguously (AmbiguousSignature)
MAX_APPROVALS = 256  # trailers honoured per commit


def approved(messages: Mapping[str, str]) -> dict[str, str]:
    """Commit sha -> the verified commit whose message approves it with ``Approve-Unsigned: <full sha>`` (pure).

    The way out of an unsigned commit under ``verify.mode: all`` without rewriting history (docs/git.md): a
    signed commit on top that names, by full object id, the commits its signer reviewed. A commit can only name
    commits that existed before it, so an approval always sits above what it approves."""
    out: dict[str, str] = {}
    for approver, message in messages.items():
        found = 0
        for line in message.splitlines():
            key, sep, value = line.partition(":")
            value = value.strip().lower()
            if sep and key.strip().lower() == APPROVE_TRAILER.lower() and len(value) in (40, 64) and all(
                    c in "0123456789abcdef" for c in value):
                out.setdefault(value, approver)
                found += 1
                if found >= MAX_APPROVALS:
                    break
    return out


class Verifier:
    """Checks commits of a local repository against the provisioned allowed-signers file and/or GPG keyring."""

    def __init__(self, git_dir: Path, *, allowed_signers: Path | None = None, gpg_keyring: Path | None = None,
                 state_dir: Path | None = None, timeout: float = 60.0) -> None:
        if allowed_signers is None and gpg_keyring is None:
            raise ValueError("signature verification needs an allowed-signers file or a GPG keyring")
        self.git_dir = git_dir
        self.allowed_signers = allowed_signers
        self.gpg_keyring = gpg_keyring
        self.state_dir = state_dir or git_dir.parent
        self.timeout = timeout

    def _short(self, home: Path) -> Path:
        """``home`` by a name short enough for gpg's sockets (``<home>/S.gpg-agent.browser`` must fit a socket
        address, 107 bytes; gpg 2.2 fails even a public-key import when it cannot name them): a deep state
        directory (a K3s volume) is reached through a symlink in a private temporary directory instead."""
        if len(os.fsencode(home)) <= MAX_GNUPG_HOME_BYTES:
            return home
        alias = _alias_dir() / hashlib.sha256(os.fsencode(home)).hexdigest()[:12]
        if not alias.is_symlink() or os.readlink(alias) != str(home):
            tmp = alias.with_name(alias.name + ".new")
            tmp.unlink(missing_ok=True)
            os.symlink(home, tmp)
            os.replace(tmp, alias)
        return alias

    def _gnupg_home(self) -> Path:
        """A private GNUPGHOME holding only the provisioned keyring (re-imported when the keyring changes)."""
        assert self.gpg_keyring is not None
        if self.gpg_keyring.is_dir():
            return self._short(self.gpg_keyring)
        try:
            data = self.gpg_keyring.read_bytes()
        except OSError as exc:
            raise GitError(f"cannot read GPG keyring {self.gpg_keyring}: {exc.strerror}") from None
        home = self.state_dir / f"gnupg-{hashlib.sha256(data).hexdigest()[:12]}"
        if (home / ".imported").is_file():
            return self._short(home)
        tmp = home.with_name(home.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700, parents=True)
        proc = subprocess.run(
            ["gpg", "--batch", "--quiet", "--no-autostart", "--homedir", str(self._short(tmp)), "--import",
             str(self.gpg_keyring)],
            capture_output=True, timeout=self.timeout,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GitError(f"cannot import GPG keyring {self.gpg_keyring}: {git_message(proc.stderr.decode(errors='replace'))}")
        atomic_write_text(tmp / ".imported", str(self.gpg_keyring) + "\n")
        shutil.rmtree(home, ignore_errors=True)
        os.replace(tmp, home)
        for old in self.state_dir.glob("gnupg-*"):
            if old != home:
                shutil.rmtree(old, ignore_errors=True)
        return self._short(home)

    def _messages(self, commits: Sequence[str]) -> dict[str, str]:
        """Commit messages of ``commits`` (only asked for when a commit in the range is refused)."""
        out = run_git(["log", "--no-walk=unsorted", "--format=%H%x00%B%x1e", *commits], git_dir=self.git_dir,
                      timeout=self.timeout).stdout.decode("utf-8", "replace")
        messages: dict[str, str] = {}
        for record in out.split("\x1e"):
            sha, sep, body = record.strip("\n").partition("\x00")
            if sep:
                messages[sha] = body[:65536]
        return messages

    def signatures(self, commits: Sequence[str]) -> list[CommitSignature]:
        """Signature status of ``commits`` (in order), from one ``cat-file`` call and at most one ``log`` call per
        signature format with a provisioned trust anchor (no git verdict is needed to refuse the others)."""
        if not commits:
            return []
        batch = run_git(["cat-file", "--batch"], git_dir=self.git_dir, timeout=self.timeout,
                        input=("\n".join(commits) + "\n").encode())
        classified: dict[str, tuple[str, str | None]] = {}
        buf, pos = batch.stdout, 0
        for c in commits:
            nl = buf.index(b"\n", pos)
            header = buf[pos:nl].split()
            if len(header) < 3 or header[1] != b"commit":
                raise GitError(f"{c} is not a commit in the local repository")
            object_format = OBJECT_FORMAT_BY_ID_LENGTH.get(len(header[0]))
            if object_format is None:
                raise GitError(f"git named {c} by an object id of unknown length")
            size = int(header[2])
            classified[c] = classify_signature(buf[nl + 1:nl + 1 + size], object_format)
            pos = nl + 1 + size + 1
        anchored = {"ssh": self.allowed_signers is not None, "gpg": self.gpg_keyring is not None}
        seen: dict[str, CommitSignature] = {}
        for fmt, trusted in anchored.items():
            group = list(dict.fromkeys(c for c in commits if classified[c][0] == fmt))
            if trusted and group:
                seen.update((s.commit, s) for s in self.check(fmt, group))
        return [seen.get(c) or CommitSignature(c, classified[c][0], "N", None, None, classified[c][1])
                for c in commits]

    def check(self, fmt: str, commits: Sequence[str]) -> list[CommitSignature]:
        """Git's status of ``commits``, whose one signature is in format ``fmt`` (``ssh`` or ``gpg``), from one
        ``git log`` in which only that format's program can run, against only that format's trust anchor."""
        config: list[str] = ["-c", f"gpg.x509.program={NO_PROGRAM}"]
        env: dict[str, str] = {}
        if fmt == "ssh":
            if self.allowed_signers is None:
                raise ValueError("SSH signatures need an allowed-signers file")
            config += ["-c", "gpg.ssh.program=ssh-keygen", "-c", f"gpg.ssh.allowedSignersFile={self.allowed_signers}",
                       "-c", f"gpg.program={NO_PROGRAM}"]
        elif fmt == "gpg":
            if self.gpg_keyring is None:
                raise ValueError("GPG signatures need a GPG keyring")
            config += ["-c", "gpg.program=gpg", "-c", f"gpg.ssh.program={NO_PROGRAM}"]
            env["GNUPGHOME"] = str(self._gnupg_home())
        else:
            raise ValueError(f"git cannot check {fmt} signatures against a provisioned trust anchor")
        sep = "\x1f"
        out = run_git([*config, "log", "--no-walk=unsorted", f"--format=%H{sep}%G?{sep}%GS{sep}%GK{sep}%GF", *commits],
                      git_dir=self.git_dir, timeout=self.timeout, env=env).stdout.decode("utf-8", "replace")
        seen: dict[str, CommitSignature] = {}
        for line in out.splitlines():
            parts = line.split(sep)
            if len(parts) != 5:
                continue
            sha, status, signer, key, fpr = parts
            seen[sha] = CommitSignature(sha, fmt, status or "N", signer or None, fpr or key or None)
        return [seen.get(c) or CommitSignature(c, fmt, "N", None, None) for c in commits]

    def verify(self, commits: Sequence[str]) -> VerifyResult:
        """All ``commits`` must be signed by a trusted signer — or, for a commit that is not, be named in an
        ``Approve-Unsigned: <sha>`` trailer of a verified commit among ``commits`` (:func:`approved`); the first
        commit that is neither decides the result."""
        results = [judge(s, ssh_trusted=self.allowed_signers is not None, gpg_trusted=self.gpg_keyring is not None)
                   for s in self.signatures(commits)]
        refused = [r for r in results if not r.ok]
        if refused:
            trusted = [c for c, r in zip(commits, results, strict=True) if r.ok]
            grants = approved(self._messages(trusted)) if trusted else {}
            for r in results:
                if not r.ok and not (r.reason in APPROVABLE and r.commit in grants):
                    return r
            names = ", ".join(f"{r.commit[:12]} by {grants[r.commit][:12]}" for r in refused if r.commit)
            results = [r for r in results if r.ok]
            head = results[0]
            return VerifyResult(True, VERIFIED, f"{head.message}; approved unsigned: {names}", head.signer, head.commit)
        if not results:
            return VerifyResult(True, VERIFIED, "no commits to verify")
        head = results[0]
        extra = f" and {len(results) - 1} more commit(s)" if len(results) > 1 else ""
        return VerifyResult(True, VERIFIED, head.message + extra, head.signer, head.commit)
