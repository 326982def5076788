"""The deployment's ``capture`` section as a checked policy, and every capture decision as a pure function.

Nothing here reads a clock, a file or a random source: callers pass the time and a uniform random number, so
sampling, triggers, redaction and purge selection are tested exactly (and statistically) without I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reconciler.core.units import parse_duration

# Triggers, in the order a record is attributed to them (a record captured for several reasons is counted once).
REJECTED = "rejected"
DRIFT = "drift"
LOW_CONFIDENCE = "lowConfidence"
SAMPLED = "sampled"

DEFAULT_BATCH_RECORDS = 256
DEFAULT_BATCH_INTERVAL = 300.0
DEFAULT_IDLE_FOR = 30.0


class PolicyError(ValueError):
    """A capture section that cannot be enforced (the device then captures nothing for that endpoint)."""


@dataclass(frozen=True)
class Redaction:
    """Columns of a tabular input ([rows, columns]) to drop (removed) or mask (set to zero)."""

    input: str
    columns: tuple[int, ...]
    action: str = "drop"


@dataclass(frozen=True)
class CapturePolicy:
    """One endpoint's enforced capture policy (see ``schemas/deployment.schema.json`` ``spec.capture``)."""

    enabled: bool = False
    purpose: str = ""
    campaign: str = ""
    recipient: bytes = b""  # X25519 public key of the data owner (32 bytes); never a private key
    sample_rate: float = 0.0
    low_confidence_output: str | None = None
    low_confidence_below: float | None = None
    on_drift: bool = False
    on_rejected: bool = False
    keep_inputs: tuple[str, ...] | None = None  # None: all inputs
    keep_outputs: tuple[str, ...] | None = None  # None: all outputs; (): none
    redactions: tuple[Redaction, ...] = ()
    max_bytes: int = 0
    retention: float = 0.0
    batch_records: int = DEFAULT_BATCH_RECORDS
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    destination_url: str | None = None
    destination_dir: str | None = None
    upload_when: str = "always"  # always | idle | window
    idle_for: float = DEFAULT_IDLE_FOR
    window: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    max_bytes_per_second: int | None = None

    @property
    def key_id(self) -> str:
        """Short public fingerprint of the recipient key: names the campaign key in batch headers."""
        return recipient_key_id(self.recipient) if self.recipient else ""

    @property
    def keeps_everything(self) -> bool:
        """Every input and output, unredacted: minimisation leaves a record as it is."""
        return self.keep_inputs is None and self.keep_outputs is None and not self.redactions

    @property
    def wants_outputs(self) -> bool:
        return self.keep_outputs is None or bool(self.keep_outputs)


def recipient_key_id(public_key: bytes) -> str:
    return hashlib.sha256(b"modelfleet-capture-recipient\0" + public_key).hexdigest()[:16]


def decode_public_key(text: str) -> bytes:
    """A recipient key as written in Git: base64 of the 32-byte X25519 public key."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("capture.recipient is not base64") from None
    if len(raw) != 32:
        raise PolicyError(f"capture.recipient must be a 32-byte X25519 public key (got {len(raw)} bytes)")
    return raw


def parse_policy(section: Mapping[str, Any] | None) -> CapturePolicy:
    """The enforced policy of a schema-valid ``capture`` section; absent or disabled → capture nothing."""
    s = dict(section or {})
    if not s.get("enabled", False):
        return CapturePolicy()
    for required in ("purpose", "campaign", "recipient", "maxBytes", "retention", "destination"):
        if required not in s:
            raise PolicyError(f"capture is enabled but capture.{required} is missing")
    triggers = s.get("triggers") or {}
    low = triggers.get("lowConfidence") or {}
    keep = s.get("keep") or {}
    dest = s.get("destination") or {}
    upload = dest.get("upload") or {}
    batch = s.get("batch") or {}
    try:
        retention = parse_duration(s["retention"])
        interval = parse_duration(batch.get("interval", DEFAULT_BATCH_INTERVAL))
        idle_for = parse_duration(upload.get("idleFor", DEFAULT_IDLE_FOR))
    except ValueError as exc:
        raise PolicyError(f"capture: {exc}") from None
    if not (dest.get("url") or dest.get("directory")):
        raise PolicyError("capture.destination needs a url or a directory")
    reds = tuple(
        Redaction(r["input"], tuple(sorted(set(int(c) for c in r["columns"]))), r.get("action", "drop"))
        for r in s.get("redact") or []
    )
    return CapturePolicy(
        enabled=True,
        purpose=str(s["purpose"]),
        campaign=str(s["campaign"]),
        recipient=decode_public_key(s["recipient"]),
        sample_rate=float(s.get("sampleRate", 0.0)),
        low_confidence_output=low.get("output"),
        low_confidence_below=float(low["below"]) if "below" in low else None,
        on_drift=bool(triggers.get("drift", False)),
        on_rejected=bool(triggers.get("rejected", False)),
        keep_inputs=tuple(keep["inputs"]) if "inputs" in keep else None,
        keep_outputs=tuple(keep["outputs"]) if "outputs" in keep else None,
        redactions=reds,
        max_bytes=int(s["maxBytes"]),
        retention=retention,
        batch_records=int(batch.get("records", DEFAULT_BATCH_RECORDS)),
        batch_interval=interval,
        destination_url=dest.get("url"),
        destination_dir=dest.get("directory"),
        upload_when=str(upload.get("when", "always")),
        idle_for=idle_for,
        window=upload.get("window"),
        max_bytes_per_second=upload.get("maxBytesPerSecond"),
    )


# --- per-request decisions (cheap: they run on the request path) ---------------------------------------------


def min_confidence(outputs: Mapping[str, np.ndarray], output: str | None) -> float | None:
    """The lowest per-row top score of ``output`` (a [rows, classes] probability/score tensor)."""
    if output is None:
        return None
    arr = outputs.get(output)
    if arr is None or arr.size == 0 or arr.dtype.kind not in "fiu":
        return None
    top = arr.reshape(arr.shape[0], -1).max(axis=1) if arr.ndim > 1 else arr
    return float(top.min())


def capture_trigger(policy: CapturePolicy, u: float, *, confidence: float | None = None,
                    drifting: bool = False, rejected: bool = False) -> str | None:
    """Why this request is captured (a trigger name), or None. ``u`` is uniform in [0, 1)."""
    if not policy.enabled:
        return None
    if rejected:
        return REJECTED if policy.on_rejected else None
    if drifting and policy.on_drift:
        return DRIFT
    if (policy.low_confidence_below is not None and confidence is not None
            and confidence < policy.low_confidence_below):
        return LOW_CONFIDENCE
    if u < policy.sample_rate:
        return SAMPLED
    return None


def drifting_endpoints(status_endpoints: Iterable[Mapping[str, Any]]) -> set[str]:
    """Endpoints whose drift alert is on, read from the status document's endpoints (``drift.level: Alert``,
    written by drift monitoring): the ``drift`` trigger captures them while it lasts."""
    return {e["name"] for e in status_endpoints if (e.get("drift") or {}).get("level") == "Alert"}


# --- minimisation (off the request path) ---------------------------------------------------------------------


def minimise(policy: CapturePolicy, inputs: Mapping[str, np.ndarray],
             outputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Only what the policy keeps: selected inputs/outputs, redacted columns dropped or zeroed (a policy that
    keeps everything gets the given mappings back, not copies: callers do not change them).

    A redaction of a tensor that is not tabular (rank 2) drops the whole tensor: a rule that cannot be applied
    exactly never lets the data through.
    """
    if policy.keeps_everything:
        return inputs, outputs  # type: ignore[return-value]  # everything is kept: the same mappings, no copy
    keep_in = inputs if policy.keep_inputs is None else {k: v for k, v in inputs.items() if k in policy.keep_inputs}
    kept_inputs = dict(keep_in)
    rules: dict[str, list[Redaction]] = {}
    for r in policy.redactions:
        rules.setdefault(r.input, []).append(r)
    for name, rs in rules.items():  # column indices always name the request's columns
        arr = kept_inputs.get(name)
        if arr is None:
            continue
        cols = {c for r in rs for c in r.columns}
        if arr.ndim != 2 or (cols and max(cols) >= arr.shape[1]):
            del kept_inputs[name]
            continue
        masked = sorted({c for r in rs if r.action == "mask" for c in r.columns})
        dropped = sorted({c for r in rs if r.action != "mask" for c in r.columns})
        if masked:
            arr = arr.copy()
            arr[:, masked] = 0
        if dropped:
            arr = np.delete(arr, dropped, axis=1)
        kept_inputs[name] = arr
    if policy.keep_outputs is None:
        kept_outputs = dict(outputs)
    else:
        kept_outputs = {k: v for k, v in outputs.items() if k in policy.keep_outputs}
    return kept_inputs, kept_outputs


# --- retention and quota ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBatch:
    """What the purge decision needs to know of a batch on disk (all from its plaintext header)."""

    id: str
    created: float
    size: int
    endpoint: str = ""
    key_id: str = ""


def select_purge(batches: Iterable[StoredBatch], now: float, *, retention: float | None, max_bytes: int | None,
                 live_key_ids: set[str] | None = None) -> list[tuple[StoredBatch, str]]:
    """Batches to delete and why (``retired-key``, ``expired``, ``quota``), oldest first.

    ``live_key_ids``: recipient keys some current policy still names; a batch sealed to any other key belongs to
    a retired campaign (None: the desired state is not known yet, retire nothing).
    """
    ordered = sorted(batches, key=lambda b: (b.created, b.id))
    out: list[tuple[StoredBatch, str]] = []
    kept: list[StoredBatch] = []
    for b in ordered:
        if live_key_ids is not None and b.key_id not in live_key_ids:
            out.append((b, "retired-key"))
        elif retention is not None and now - b.created > retention:
            out.append((b, "expired"))
        else:
            kept.append(b)
    if max_bytes is not None:
        total = sum(b.size for b in kept)
        for b in kept:
            if total <= max_bytes:
                break
            out.append((b, "quota"))
            total -= b.size
    return out


def select_room(batches: Iterable[StoredBatch], incoming: int, max_bytes: int, *,
                incoming_key: tuple[float, str] | None = None) -> list[StoredBatch] | None:
    """Batches to delete, oldest first, so that a new batch of ``incoming`` bytes keeps the endpoint within
    ``max_bytes`` the moment it is written (the quota holds at every write, not at the next sweep).

    None when the new batch is not written: alone it is larger than ``max_bytes`` (evicting older data could not
    make it fit), or — given its ``incoming_key`` (created, id) — it is older than a batch that would have to go
    for it, so it is the one that goes (a batch that waited in memory for an upload that failed can be older than
    what reached the disk meanwhile; the quota keeps the newest data). Nothing is deleted for it either way.
    """
    if incoming > max_bytes:
        return None
    ordered = sorted(batches, key=lambda b: (b.created, b.id))
    total = sum(b.size for b in ordered)
    out: list[StoredBatch] = []
    for b in ordered:
        if total + incoming <= max_bytes:
            break
        if incoming_key is not None and incoming_key < (b.created, b.id):
            return None
        out.append(b)
        total -= b.size
    return out


def select_erasure(batches: Iterable[StoredBatch], *, before: float | None = None,
                   endpoint: str | None = None) -> list[StoredBatch]:
    """Batches an erasure request (``modelfleet data purge``) covers: created before ``before`` / of ``endpoint``."""
    return sorted((b for b in batches if (before is None or b.created < before)
                   and (endpoint is None or b.endpoint == endpoint)), key=lambda b: (b.created, b.id))


def upload_allowed(policy: CapturePolicy, *, idle_seconds: float, window_open: bool) -> bool:
    """Upload only when the policy's condition holds: always, after ``idleFor`` without requests, or in a window."""
    if policy.upload_when == "idle":
        return idle_seconds >= policy.idle_for
    if policy.upload_when == "window":
        return window_open
    return True


def backoff_delay(failures: int, u: float, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter after ``failures`` consecutive failed uploads."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 16)) * (0.5 + 0.5 * u)
