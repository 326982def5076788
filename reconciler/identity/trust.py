"""Which status commits count: the pure decision, from the commit and the inventory alone (no I/O, no clock).

    policy = TrustPolicy.from_inventory({"cam-1": ["ssh-ed25519 AAAA…"]}, require_signatures=True)
    judge_status("cam-1", raw_commit, policy)  -> StatusTrust(trusted=True, reason="Signed", …)

A status commit on ``status/<device>`` is **trusted** when the device is in the inventory and the commit carries
exactly one SSH signature that verifies against one of the keys the inventory lists for that device — or,
only while the fleet sets ``spec.status.requireSignatures: false`` (the migration path) and the inventory
lists no key for the device, when it is unsigned. Every other commit is **untrusted** with one of
:data:`UNTRUSTED_REASONS`; a device with a key never falls back to unsigned. :func:`judge_replay` flags a
branch whose newest commit is older than one a reader saw before (a rewritten or replayed status branch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core import reasons as R
from reconciler.identity import sshsig
from reconciler.identity.commitsig import CommitFormatError, split_signed_commit

SIGNED = R.STATUS_SIGNED
UNSIGNED_ACCEPTED = R.UNSIGNED_ACCEPTED
NOT_IN_INVENTORY = R.NOT_IN_INVENTORY
NO_DEVICE_KEY = R.NO_DEVICE_KEY
UNSIGNED = R.UNSIGNED_STATUS
BAD_SIGNATURE = R.BAD_STATUS_SIGNATURE
WRONG_KEY = R.WRONG_DEVICE_KEY
AMBIGUOUS_SIGNATURE = R.AMBIGUOUS_SIGNATURE
REWRITTEN = R.STATUS_REWRITTEN
UNREADABLE = R.STATUS_UNREADABLE

TRUSTED_REASONS = (SIGNED, UNSIGNED_ACCEPTED)
# reason -> what it means, for docs/security.md and `fleet status`'s legend
UNTRUSTED_REASONS: dict[str, str] = {
    NOT_IN_INVENTORY: "a status branch for a device that no Device manifest lists",
    NO_DEVICE_KEY: "the fleet requires signed status and the device's manifest lists no `spec.statusKeys`",
    UNSIGNED: "the device has a status key but this commit is not signed",
    BAD_SIGNATURE: "the signature is malformed or does not match the commit",
    WRONG_KEY: "signed by a key that is not one of this device's `spec.statusKeys` (another device's, or unknown)",
    AMBIGUOUS_SIGNATURE: "more than one signature header, or a gpgsig-sha256 header",
    REWRITTEN: "the branch now points at a status older than one read before (rewritten or replayed)",
    UNREADABLE: "the commit or its status.yaml could not be read (too large, missing)",
}


@dataclass(frozen=True)
class StatusTrust:
    trusted: bool
    reason: str
    message: str
    key: str | None = None  # the signing key's fingerprint, when signed

    @property
    def label(self) -> str:
        return "trusted" if self.reason == SIGNED else "unsigned" if self.trusted else "untrusted"


@dataclass(frozen=True)
class TrustPolicy:
    """The inventory's status keys at the desired-state revision, and the fleet's signature setting."""

    keys: Mapping[str, tuple[bytes, ...]]  # every inventory device -> its status key blobs (maybe none)
    require_signatures: bool = True
    invalid: Mapping[str, str] = field(default_factory=dict)  # device -> why a listed key was unusable

    @classmethod
    def from_inventory(cls, keys: Mapping[str, Iterable[str]], *, require_signatures: bool = True) -> TrustPolicy:
        blobs: dict[str, tuple[bytes, ...]] = {}
        invalid: dict[str, str] = {}
        for device, lines in keys.items():
            good = []
            for line in lines:
                try:
                    good.append(sshsig.parse_public_key(line))
                except sshsig.SignatureError as exc:
                    invalid[device] = str(exc)
            blobs[device] = tuple(good)
        return cls(blobs, require_signatures, invalid)

    def owner(self, blob: bytes) -> str | None:
        return next((d for d, ks in self.keys.items() if blob in ks), None)


def judge_status(device: str, raw_commit: bytes | None, policy: TrustPolicy) -> StatusTrust:
    """Whether the status commit ``raw_commit`` on ``status/<device>`` counts (see the module docstring)."""
    if device not in policy.keys:
        return StatusTrust(False, NOT_IN_INVENTORY, f"no Device manifest names {device!r}")
    if raw_commit is None:
        return StatusTrust(False, UNREADABLE, "the status commit could not be read")
    try:
        commit = split_signed_commit(raw_commit)
    except CommitFormatError as exc:
        return StatusTrust(False, AMBIGUOUS_SIGNATURE if "signature" in str(exc) or "gpgsig" in str(exc)
                           else UNREADABLE, str(exc))
    keys = policy.keys[device]
    if not keys:
        if policy.require_signatures:
            why = f" (its key is unusable: {policy.invalid[device]})" if device in policy.invalid else ""
            return StatusTrust(False, NO_DEVICE_KEY, f"the fleet requires signed status and the Device manifest "
                                                     f"lists no status key for {device!r}{why}")
        return StatusTrust(True, UNSIGNED_ACCEPTED, "accepted without a signature (spec.status.requireSignatures: "
                                                    "false and no key in the Device manifest)")
    if commit.signature is None:
        return StatusTrust(False, UNSIGNED, f"{device!r} has a status key but the commit is not signed")
    try:
        parsed = sshsig.signer_blob(commit.signature)
        signer = parsed[0]
    except sshsig.SignatureError as exc:
        return StatusTrust(False, BAD_SIGNATURE, f"unusable signature: {exc}")
    fpr = sshsig.fingerprint(signer)
    if signer not in keys:
        other = policy.owner(signer)
        whose = f"the key of device {other!r}" if other else "a key no Device manifest lists"
        return StatusTrust(False, WRONG_KEY, f"signed with {whose} ({fpr}), not one of {device!r}'s", fpr)
    try:
        sshsig.verify(commit.payload, commit.signature, signer, parsed=parsed)
    except sshsig.SignatureError as exc:
        return StatusTrust(False, BAD_SIGNATURE, str(exc), fpr)
    return StatusTrust(True, SIGNED, f"signed by {device!r}'s key {fpr}", fpr)


def judge_replay(device: str, seen: tuple[str, int] | None, current: tuple[str, int]) -> StatusTrust | None:
    """``None`` when ``current`` (commit, committer time) may follow ``seen`` on the branch, else an untrusted
    verdict: a branch that moved to an older status than a reader saw before was rewritten or replayed."""
    if seen is None or seen[0] == current[0] or current[1] >= seen[1]:
        return None
    return StatusTrust(False, REWRITTEN, f"status/{device} moved from {seen[0][:12]} to the older commit "
                                         f"{current[0][:12]}: the branch was rewritten or an old status replayed")
