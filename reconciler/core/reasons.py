"""The reason codes a device reports: one vocabulary for conditions, endpoint states and the failure memory.

Operators alert on these codes, so they are an interface: every CamelCase reason the code can report is listed
in :data:`REASONS` with where it appears, what it means and what to do. The runbook table in
``docs/operations.md`` is generated from this list (``modelfleet docs reasons``), and a test fails when the
docs or any reason literal in the code drift from it.

Grouping: a condition's reason names the *kind* of failure (``Applied=False HealthCheckFailed``); the specific
check (``NonFiniteOutput``, ``ProbeMismatch``, …) is in the endpoint's ``message`` and in ``failures[].reason``,
so an alert on the condition does not need to know every check.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- source (SourceAvailable / SourceVerified) ----------------------------------------------------------------
GIT_UNAVAILABLE = "GitUnavailable"
GIT_TIMEOUT = "GitTimeout"
BRANCH_NOT_FOUND = "BranchNotFound"
BUNDLE_INVALID = "BundleInvalid"
SOURCE_UNAVAILABLE = "SourceUnavailable"
UNSIGNED_COMMIT = "UnsignedCommit"
VERIFICATION_FAILED = "VerificationFailed"
AMBIGUOUS_SIGNATURE = "AmbiguousSignature"
HISTORY_REWRITE = "HistoryRewrite"
SUCCEEDED = "Succeeded"
BUNDLE_IMPORTED = "BundleImported"
VERIFIED = "Verified"
VERIFICATION_DISABLED = "VerificationDisabled"
# -- reaching a Git host or TUF repository (SourceAvailable, StatusReported, ArtifactsReady; docs/hosting.md) --
AUTHENTICATION_FAILED = "AuthenticationFailed"
PERMISSION_DENIED = "PermissionDenied"
TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
CLIENT_CERTIFICATE_REFUSED = "ClientCertificateRefused"
HOST_KEY_VERIFICATION_FAILED = "HostKeyVerificationFailed"
CREDENTIALS_UNREADABLE = "CredentialsUnreadable"
# -- status reporting (StatusReported) -----------------------------------------------------------------------
PUSHED = "Pushed"
PUSH_REJECTED = "PushRejected"
# -- manifests -----------------------------------------------------------------------------------------------
READ_FAILED = "ReadFailed"
VALIDATION_FAILED = "ValidationFailed"
# -- desired state (endpoint state Failed) -------------------------------------------------------------------
NO_MATCHING_VARIANT = "NoMatchingVariant"
RUNTIME_NOT_INSTALLED = "RuntimeNotInstalled"
DEPLOYMENT_CONFLICT = "DeploymentConflict"
UNKNOWN_MODEL_VERSION = "UnknownModelVersion"
# -- artifacts (ArtifactsReady; TufClientError.reason) -------------------------------------------------------
TUF_NOT_CONFIGURED = "TufNotConfigured"
TUF_ERROR = "TufError"
METADATA_EXPIRED = "MetadataExpired"
BAD_SIGNATURE = "BadSignature"
ROLLBACK_ATTACK = "RollbackAttack"
METADATA_MISMATCH = "MetadataMismatch"
BAD_METADATA = "BadMetadata"
TARGET_NOT_FOUND = "TargetNotFound"
TARGET_HASH_MISMATCH = "TargetHashMismatch"
LENGTH_EXCEEDED = "LengthExceeded"
INSUFFICIENT_DISK_SPACE = "InsufficientDiskSpace"
DECRYPTION_FAILED = "DecryptionFailed"
REPOSITORY_UNAVAILABLE = "RepositoryUnavailable"
SLOW_RETRIEVAL = "SlowRetrieval"
STORE_CORRUPTED = "StoreCorrupted"
LOCAL_IO_ERROR = "LocalIOError"
# -- apply (Applied; endpoint messages; failures[]) ----------------------------------------------------------
HEALTH_CHECK_FAILED = "HealthCheckFailed"
LOAD_FAILED = "LoadFailed"
INTERFACE_MISMATCH = "InterfaceMismatch"
INVALID_SPEC = "InvalidSpec"
PROBE_INVALID = "ProbeInvalid"
PROBE_MISMATCH = "ProbeMismatch"
NON_FINITE_OUTPUT = "NonFiniteOutput"
LATENCY_TOO_HIGH = "LatencyTooHigh"
RSS_GROWTH_TOO_HIGH = "RssGrowthTooHigh"
STORE_CORRUPTION = "StoreCorruption"
MISSING_FROM_STORE = "MissingFromStore"
ARTIFACT_UNREADABLE = "ArtifactUnreadable"
# -- the pass as a whole (Ready / Stalled / Reconciling) -----------------------------------------------------
REPEATED_FAILURES = "RepeatedFailures"
NOT_CONVERGED = "NotConverged"
RETRY_SCHEDULED = "RetryScheduled"
INTERNAL_ERROR = "InternalError"
CONVERGED = "Converged"
# -- monitoring (DriftDetected / Degraded; reconciler.drift) ------------------------------------------------
DRIFT_WARNING = "DriftWarning"
DRIFT_ALERT = "DriftAlert"
DRIFT_PINNED = "DriftPinned"
NO_DRIFT = "NoDrift"
INSUFFICIENT_DATA = "InsufficientData"
OPERATIONAL_SIGNALS = "OperationalSignals"
FEEDBACK_BELOW_THRESHOLD = "FeedbackBelowThreshold"
HEALTHY = "Healthy"
# -- serving worker processes (WorkersServing, Applied; reconciler.serving.workers) ---------------------------
WORKERS_UP = "WorkersUp"
WORKER_RESTARTED = "WorkerRestarted"
WORKER_DOWN = "WorkerDown"
WORKER_UNAVAILABLE = "WorkerUnavailable"
LISTEN_FAILED = "ListenFailed"
# -- data capture (status.capture.problems; reconciler.capture) ----------------------------------------------
CAPTURE_DESTINATION_REFUSED = "CaptureDestinationRefused"
# -- shadow evaluation (endpoint `shadow.reason`, failures[]; reconciler.shadow) ---------------------------------
SHADOW_CANDIDATE_ERROR = "ShadowCandidateError"
SHADOW_NON_FINITE_OUTPUT = "ShadowNonFiniteOutput"
SHADOW_DISAGREEMENT = "ShadowDisagreement"
SHADOW_NO_MEMORY = "ShadowNoMemory"
SHADOW_MAX_DURATION = "ShadowMaxDuration"
# -- status trust (operator side: `fleet status`, `fleet history`, `fleet drift`, `rollout`; reconciler.identity) --
STATUS_SIGNED = "Signed"
UNSIGNED_ACCEPTED = "UnsignedAccepted"
NOT_IN_INVENTORY = "NotInInventory"
NO_DEVICE_KEY = "NoDeviceKey"
UNSIGNED_STATUS = "UnsignedStatus"
BAD_STATUS_SIGNATURE = "BadStatusSignature"
WRONG_DEVICE_KEY = "WrongDeviceKey"
STATUS_REWRITTEN = "StatusRewritten"
STATUS_UNREADABLE = "StatusUnreadable"


@dataclass(frozen=True)
class Reason:
    code: str
    where: str  # the condition (or status field) that carries it
    meaning: str
    action: str


REASONS: tuple[Reason, ...] = (
    Reason(GIT_UNAVAILABLE, "SourceAvailable=False", "Git server unreachable (the message has git's error)",
           "The device keeps serving; check network/DNS/deploy key. Recovery is automatic."),
    Reason(GIT_TIMEOUT, "SourceAvailable=False", "Git server did not answer within `source.timeout`",
           "As `GitUnavailable`."),
    Reason(BRANCH_NOT_FOUND, "SourceAvailable=False", "the branch does not exist on the server",
           "Fix `source.branch`."),
    Reason(BUNDLE_INVALID, "SourceAvailable, SourceVerified", "a git bundle dropped in `bundleDir` was refused",
           "Build the bundle from the right branch, including the device's last applied commit."),
    Reason(SUCCEEDED, "SourceAvailable=True", "the branch head was read", "—"),
    Reason(BUNDLE_IMPORTED, "SourceAvailable=True", "the head came from a git bundle (air-gapped update)", "—"),
    Reason(VERIFIED, "SourceVerified=True", "the head (or every new commit) is signed by an allowed signer", "—"),
    Reason(VERIFICATION_DISABLED, "SourceVerified=True", "`source.verify.mode: none`: signatures not checked",
           "Turn verification on for production fleets (docs/git.md)."),
    Reason(SOURCE_UNAVAILABLE, "SourceAvailable=False", "the source could not be polled at all",
           "Read the message; recovery is automatic."),
    Reason(UNSIGNED_COMMIT, "SourceVerified=False", "the head commit carries no signature",
           "Sign the commit (`git commit -S`)."),
    Reason(VERIFICATION_FAILED, "SourceVerified=False",
           "the head commit is not signed by an allowed signer (bad, expired or unknown key)",
           "Re-sign the commit or update `allowed_signers`."),
    Reason(AMBIGUOUS_SIGNATURE, "SourceVerified=False", "a commit carries several signature headers, or only one "
           "git does not verify (`gpgsig-sha256` in a SHA-1 repository): no signing tool writes these",
           "Investigate who pushed the commit (the message names it); re-create it with one signature "
           "(`git commit --amend -S`)."),
    Reason(HISTORY_REWRITE, "SourceVerified=False", "history rewritten (force push or repository rollback)",
           "Restore history, or set `allowHistoryRewrite` deliberately."),
    Reason(AUTHENTICATION_FAILED, "SourceAvailable, StatusReported or ArtifactsReady (False)",
           "the Git host or TUF server refused the credentials (Git: HTTP 401, SSH key refused; TUF: HTTP 401/403)",
           "Check `credentials` (username/passwordFile, token expiry, deploy key added): docs/hosting.md. "
           "The device keeps serving."),
    Reason(PERMISSION_DENIED, "StatusReported or SourceAvailable (False)",
           "the Git host accepted the credentials but refused the access (HTTP 403; a read-only token or deploy "
           "key, a protected branch): a status push needs write access to `status/<device-id>`",
           "Give the device's token or deploy key write access to its `status/<id>` branch (or read access to the "
           "fleet repository for the source), or allow the branch in the host's branch protection: "
           "docs/hosting.md. The device keeps serving."),
    Reason(TLS_VERIFICATION_FAILED, "SourceAvailable, StatusReported or ArtifactsReady (False)",
           "the server's TLS certificate is not trusted or does not name the host",
           "Set `credentials.caFile` to the private CA; check the certificate's subjectAltName and dates."),
    Reason(CLIENT_CERTIFICATE_REFUSED, "SourceAvailable, StatusReported or ArtifactsReady (False); "
           "`status.capture.problems.<endpoint>`; a gateway's `mirror.reason`/`status.reason`/`tuf.reason` "
           "(`modelfleet gateway status`)",
           "the server requires a client certificate (mutual TLS) and none was sent, or it refused the one sent",
           "Set `credentials.clientCertFile` and `clientKeyFile` (capture: `capture.clientCertFile`; a gateway: "
           "`upstream.<server>.credentials`) to a certificate the server's client CA signed (check its dates): "
           "docs/hosting.md. The device keeps serving; capture batches wait within their quota."),
    Reason(HOST_KEY_VERIFICATION_FAILED, "SourceAvailable or StatusReported (False)",
           "the SSH host key is not in `credentials.knownHostsFile`, or it changed",
           "Add the host key after checking its fingerprint out of band; a changed key may be an attack."),
    Reason(CREDENTIALS_UNREADABLE, "SourceAvailable, StatusReported or ArtifactsReady (False)",
           "a credential file is missing, not a regular file, owned by someone else or group/world-readable",
           "`chown` it to the agent's user and `chmod 600` it, or fix the path."),
    Reason(PUSHED, "StatusReported=True", "the newest status landed on `status/<device-id>`", "—"),
    Reason(PUSH_REJECTED, "StatusReported=False", "the server refused the status push for another reason than "
           "credentials (a hook; a protected branch is `PermissionDenied`)",
           "Read the message; allow the device to push `status/<id>`."),
    Reason(READ_FAILED, "ManifestsValid=False", "the commit's files could not be read (e.g. a file over 16 MiB)",
           "Read the message; fix the repository."),
    Reason(VALIDATION_FAILED, "ManifestsValid=False",
           "the commit has invalid manifests, symlinks or other non-regular files (`file:line` in the message)",
           "`modelfleet validate --rev <commit>` in the fleet repo, fix, push."),
    Reason(NO_MATCHING_VARIANT, "endpoint `Failed`", "no variant of the version fits this device's facts",
           "Fix the Model variants' `requires`; the endpoint is left as it is."),
    Reason(RUNTIME_NOT_INSTALLED, "endpoint `Failed` (`Applied=False` if found only at load)", "the version's variants need a runtime this "
           "install lacks (the message names the extra, e.g. `pip install 'modelfleet[openvino]'`)",
           "Install the extra on the device (docs/install.md) or add a variant for an installed runtime; the "
           "endpoint is left as it is."),
    Reason(DEPLOYMENT_CONFLICT, "endpoint `Failed`", "two deployments of equal priority give this endpoint",
           "Set deployment priorities; the endpoint is left as it is."),
    Reason(UNKNOWN_MODEL_VERSION, "endpoint `Failed`", "a deployment names a model version that does not exist",
           "Fix the deployment (`modelfleet validate` catches it)."),
    Reason(TUF_NOT_CONFIGURED, "ArtifactsReady=False", "no TUF metadata/targets URL in the Fleet or agent config",
           "Set `spec.tuf` in `fleet.yaml` or `tuf.metadataUrl`/`targetsUrl` in the agent config."),
    Reason(TUF_ERROR, "ArtifactsReady=False", "an unexpected TUF client failure", "Read the message."),
    Reason(METADATA_EXPIRED, "ArtifactsReady=False", "TUF metadata expired (freeze attack or repository not "
           "refreshed)", "Run `modelfleet repo refresh`; investigate if it was refreshed."),
    Reason(BAD_SIGNATURE, "ArtifactsReady=False", "TUF metadata not signed by a threshold of trusted keys",
           "Investigate tampering; re-sign with the right keys."),
    Reason(ROLLBACK_ATTACK, "ArtifactsReady=False", "the server offers older TUF metadata than already trusted",
           "Investigate: the server or a mirror was rolled back."),
    Reason(METADATA_MISMATCH, "ArtifactsReady=False", "TUF metadata from different moments mixed",
           "Investigate the mirror; republish."),
    Reason(BAD_METADATA, "ArtifactsReady=False", "TUF metadata unreadable or the trusted root missing",
           "Check `tuf.trustedRoot` and the repository."),
    Reason(TARGET_NOT_FOUND, "ArtifactsReady=False", "a target is not signed in TUF for that path",
           "Publish it (`modelfleet repo add`); every pass looks again (no download until it is signed)."),
    Reason(TARGET_HASH_MISMATCH, "ArtifactsReady=False", "a downloaded target does not match its signed hashes "
           "(tampered or corrupt on the server); held back in `failures`",
           "Fix the file on the server; retried on a new commit or target, else after the backoff."),
    Reason(LENGTH_EXCEEDED, "ArtifactsReady=False", "the server sent more bytes than the signed length; held "
           "back in `failures`", "As `TargetHashMismatch`."),
    Reason(INSUFFICIENT_DISK_SPACE, "ArtifactsReady=False", "not enough free space to stage the download",
           "Free disk space; retried with backoff."),
    Reason(DECRYPTION_FAILED, "ArtifactsReady, Applied", "an encrypted model cannot be decrypted on this device",
           "Provision `tuf.decryptionKey`, or re-encrypt for the device's key."),
    Reason(REPOSITORY_UNAVAILABLE, "ArtifactsReady=False", "TUF server unreachable or a transfer was cut",
           "Device keeps serving; downloads resume, recovery is automatic."),
    Reason(SLOW_RETRIEVAL, "ArtifactsReady=False", "a TUF download missed its deadline (`tuf.timeout` + expected "
           "length at `tuf.minBytesPerSecond`) or sent nothing for `tuf.timeout`; the message names the URL, the "
           "bytes received and the time taken", "Device keeps serving; a target resumes from the bytes received "
           "on the next pass. Check the link or the mirror; on a link slower than the minimum rate, lower "
           "`tuf.minBytesPerSecond`."),
    Reason(STORE_CORRUPTED, "ArtifactsReady=False", "a stored blob no longer matched its digest",
           "Quarantined and fetched again automatically; check the disk if it repeats."),
    Reason(LOCAL_IO_ERROR, "ArtifactsReady=False", "the store or staging directory cannot be written",
           "Check the state dir's filesystem and permissions."),
    Reason(HEALTH_CHECK_FAILED, "Applied=False", "a new version failed to load or failed its health check "
           "(the check is in the endpoint message and `failures[].reason`); held back in `failures`",
           "Fix the model; a new version or commit is tried at once."),
    Reason(LOAD_FAILED, "endpoint message, `failures[]`", "the runtime could not load the model file",
           "Check the variant's runtime and files."),
    Reason(INTERFACE_MISMATCH, "endpoint message, `failures[]`", "the model's inputs/outputs differ from the Model",
           "Fix the Model's `inputs`/`outputs` or the model."),
    Reason(INVALID_SPEC, "endpoint message, `failures[]`", "the endpoint spec cannot be served as given",
           "Read the message."),
    Reason(PROBE_INVALID, "endpoint message, `failures[]`", "the probe file cannot be decoded",
           "Regenerate the probe."),
    Reason(PROBE_MISMATCH, "endpoint message, `failures[]`", "outputs differ from the probe's golden outputs",
           "Fix the model or the probe; check the tolerances in the deployment's `health`."),
    Reason(NON_FINITE_OUTPUT, "endpoint message, `failures[]`", "the model produced NaN/infinite outputs",
           "Fix the model."),
    Reason(LATENCY_TOO_HIGH, "endpoint message, `failures[]`", "inference slower than `health.maxLatency`",
           "Pick a faster variant or raise the limit."),
    Reason(RSS_GROWTH_TOO_HIGH, "endpoint message, `failures[]`", "loading grew memory more than allowed",
           "Pick a smaller variant or raise the limit."),
    Reason(STORE_CORRUPTION, "Applied=False", "a stored blob no longer matched its digest when loading",
           "Quarantined and fetched again automatically; check the disk if it repeats."),
    Reason(MISSING_FROM_STORE, "Applied=False", "a blob the journal names is missing from the store",
           "Fetched again on the next pass."),
    Reason(ARTIFACT_UNREADABLE, "Applied=False", "a stored model file cannot be read or decrypted",
           "Read the message; check `tuf.decryptionKey`."),
    Reason(REPEATED_FAILURES, "Stalled=True", "3+ consecutive failed passes", "Read the failing condition above."),
    Reason(NOT_CONVERGED, "Ready=False", "the device does not serve the desired state yet (the message says why)",
           "Read the failing condition or endpoint."),
    Reason(RETRY_SCHEDULED, "Reconciling=True", "another pass is scheduled", "—"),
    Reason(INTERNAL_ERROR, "any step's condition", "a bug: a step raised an unexpected exception (logged as "
           "`step crashed` with a traceback)", "Report it with the log."),
    Reason(CONVERGED, "Ready=True", "the device serves the desired state of `observedCommit`", "—"),
    Reason(DRIFT_WARNING, "DriftDetected=True", "an endpoint's worst feature drifted past `drift.warn` (raised "
           "above the sampling noise of a small window: `drift.warnAt`; message: endpoint, score, worst features)", "See docs/monitoring.md \"When it fires\"; `modelfleet fleet drift`."),
    Reason(DRIFT_ALERT, "DriftDetected=True, `failures[]`", "drift past `drift.alert`; with `drift.action: "
           "rollback` the version was rolled back and is held back", "Find the feature and the devices; retrain "
           "or adjust the thresholds (docs/monitoring.md)."),
    Reason(DRIFT_PINNED, "endpoint `Waiting` (message)", "the serving version's drift is `Alert` under `drift.action: "
           "pin`: the device keeps it and holds the new desired version back", "Investigate the drift; the hold ends "
           "when the verdict clears or `drift.action` is changed in Git (docs/monitoring.md)."),
    Reason(NO_DRIFT, "DriftDetected=False", "every monitored endpoint is within its warn threshold", "—"),
    Reason(INSUFFICIENT_DATA, "DriftDetected=False", "fewer observations than `drift.minSamples` so far", "—"),
    Reason(OPERATIONAL_SIGNALS, "Degraded=True", "error rate, NaN/inf outputs or p99 latency out of bounds "
           "(message per endpoint)", "Read the endpoint's `operational` section and the server metrics."),
    Reason(FEEDBACK_BELOW_THRESHOLD, "Degraded=True", "ground-truth feedback breaks `drift.feedback`: accuracy "
           "below `minAccuracy`, or MAE / RMSE above `maxMae` / `maxRmse`, over at least `minLabelled` labelled rows "
           "(message per endpoint; `OperationalSignals` wins when both apply)", "Compare with the drift of the inputs "
           "and the label-free estimate (`drift.performance`); retrain or roll back (docs/monitoring.md)."),
    Reason(HEALTHY, "Degraded=False", "operational signals and feedback within bounds", "—"),
    Reason(WORKERS_UP, "WorkersServing=True", "every serving worker process is up on the current versions", "—"),
    Reason(WORKER_RESTARTED, "WorkersServing=False", "a serving worker process exited in the last 10 minutes and "
           "was restarted on the current versions (message: worker, pid, exit code, restarts so far)",
           "Read the agent's log (the worker's stderr) around that time; check memory (`VmHWM` per worker)."),
    Reason(WORKER_DOWN, "WorkersServing=False", "a serving worker process is down and being restarted; "
           "`/v2/health/ready` is false meanwhile", "Wait a moment; if it persists, read the agent's log."),
    Reason(WORKER_UNAVAILABLE, "Applied=False", "a serving worker died or hung while preparing a switch: the switch "
           "was aborted in every worker (the old version keeps serving)", "Retried on the next pass; see "
           "`WorkerRestarted`."),
    Reason(LISTEN_FAILED, "Applied=False (message)", "a restarted serving worker could not listen on the port",
           "Read the message (address in use, TLS files)."),
    Reason(CAPTURE_DESTINATION_REFUSED, "`status.capture.problems.<endpoint>`", "the Deployment's capture `destination.url` "
           "is not an origin the agent config allows: not in `capture.allowedOrigins`, or plain `http://` while the "
           "device has an upload token; nothing is sent there (no connection, no token), batches wait within the "
           "quota and retention", "If the origin is genuine, add it (`https://host:port`) to `capture.allowedOrigins` "
           "in the agent config; otherwise revert the Deployment and find out who changed it (docs/privacy.md)."),
    Reason(SHADOW_CANDIDATE_ERROR, "endpoint `shadow.reason` (state Failed), failures[]", "the shadow candidate "
           "raised on a mirrored live request, or its process died (its health check on the probe had passed); it "
           "never serves",
           "Read `shadow.lastError`; fix the model and publish a new version, or `modelfleet rollout abort`."),
    Reason(SHADOW_NON_FINITE_OUTPUT, "endpoint `shadow.reason` (state Failed), failures[]", "the shadow candidate "
           "returned NaN or infinity where the serving version's answer was finite; it never serves",
           "As `ShadowCandidateError`."),
    Reason(SHADOW_DISAGREEMENT, "endpoint `shadow.reason` (state Disagreeing)", "the candidate's agreement with "
           "the serving version is below `minAgreement` over at least `minSamples` rows (`rollout status` refuses "
           "`minShadowAgreement`)", "Compare `shadow.outputs` errors; retrain, or lower the threshold if the "
           "difference is intended."),
    Reason(SHADOW_NO_MEMORY, "endpoint `shadow.reason` (state Refused)", "the device has no room for the candidate "
           "beside the serving version (estimate from the model's size against available memory, the agent's "
           "cgroup limit, `shadow.reserveMB` and `shadow.maxMemoryMB`); it keeps serving", "Give the device more "
           "memory or a smaller variant, or roll this device out without shadow (a selector step)."),
    Reason(SHADOW_MAX_DURATION, "endpoint `shadow.reason`", "the comparison ran `maxDuration`: the candidate was "
           "unloaded, the numbers are final (a busy device may stop short of `minSamples`: see `shadow.mirrored`)",
           "Promote or abort on the final numbers (short of `minSamples`: lower it to count them); a longer "
           "`maxDuration` loads the candidate again and compares anew."),
    Reason(STATUS_SIGNED, "fleet status TRUST=trusted", "the status commit is signed by one of the device's "
           "`spec.statusKeys`", "—"),
    Reason(UNSIGNED_ACCEPTED, "fleet status TRUST=unsigned", "unsigned status counted because the fleet sets "
           "`spec.status.requireSignatures: false` and the Device manifest lists no key (migration)",
           "Provision a key (`modelfleet agent keygen`), list it, then drop `requireSignatures: false`."),
    Reason(NOT_IN_INVENTORY, "fleet status TRUST=untrusted", "a status branch for a device no Device manifest lists; "
           "never counted in a gate", "Add the device to the inventory, or delete the branch (it may be forged)."),
    Reason(NO_DEVICE_KEY, "fleet status TRUST=untrusted", "the fleet requires signed status and the Device manifest "
           "lists no `spec.statusKeys`", "Run `modelfleet agent keygen` on the device and list the key it prints."),
    Reason(UNSIGNED_STATUS, "fleet status TRUST=untrusted", "the device has a status key but this commit is unsigned",
           "Someone other than the device wrote the branch: investigate (docs/security.md)."),
    Reason(BAD_STATUS_SIGNATURE, "fleet status TRUST=untrusted", "the status signature is malformed or does not "
           "match the commit", "As `UnsignedStatus`."),
    Reason(WRONG_DEVICE_KEY, "fleet status TRUST=untrusted", "signed by a key that is not one of the device's (another "
           "device's, or unknown)", "A device key may be stolen or misplaced: rotate it (docs/operations.md)."),
    Reason(STATUS_REWRITTEN, "fleet status TRUST=untrusted", "the status branch moved back to an older commit than "
           "this reader saw (rewritten or replayed)", "Someone rewrote the branch: protect `status/*` (docs/git.md)."),
    Reason(STATUS_UNREADABLE, "fleet status TRUST=untrusted", "the status commit could not be read (too large, "
           "missing)", "As `UnsignedStatus`."),
)

BY_CODE: dict[str, Reason] = {r.code: r for r in REASONS}

#: Artifact failures caused by what the server serves: retrying at once would download the same bad bytes,
#: so they go into the failure memory (retried on a new commit or target, else after a bounded backoff).
#: (``TargetNotFound`` is not among them: retrying it costs no download, and it must be picked up as soon as
#: the target is published.)
HELD_BACK_ARTIFACT_REASONS = frozenset({TARGET_HASH_MISMATCH, LENGTH_EXCEEDED})

#: Reasons of the serving registry's load + health check, reported on ``Applied`` as ``HealthCheckFailed``.
HEALTH_REASONS = frozenset({HEALTH_CHECK_FAILED, LOAD_FAILED, INTERFACE_MISMATCH, INVALID_SPEC, PROBE_INVALID,
                            PROBE_MISMATCH, NON_FINITE_OUTPUT, LATENCY_TOO_HIGH, RSS_GROWTH_TOO_HIGH})

TABLE_BEGIN = "<!-- reasons:begin (generated by `modelfleet docs reasons`; do not edit) -->"
TABLE_END = "<!-- reasons:end -->"


def reason_of(text: str) -> str:
    """The code at the start of a ``"Code: message"`` string (failure records keep both)."""
    head = text.split(":", 1)[0].strip()
    return head if head in BY_CODE else ""


def markdown_table() -> str:
    """The runbook table of ``docs/operations.md`` (between :data:`TABLE_BEGIN` and :data:`TABLE_END`)."""
    rows = ["| Reason | Reported in | Meaning | Action |", "|---|---|---|---|"]
    rows += [f"| `{r.code}` | {r.where} | {r.meaning} | {r.action} |" for r in REASONS]
    return "\n".join(rows) + "\n"
