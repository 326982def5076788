"""The pure core of ``modelfleet check``: facts in, named verdicts out; no I/O, no clock, no environment.

:func:`judge_operator` and :func:`judge_device` turn the facts :mod:`~.facts` gathered into :class:`~.model.Check`
rows, each with a one-line message and, unless it is ok, a hint that says what to do. Every threshold is a
constant here, documented in docs/operations.md and docs/quickstart.md:

- clocks: a warning beyond :data:`CLOCK_WARNING` seconds from a server's ``Date``, an error beyond
  :data:`CLOCK_ERROR` (TUF expiries and TLS certificates are judged by the device's clock);
- TUF roles: an error once expired, a warning when less than ``--expiry-warning`` is left — or less than half
  the role's lifetime, when that is shorter (a 1-day timestamp re-signed by cron warns with 12 h left);
- status: a device is stale when its last heartbeat is older than :data:`STALE_INTERVALS` heartbeat intervals;
- disk: the largest download the fleet names plus the TUF client's reserve must fit (an error), twice over
  (else a warning); with no size known yet, :data:`FIXED_DISK_THRESHOLD`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import shlex
import struct

from reconciler.check.model import (
    ERROR,
    OK,
    WARNING,
    AllowedSignersFile,
    Check,
    DeviceFacts,
    DiskSpace,
    GitInstall,
    HttpProbe,
    OperatorFacts,
    RemoteRef,
    RoleExpiry,
    Runtime,
    SigningConfig,
    StateDir,
    StatusKey,
    StatusSnapshot,
    TufMetadata,
)
from reconciler.core import reasons as R
from reconciler.core.extras import RUNTIME_EXTRAS, missing_runtime
from reconciler.core.units import format_duration
from reconciler.distribution.tufclient import DISK_RESERVE  # kept free beyond a download
from reconciler.distribution.tufrepo import DEFAULT_EXPIRY

CLOCK_WARNING = 60.0
CLOCK_ERROR = 300.0
STALE_INTERVALS = 3
MIN_GIT = (2, 31)  # GIT_CONFIG_COUNT: how credentials reach git without a command line (gitops.auth)
MIN_GIT_SSH_SIGNING = (2, 34)  # gpg.format=ssh: signing and verifying SSH-signed commits
FIXED_DISK_THRESHOLD = 1 << 30
# modelfleet repo's default lifetimes, for metadata whose signing time is unknown; a delegated role lives like
# targets.
DEFAULT_LIFETIME = {role: d.total_seconds() for role, d in DEFAULT_EXPIRY.items()}

SIGNING_HINT = ("git config --global gpg.format ssh; git config --global user.signingkey ~/.ssh/id_ed25519.pub; "
                "git config --global commit.gpgsign true (docs/git.md)")


def size(n: float) -> str:
    """Bytes for people: ``512.0 MiB``, ``3.2 GiB``."""
    for prefix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {prefix}iB"
    return f"{int(n)} B"


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _ago(seconds: float) -> str:
    """A duration in its two largest units: ``23h59m``, ``6d23h``, ``10m0s``, ``5s``."""
    left = int(round(abs(seconds)))
    first = next((i for i, (_, n) in enumerate(_UNITS) if left >= n), len(_UNITS) - 1)
    out = []
    for unit, n in _UNITS[first:first + 2]:
        out.append(f"{left // n}{unit}")
        left %= n
    return "".join(out)


def _stamp(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- operator side -------------------------------------------------------------------------------------------

def judge_operator(facts: OperatorFacts, *, expiry_warning: float) -> list[Check]:
    """Every operator-side check, in the order of the table."""
    out = [git_check(facts.git)]
    if facts.signing is not None:
        out.append(signing_check(facts.signing))
        out.append(allowed_signers_check(facts.signing.allowed_signers))
    if facts.remote is not None:
        out.append(remote_check(facts.remote, device=False))
    if facts.status is not None:
        out += status_checks(facts.status)
    out += tuf_checks(facts.tuf, facts.now, expiry_warning)
    return out


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def git_check(git: GitInstall) -> Check:
    if git.version is None:
        return Check("git", ERROR, f"git is not installed or does not run{': ' + git.error if git.error else ''}",
                     "install git (2.34 or newer): apt-get install git, dnf install git, brew install git")
    have = _version_tuple(git.version)
    if have < MIN_GIT:
        return Check("git", ERROR, f"git {git.version} is older than 2.31 (credentials reach git through "
                                   "GIT_CONFIG_COUNT)", "install git 2.34 or newer")
    if have < MIN_GIT_SSH_SIGNING:
        return Check("git", WARNING, f"git {git.version} cannot sign or verify SSH-signed commits (2.34+)",
                     "install git 2.34 or newer")
    return Check("git", OK, f"git {git.version}")


def signing_check(s: SigningConfig) -> Check:
    fmt = s.gpg_format or "openpgp"
    if not s.signing_key:
        return Check("signing", WARNING, "no user.signingkey: the commits you push (and `modelfleet rollout` "
                                         "writes) are unsigned, and devices with source.verify.mode head or all "
                                         "refuse them", SIGNING_HINT)
    if fmt == "ssh" and s.key_file_exists is False:
        return Check("signing", ERROR, f"user.signingkey {s.signing_key} does not exist (gpg.format ssh)",
                     "point user.signingkey at your SSH key: git config --global user.signingkey "
                     "~/.ssh/id_ed25519.pub")
    if fmt not in ("ssh", "openpgp", "x509"):
        return Check("signing", ERROR, f"gpg.format {fmt!r} is not one git knows (ssh, openpgp, x509)",
                     "git config --global gpg.format ssh")
    if not s.gpgsign:
        return Check("signing", WARNING, f"user.signingkey is set ({fmt}) but commit.gpgsign is not true: commits "
                                         "are signed only with `git commit -S`, and `modelfleet rollout` commits "
                                         "unsigned", "git config --global commit.gpgsign true")
    return Check("signing", OK, f"commits signed with {fmt} key {s.signing_key} (commit.gpgsign true)")


_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


def _is_key_type(token: str) -> bool:
    return token.startswith(_KEY_TYPE_PREFIXES)


def _key_blob_type(b64: str) -> str | None:
    """The key type a base64 SSH public key blob names itself, or None when it is not one."""
    try:
        blob = base64.b64decode(b64, validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        return blob[4:4 + n].decode("ascii") if 0 < n <= 64 and len(blob) >= 4 + n else None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None


def parse_allowed_signers(text: str) -> tuple[int, list[str]]:
    """(signer lines, problems as ``line N: …``) of an allowed-signers file (ssh-keygen(1), ALLOWED SIGNERS):
    ``PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY [COMMENT]`` per line, ``#`` comments and blank lines ignored."""
    entries, problems = 0, []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line, posix=False)
        except ValueError:
            problems.append(f"line {n}: unbalanced quotes")
            continue
        i = 1 if len(tokens) > 1 and not _is_key_type(tokens[1]) else 0
        i += 1  # past the principals (and the options, if any)
        if len(tokens) < i + 2 or not _is_key_type(tokens[i]):
            problems.append(f"line {n}: expected PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY")
            continue
        kind = _key_blob_type(tokens[i + 1])
        if kind is None:
            problems.append(f"line {n}: the key is not valid base64 SSH public key data")
        elif kind != tokens[i]:
            problems.append(f"line {n}: the key says it is {kind}, the line says {tokens[i]}")
        else:
            entries += 1
    return entries, problems


def allowed_signers_check(f: AllowedSignersFile | None) -> Check:
    name = "allowed signers"
    if f is None:
        return Check(name, OK, "none configured (`modelfleet rollout` then needs --allowed-signers FILE to verify "
                               "the branch before it commits)")
    where = f"{f.path} ({f.origin})"
    if f.text is None:
        return Check(name, ERROR, f"cannot read {where}: {f.error}",
                     f"fix {f.origin}, or create the file with the keys your devices trust (docs/git.md)")
    entries, problems = parse_allowed_signers(f.text)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check(name, ERROR, f"{f.path}: {problems[0]}{more}",
                     'each line: PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY, e.g. ops@example.com namespaces="git" '
                     "ssh-ed25519 AAAA… (ssh-keygen(1), ALLOWED SIGNERS)")
    if entries == 0:
        return Check(name, WARNING, f"{where} lists no signer: nothing verifies",
                     "add the public keys of the people and bots that sign fleet commits")
    return Check(name, OK, f"{where}: {entries} signer{'s' if entries != 1 else ''}")


_REMOTE_HINTS = {
    R.AUTHENTICATION_FAILED: "give --username with --password-file (a token), or check your credential helper / "
                             "SSH key's access to the repository",
    R.TLS_VERIFICATION_FAILED: "give --ca-file with the server's CA bundle",
    R.HOST_KEY_VERIFICATION_FAILED: "add the server's host key to ~/.ssh/known_hosts (compare its fingerprint "
                                    "with the host's first)",
    R.GIT_TIMEOUT: "is the host reachable from here? A slow server needs a longer --timeout",
    R.CREDENTIALS_UNREADABLE: "make the password file a private file (chmod 600) of yours",
}
_DEVICE_REMOTE_HINTS = {
    R.AUTHENTICATION_FAILED: "check source.credentials (username/passwordFile, bearer token or sshKeyFile) and "
                             "that the token or deploy key has read access (docs/hosting.md)",
    R.TLS_VERIFICATION_FAILED: "set source.credentials.caFile to the server's CA bundle, or extraCaFile to add it to "
                               "the system's (docs/hosting.md)",
    R.CLIENT_CERTIFICATE_REFUSED: "set source.credentials.clientCertFile and clientKeyFile to a certificate the "
                                  "server's client CA signed (docs/hosting.md#client-certificates-mutual-tls)",
    R.HOST_KEY_VERIFICATION_FAILED: "put the server's host key in source.credentials.knownHostsFile (docs/hosting.md)",
    R.GIT_TIMEOUT: "is the Git host reachable from the device (DNS, firewall, proxy)? source.timeout sets the limit",
    R.CREDENTIALS_UNREADABLE: "fix the credential file (see its own check above)",
}


def remote_check(r: RemoteRef, *, device: bool) -> Check:
    name = "git source" if device else "fleet repository"
    if r.error:
        hints = _DEVICE_REMOTE_HINTS if device else _REMOTE_HINTS
        default = ("is source.url right, and the host reachable from the device?" if device else
                   "is --repo right (a URL git understands, or a clone's path), and the host reachable?")
        text = f"cannot reach {r.url}: {r.error}" if r.url else r.error
        return Check(name, ERROR, text, hints.get(r.reason or "", default))
    if r.head is None:
        setting = "source.branch" if device else "--base"
        return Check(name, ERROR, f"{r.url} has no branch {r.branch}",
                     f"{setting} names the desired-state branch; is it pushed?")
    return Check(name, OK, f"{r.url}: {r.branch} at {r.head[:12]} ({r.seconds:.1f}s)")


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def status_checks(s: StatusSnapshot) -> list[Check]:
    """Heartbeat freshness and the statuses' trust, from what ``fleet status`` read."""
    if s.error:
        return [Check("status", ERROR, f"cannot read the status branches: {s.error}",
                      "`modelfleet fleet status` with the same options shows the full error")]
    window = STALE_INTERVALS * s.heartbeat_interval
    counted = [d for d in s.devices if d.trust != "untrusted" and not d.unreadable]
    stale = sorted(d.device for d in counted if d.age_seconds is None or d.age_seconds > window)
    never = f"; {len(s.never_reported)} in the inventory never reported" if s.never_reported else ""
    every = f"{format_duration(window)} ({STALE_INTERVALS} heartbeat intervals of {format_duration(s.heartbeat_interval)})"
    out: list[Check] = []
    if not counted:
        out.append(Check("status freshness", OK, f"no device status to judge yet{never}"))
    elif stale:
        out.append(Check("status freshness", WARNING,
                         f"{len(stale)} of {len(counted)} devices have not reported for over {every}: "
                         f"{_names(stale)}{never}",
                         "`modelfleet fleet status` shows their last report; on a device, `modelfleet check "
                         "--agent-config /etc/modelfleet/agent.yaml` and `systemctl status modelfleet-agent`"))
    else:
        n = len(counted)
        out.append(Check("status freshness", OK, f"{n} device{'s' if n != 1 else ''} reported within {every}{never}"))
    untrusted = sorted(f"{d.device} ({d.trust_reason})" if d.trust_reason else d.device
                       for d in s.devices if d.trust == "untrusted")
    unsigned = sorted(d.device for d in s.devices if d.trust == "unsigned")
    unreadable = sorted(d.device for d in s.devices if d.unreadable and d.trust != "untrusted")
    if not s.inventory:
        out.append(Check("status trust", WARNING, "the manifests at the branch head do not load: without the "
                                                  "inventory every status is untrusted",
                         "`modelfleet validate --rev <branch>` shows what is wrong"))
    elif untrusted:
        out.append(Check("status trust", WARNING,
                         f"{len(untrusted)} device status{'es are' if len(untrusted) != 1 else ' is'} untrusted and "
                         f"not counted: {_names(untrusted)}",
                         "list each device's key (`modelfleet agent keygen --show` on it) in devices/<id>.yaml "
                         "spec.statusKeys; `modelfleet fleet status` says why each one is refused"))
    elif unsigned:
        out.append(Check("status trust", WARNING,
                         f"{len(unsigned)} device{'s report' if len(unsigned) != 1 else ' reports'} unsigned status "
                         f"(accepted while spec.status.requireSignatures is false): {_names(unsigned)}",
                         "provision each device's key (`modelfleet agent keygen`), list it in its manifest, then "
                         "drop requireSignatures: false (docs/operations.md)"))
    elif unreadable:
        out.append(Check("status trust", WARNING,
                         f"{len(unreadable)} signed status{'es are' if len(unreadable) != 1 else ' is'} unreadable: "
                         f"{_names(unreadable)}", "`modelfleet fleet status` shows why"))
    elif s.devices:
        n = len(s.devices)
        whose = "their devices' listed keys" if n != 1 else "its device's listed key"
        out.append(Check("status trust", OK, f"{n} status{'es' if n != 1 else ''} signed by {whose}"))
    return out


_EXPIRED_HINT = {
    "timestamp": "re-sign it now: modelfleet repo refresh TUF_DIR --keys KEYS; and run that from cron "
                 "(every 6 hours for a 1-day timestamp, docs/publishing.md)",
    "snapshot": "re-sign it now: modelfleet repo refresh TUF_DIR --keys KEYS (from cron, docs/publishing.md)",
    "targets": "re-sign targets: any `modelfleet repo add` or `repo remove` signs it with a fresh expiry",
    "root": "sign a new root version (`modelfleet repo rotate-key` writes one; docs/security.md)",
}
_SOON_HINT = {
    "timestamp": "is the `modelfleet repo refresh` cron job running? It re-signs snapshot and timestamp",
    "snapshot": "is the `modelfleet repo refresh` cron job running? It re-signs snapshot and timestamp",
    "targets": "re-sign targets before then: any `modelfleet repo add` or `repo remove` gives it a fresh expiry",
    "root": "sign a new root version before then (`modelfleet repo rotate-key`; docs/security.md)",
}
_DELEGATED_HINT = "the team that holds the role's key re-signs it (any `modelfleet repo add` under its prefix)"


def role_window(role: RoleExpiry, expiry_warning: float) -> float:
    """How long before ``role`` expires it starts to warn: ``expiry_warning``, or half its lifetime if shorter."""
    lifetime = None
    if role.signed_at is not None:
        lifetime = (role.expires - role.signed_at).total_seconds()
    if lifetime is None or lifetime <= 0:
        lifetime = DEFAULT_LIFETIME.get(role.role, DEFAULT_LIFETIME["targets"])
    return min(expiry_warning, lifetime / 2)


def role_check(role: RoleExpiry, now: _dt.datetime, expiry_warning: float) -> Check:
    name = f"tuf {role.role}"
    left = (role.expires - now).total_seconds()
    top = role.role in _EXPIRED_HINT
    what = "devices refuse the repository's metadata (MetadataExpired) and stop updating models; they keep " \
           "serving what they have"
    if left <= 0:
        return Check(name, ERROR, f"version {role.version} expired {_ago(left)} ago ({_stamp(role.expires)}): {what}",
                     _EXPIRED_HINT[role.role] if top else _DELEGATED_HINT)
    window = role_window(role, expiry_warning)
    if left <= window:
        then = ("devices stop updating models" if role.role != "root" else
                "devices can no longer update their trusted root and stop updating models")
        return Check(name, WARNING, f"version {role.version} expires in {_ago(left)} ({_stamp(role.expires)}): "
                                    f"when it does, {then}",
                     _SOON_HINT[role.role] if top else _DELEGATED_HINT)
    return Check(name, OK, f"version {role.version}, expires in {_ago(left)} ({_stamp(role.expires)})")


def tuf_checks(t: TufMetadata | None, now: _dt.datetime, expiry_warning: float) -> list[Check]:
    if t is None:
        return [Check("tuf metadata", WARNING, "no TUF repository to check: none given and the Fleet names no "
                                               "spec.tuf.metadataUrl",
                      "give --tuf-repo DIR (the publisher's repository) or --tuf-url URL (where devices fetch "
                      "metadata)")]
    if t.error:
        hint = ("is the URL right and the server up? Devices fetch <metadataUrl>/timestamp.json"
                if t.location.startswith(("http://", "https://")) else
                "give the directory `modelfleet repo init` made (it holds metadata/root.json)")
        return [Check("tuf metadata", ERROR, f"{t.location} ({t.origin}): {t.error}", hint)]
    answer = f", timestamp.json: HTTP {t.http_status}" if t.http_status is not None else ""
    out = [Check("tuf metadata", OK, f"{t.location} ({t.origin}{answer}): {len(t.roles)} roles")]
    order = {"root": 0, "timestamp": 1, "snapshot": 2, "targets": 3}
    for role in sorted(t.roles, key=lambda r: (order.get(r.role, 4), r.role)):
        out.append(role_check(role, now, expiry_warning))
    return out


# -- device side ---------------------------------------------------------------------------------------------

def judge_device(facts: DeviceFacts) -> list[Check]:
    """Every device-side check, in the order of the table; only the config's when it does not load."""
    if facts.config_error:
        return [Check("config", ERROR, facts.config_error,
                      "fix the file (every setting: docs/operations.md; schema: schemas/agentconfig.schema.json; "
                      "a complete sample: systemd/agent.yaml)")]
    out = [Check("config", OK, f"{facts.config_path}: device {facts.device_id}")]
    if facts.state_dir is not None:
        out.append(state_dir_check(facts.state_dir))
    out += private_file_checks(facts)
    out += anchor_checks(facts)
    if facts.status_key is not None:
        out.append(status_key_check(facts.status_key))
    if facts.source is not None:
        out.append(remote_check(facts.source, device=True))
    out.append(tuf_server_check(facts.tuf_http))
    if facts.gateway_git is not None:
        out.append(gateway_check("gateway git", facts.gateway_git))
    if facts.gateway_tuf is not None:
        out.append(gateway_check("gateway tuf", facts.gateway_tuf))
    out.append(clock_check("clock vs Git server", facts.git_http))
    out.append(clock_check("clock vs TUF server", facts.tuf_http))
    if facts.disk is not None:
        out.append(disk_check(facts.disk))
    out.append(runtimes_check(facts.runtimes))
    return out


def state_dir_check(s: StateDir) -> Check:
    if s.writable:
        return Check("state dir", OK, f"{s.path} is writable" if s.exists else
                     f"{s.path} does not exist yet; the agent creates it")
    return Check("state dir", ERROR, f"{s.path} is not writable by this user: {s.problem or 'permission denied'}",
                 f"chown -R modelfleet: {s.path} (the agent's user), and run the check as that user "
                 "(sudo -u modelfleet modelfleet check …)")


def _private_hint(path: str, mode: int | None, problem: str) -> str:
    if "does not exist" in problem:
        return "create it (mode 600, owned by the agent's user), or fix the setting"
    if "owned by" in problem:
        return f"chown modelfleet {path} (the agent's user), and run the check as that user"
    if mode is not None and mode & 0o077:
        return f"chmod 600 {path}"
    return "make it a regular file (mode 600) the agent's user owns"


def private_file_checks(facts: DeviceFacts) -> list[Check]:
    bad = [f for f in facts.private_files if f.problem]
    out = [Check(f.setting, ERROR, f.problem, _private_hint(f.path, f.mode, f.problem)) for f in bad]
    good = [f.setting for f in facts.private_files if not f.problem]
    if good:
        out.append(Check("secret files", OK, f"{', '.join(good)}: private (no group or world access)"))
    elif not facts.private_files:
        out.append(Check("secret files", OK, "none in the config"))
    return out


def anchor_checks(facts: DeviceFacts) -> list[Check]:
    out = [Check(a.setting, ERROR, a.problem, "provision the file, or fix the setting (docs/operations.md, "
                                              "Installing on a device)")
           for a in facts.anchors if a.problem]
    good = [a.setting for a in facts.anchors if not a.problem]
    if good:
        out.append(Check("trust anchors", OK, f"{', '.join(good)}: readable"))
    return out


def status_key_check(k: StatusKey) -> Check:
    name = "status key"
    if not k.enabled:
        return Check(name, OK, "status reporting is off (status.enabled: false)")
    if k.path is None:
        return Check(name, WARNING, f"no status signing key at {k.default_path}: status will be unsigned, and fleets "
                                    "that require signatures do not count it",
                     "run modelfleet agent keygen --config <this config>, and add the printed line to the device's "
                     "manifest (spec.statusKeys)")
    if k.problem:
        return Check(name, ERROR, k.problem, _private_hint(k.path, None, k.problem) if "permissions" not in k.problem
                     else f"chmod 600 {k.path}")
    return Check(name, OK, f"{k.path} ({k.fingerprint}); the device's manifest must list its public key")


def tuf_server_check(p: HttpProbe | None) -> Check:
    name = "tuf server"
    if p is None or p.note:
        return Check(name, WARNING, f"not checked: {p.note if p else 'no TUF metadata URL known'}",
                     "set tuf.metadataUrl, or run `modelfleet agent once` so the device caches the Fleet's spec.tuf")
    if p.status is None:
        return Check(name, ERROR, f"cannot reach {p.url}: {p.error}",
                     "is tuf.metadataUrl (or the Fleet's spec.tuf.metadataUrl) right, and the server reachable "
                     "from the device?")
    if p.status in (401, 403):
        return Check(name, ERROR, f"{p.url} refused the credentials (HTTP {p.status})",
                     "check tuf.credentials (bearerTokenFile or username/passwordFile; docs/hosting.md)")
    if p.error:  # it answered, but not to us: a client certificate missing or refused
        return Check(name, ERROR, p.error, "set tuf.credentials.clientCertFile and clientKeyFile to a certificate "
                                           "the server's client CA signed (docs/hosting.md#client-certificates-mutual-tls)")
    if p.status >= 400:
        return Check(name, ERROR, f"{p.url} answers HTTP {p.status}",
                     "is tuf.metadataUrl (or the Fleet's spec.tuf.metadataUrl) right?")
    return Check(name, OK, f"{p.url} answers (HTTP {p.status})")


def gateway_check(name: str, p: HttpProbe) -> Check:
    """The site gateway (``gateway.url``): the agent asks it first and goes to the servers themselves while it does
    not answer, so a gateway that is down is a warning; one that refuses the device is a misconfiguration."""
    if p.status is None and not p.cert_refused:
        return Check(name, WARNING, f"cannot reach {p.url}: {p.error}; until it answers, the device polls and "
                                    "downloads from the servers themselves",
                     "is gateway.url right, and `modelfleet gateway run` up at the site? (docs/gateway.md)")
    if p.status in (401, 403):
        return Check(name, ERROR, f"{p.url} refused the credentials (HTTP {p.status})",
                     "check gateway.credentials (docs/gateway.md)")
    if p.cert_refused:
        return Check(name, ERROR, p.error, "set gateway.credentials.clientCertFile and clientKeyFile to a certificate "
                                           "the gateway's client CA signed (docs/hosting.md#client-certificates-mutual-tls)")
    if p.status is not None and p.status >= 400:
        return Check(name, ERROR, f"{p.url} answers HTTP {p.status}",
                     "gateway.url is the gateway's base URL (it serves /git/fleet.git and /tuf/ under it)")
    return Check(name, OK, f"{p.url} answers (HTTP {p.status})")


def clock_check(name: str, p: HttpProbe | None) -> Check:
    server = name.split(" vs ", 1)[-1]
    if p is None:
        return Check(name, OK, f"not measured: the {server} is not reached over HTTP(S) (no Date header)")
    if p.note:  # why nothing was asked: the server's own check says what to do
        return Check(name, OK, f"not measured: {p.note}")
    if p.offset is None:
        return Check(name, WARNING, f"not measured: {p.error or 'no Date header in the answer'}",
                     "see the server's own check above")
    off = p.offset
    way = "behind" if off > 0 else "ahead of"
    text = f"this device's clock is {_ago(off)} {way} the {server}'s ({p.url})"
    hint = ("TUF expiry checks and TLS certificates are judged by this clock: enable NTP (timedatectl set-ntp true) "
            "or set the time")
    if abs(off) > CLOCK_ERROR:
        return Check(name, ERROR, text, hint)
    if abs(off) > CLOCK_WARNING:
        return Check(name, WARNING, text, hint)
    return Check(name, OK, f"within {_ago(off)} of the {server}'s clock")


def disk_check(d: DiskSpace) -> Check:
    name = "disk space"
    if d.free is None:
        return Check(name, WARNING, f"cannot measure the free space of {d.path}: {d.error}", "")
    if d.largest is None:
        basis = "no model size known yet (the device has no fleet manifests and TUF metadata cached): checked " \
                f"against {size(FIXED_DISK_THRESHOLD)}"
        if d.free < FIXED_DISK_THRESHOLD:
            return Check(name, WARNING, f"{size(d.free)} free in {d.path}; {basis}",
                         "free space, or put stateDir on a larger filesystem")
        return Check(name, OK, f"{size(d.free)} free in {d.path}; {basis}")
    label, largest = d.largest
    need = largest + DISK_RESERVE
    what = f"the largest model the fleet names ({label}) is {size(largest)}"
    if d.free < need:
        return Check(name, ERROR, f"{size(d.free)} free in {d.path}, {what}: its download needs {size(need)} "
                                  "(InsufficientDiskSpace)", "free space, or put stateDir on a larger filesystem")
    if d.free < largest + need:
        return Check(name, WARNING, f"{size(d.free)} free in {d.path}, {what}: room for one such download only",
                     "free space before the next version, or put stateDir on a larger filesystem")
    return Check(name, OK, f"{size(d.free)} free in {d.path}; {what}")


def runtimes_check(runtimes: tuple[Runtime, ...]) -> Check:
    name = "runtimes"
    have = [r for r in runtimes if r.version is not None]
    if not have:
        return Check(name, ERROR, "no inference runtime is installed (neither ONNX Runtime nor OpenVINO)",
                     "pip install modelfleet (ONNX Runtime); Intel devices: pip install 'modelfleet[openvino]'")
    installed = ", ".join(f"{r.name} {r.version}" for r in have)
    missing = [r for r in runtimes if r.version is None and r.needed]
    if missing:
        r = missing[0]
        label = RUNTIME_EXTRAS.get(r.name, (r.name,))[0]
        return Check(name, WARNING, f"{installed}; {label} is not installed, and the fleet's models have {r.name} "
                                    "variants (RuntimeNotInstalled where no other variant fits)",
                     missing_runtime(r.name).split(": ", 1)[-1])
    absent = [r.name for r in runtimes if r.version is None]
    return Check(name, OK, installed + (f" ({', '.join(absent)}: not installed, not needed)" if absent else ""))
