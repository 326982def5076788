"""What ``modelfleet check`` gathers and what it decides: plain, frozen data with no behaviour.

The facts are what :mod:`~.facts` observed (a version string, a file's refusal, a server's ``Date`` header, a
role's expiry); a :class:`Check` is what :mod:`~.judge` made of them. Keeping both here, apart from the code
that produces them, lets a test build any situation — an expired timestamp, a clock ten minutes off — without
a server or a clock.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

OK, WARNING, ERROR = "ok", "warning", "error"
STATUSES = (OK, WARNING, ERROR)


@dataclass(frozen=True)
class Check:
    """One named verdict: ``status`` is ok, warning or error; ``hint`` says what to do (empty when ok)."""

    name: str
    status: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Report:
    """One side's checks, in the order they ran."""

    side: str  # operator | device
    checks: tuple[Check, ...]

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def failed(self, strict: bool = False) -> list[Check]:
        """The checks that make the command fail: errors, and warnings too with ``strict``."""
        bad = (ERROR, WARNING) if strict else (ERROR,)
        return [c for c in self.checks if c.status in bad]


# -- shared ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteRef:
    """One ``ls-remote`` of the branch: where it points, or why it could not be asked."""

    url: str  # redacted
    branch: str
    head: str | None = None
    error: str = ""
    reason: str | None = None  # AuthenticationFailed, TLSVerificationFailed, HostKeyVerificationFailed, GitTimeout
    seconds: float = 0.0


# -- operator side -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GitInstall:
    version: str | None  # "2.39.5"; None: git is not on PATH or does not run
    error: str = ""


@dataclass(frozen=True)
class AllowedSignersFile:
    path: str
    origin: str  # MODELFLEET_ALLOWED_SIGNERS or gpg.ssh.allowedSignersFile
    text: str | None  # None: unreadable
    error: str = ""


@dataclass(frozen=True)
class SigningConfig:
    """The operator's git signing settings (``git config``, as a commit in the current directory would see them)."""

    signing_key: str | None = None  # user.signingkey
    gpg_format: str | None = None  # gpg.format (git's default: openpgp)
    gpgsign: bool | None = None  # commit.gpgsign; None: unset
    key_file_exists: bool | None = None  # gpg.format=ssh with a key path: whether it exists; None: not a path
    allowed_signers: AllowedSignersFile | None = None  # None: neither the variable nor git's setting names one


@dataclass(frozen=True)
class RoleExpiry:
    role: str
    version: int
    expires: _dt.datetime
    # When this version was written (file mtime, HTTP Last-Modified): with ``expires``, the role's lifetime.
    signed_at: _dt.datetime | None = None


@dataclass(frozen=True)
class TufMetadata:
    """The repository's current metadata as the operator can read it (unverified: expiries only)."""

    location: str  # a directory or a metadata URL
    origin: str  # --tuf-repo, --tuf-url or "the Fleet's spec.tuf.metadataUrl"
    roles: tuple[RoleExpiry, ...] = ()
    error: str = ""
    http_status: int | None = None  # the answer for timestamp.json (URLs only)


@dataclass(frozen=True)
class DeviceBeat:
    """One status branch as ``fleet status`` judged it."""

    device: str
    trust: str  # trusted | unsigned | untrusted
    trust_reason: str = ""
    age_seconds: float | None = None  # since the last heartbeat; None: none readable
    unreadable: bool = False


@dataclass(frozen=True)
class StatusSnapshot:
    devices: tuple[DeviceBeat, ...] = ()
    never_reported: tuple[str, ...] = ()
    heartbeat_interval: float = 300.0
    inventory: bool = True  # the manifests at the head loaded (else every status is untrusted)
    error: str = ""


@dataclass(frozen=True)
class OperatorFacts:
    now: _dt.datetime
    git: GitInstall
    signing: SigningConfig | None = None  # None: not asked (no git)
    remote: RemoteRef | None = None
    tuf: TufMetadata | None = None  # None: no TUF repository given or named by the Fleet
    status: StatusSnapshot | None = None  # None: not read (the repository is unreachable)


# -- device side -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrivateFile:
    """A secret the agent reads, with :func:`reconciler.core.credentials.check_private_file`'s refusal."""

    setting: str  # where the config names it, e.g. source.credentials.passwordFile
    path: str
    problem: str = ""  # empty: a regular file owned by the agent's user or root, not group/world readable
    mode: int | None = None


@dataclass(frozen=True)
class AnchorFile:
    """A public file the agent needs (trusted root, allowed signers, CA, known hosts): must exist and be readable."""

    setting: str
    path: str
    problem: str = ""


@dataclass(frozen=True)
class StatusKey:
    enabled: bool  # status reporting on
    path: str | None = None  # the key the agent will sign with; None: none configured and none at the default path
    default_path: str = ""
    fingerprint: str | None = None
    problem: str = ""


@dataclass(frozen=True)
class HttpProbe:
    """One request to a server the device talks to: its answer and its clock."""

    server: str  # "Git server", "TUF server", "gateway (Git)" or "gateway (TUF)"
    url: str  # redacted
    status: int | None = None  # HTTP status; None: no answer
    offset: float | None = None  # the server's Date minus this device's clock, seconds
    error: str = ""
    note: str = ""  # why nothing was asked (not an HTTP URL, no URL known)
    cert_refused: bool = False  # the server refused this device's client certificate, or wanted one


@dataclass(frozen=True)
class DiskSpace:
    path: str
    free: int | None = None
    largest: tuple[str, int] | None = None  # (model version variant, bytes) of the largest download the fleet names
    error: str = ""


@dataclass(frozen=True)
class Runtime:
    name: str  # onnxruntime | openvino
    version: str | None = None  # None: not installed
    needed: bool = False  # a variant of the fleet's models runs on it


@dataclass(frozen=True)
class StateDir:
    path: str
    exists: bool
    writable: bool
    problem: str = ""


@dataclass(frozen=True)
class DeviceFacts:
    config_path: str
    config_error: str = ""  # the loader's refusal (file:line: problem); nothing else is gathered then
    device_id: str = ""
    private_files: tuple[PrivateFile, ...] = ()
    anchors: tuple[AnchorFile, ...] = ()
    status_key: StatusKey | None = None
    source: RemoteRef | None = None
    git_http: HttpProbe | None = None
    tuf_http: HttpProbe | None = None
    gateway_git: HttpProbe | None = None  # None: no gateway in the config
    gateway_tuf: HttpProbe | None = None
    disk: DiskSpace | None = None
    runtimes: tuple[Runtime, ...] = field(default_factory=tuple)
    state_dir: StateDir | None = None
