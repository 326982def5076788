"""The agent's I/O edges, wired from an :class:`~reconciler.agent.config.AgentConfig`.

:class:`Components` builds the project's real parts (Git source, TUF client and content-addressed store,
runtime registry and inference server, status writer, bundle watcher) and exposes the few small methods the
reconcile loop (:mod:`reconciler.agent.loop`) calls. Tests hand the loop a fake ``Components`` to drive it
without a network; nothing here decides what the device should run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.agent.config import DEFAULT_POLL_INTERVAL, AgentConfig
from reconciler.agent.journal import EndpointRecord, TargetRecord, record_rollback
from reconciler.agent.passes import EndpointOutcome
from reconciler.core import conditions as C
from reconciler.core.children import python_child_env
from reconciler.core.credentials import CredentialError, read_secret
from reconciler.core.errors import UserError
from reconciler.core.fsutil import atomic_write_text
from reconciler.core.logs import fields

log = logging.getLogger("reconciler.agent")


def git_source(config: AgentConfig, cache_dir: Path | None = None, verdicts: dict[Any, Any] | None = None) -> Any:
    """The device's Git source (cache in ``cache_dir``, default the state dir's; see ``GitSource`` for
    ``verdicts``)."""
    from reconciler.gitops.source import GitSource

    return GitSource(
        config.source_url, cache_dir or config.git_cache_dir, branch=config.source_branch,
        subpath=config.source_path, verify_mode=config.verify_mode, allowed_signers=config.allowed_signers,
        gpg_keyring=config.gpg_keyring, allow_history_rewrite=config.allow_history_rewrite,
        timeout=config.source_timeout, poll_interval=config.poll_interval or DEFAULT_POLL_INTERVAL,
        credentials=config.source_credentials, verdicts=verdicts,
        mirrors=[(config.gateway_source_url, config.gateway_credentials)] if config.gateway_source_url else None,
        upstream_check=config.gateway_upstream_check,
    )


# --- the I/O edges ------------------------------------------------------------------------------------------


class Components:
    """The agent's I/O edges: Git source, TUF client + store, runtime registry + server, status writer.

    :meth:`real` wires the project's real parts from an :class:`AgentConfig`; the Agent only calls the small
    methods below, which keeps its logic independent of how each part is built.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.source: Any = None
        self.store: Any = None
        self.tuf: Any = None
        self._tuf_urls: tuple[str, str] | None = None
        self.registry: Any = None
        self.server: Any = None
        self.metrics_server: Any = None
        self.status_writer: Any = None
        self.bundle_watcher: Any = None
        self.drift: Any = None
        self.capture: Any = None
        self.shadow: Any = None  # reconciler.agent.shadowing.ShadowSupervisor
        self._decryption_key: bytes | None = None
        self._manifests: tuple[str, Any] | None = None  # (commit, its LoadResult)
        self._status_settings = (config.status_branch_prefix or "status/", config.heartbeat_interval or 300.0)

    @classmethod
    def real(cls, config: AgentConfig) -> Components:
        from reconciler.distribution.store import ModelStore

        c = cls(config)
        for d in (config.state_dir, config.store_dir, config.git_cache_dir, config.tuf_metadata_dir,
                  config.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        c.store = ModelStore(config.store_dir)
        c.source = git_source(config)
        if config.decryption_key is not None:
            from reconciler.distribution.modelcrypto import load_key_file

            c._decryption_key = load_key_file(config.decryption_key)
        return c

    @property
    def url(self) -> str:
        return str(self.server.url) if self.server is not None else ""

    # -- facts and runtime ------------------------------------------------------------------------------------

    def detect_facts(self) -> dict[str, Any]:
        """Hardware facts, detected in a short-lived child process.

        Listing OpenVINO devices loads its plugins (~40 MB that would stay in the agent for its lifetime); a
        child process keeps the agent lean. The last facts are cached in the state dir, so an offline boot
        does not wait for detection.
        """
        cache = self.config.state_dir / "facts.json"
        code = "import json; from reconciler.serving.hwfacts import detect_facts; print(json.dumps(detect_facts()))"
        env = python_child_env()
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
            facts = json.loads(r.stdout) if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            facts = None
        if isinstance(facts, dict):
            with contextlib.suppress(OSError):
                atomic_write_text(cache, json.dumps(facts, sort_keys=True) + "\n")
            return facts
        log.warning("hardware fact detection failed; using the cached facts")
        try:
            return dict(json.loads(cache.read_text()))
        except (OSError, ValueError):
            return {}

    def start_runtime(self) -> None:
        from reconciler.serving.fronts import Fronts, GrpcNotInstalled, grpc_missing
        from reconciler.serving.http.server import InferenceServer
        from reconciler.serving.registry import ModelRegistry

        cfg = self.config
        from reconciler.drift.monitor import DriftSupervisor
        from reconciler.serving.registry import Observers

        token = read_token_file(cfg.auth_token_file, "serving.authTokenFile")
        self.drift = DriftSupervisor()
        self.capture = _capture_service(cfg)

        from reconciler.agent.shadowing import ShadowSupervisor

        self.shadow = ShadowSupervisor(cache_dir=cfg.ov_cache_dir, enabled=cfg.shadow_enabled,
                                       reserve_mb=cfg.shadow_reserve_mb, max_memory_mb=cfg.shadow_max_memory_mb)

        def observers(spec: Any) -> Any:
            return Observers.of(self.drift.observer_for(spec), self.capture.observer_for(spec.name, spec.version),
                                self.shadow.observer_for(spec))

        port = None if cfg.unix_socket else cfg.serving_port
        metrics_registry = None
        if cfg.serving_workers > 1:
            from reconciler.serving.workers.pool import WorkerPool

            # The agent stays the control plane: the pool has the registry's methods, the workers serve.
            self.registry = self.server = WorkerPool(
                cfg.serving_workers, host=cfg.serving_host, port=port, unix_socket=cfg.unix_socket,
                auth_token=token, tls_cert=str(cfg.tls_cert) if cfg.tls_cert else None,
                tls_key=str(cfg.tls_key) if cfg.tls_key else None, limits=cfg.server_limits,
                observer_factory=observers, grpc_port=cfg.serving_grpc_port, pin_cpus=cfg.serving_pin_workers,
                **_registry_kwargs(cfg),
            )
            metrics_registry = self.server.metrics_registry
        else:
            self.registry = ModelRegistry(**_registry_kwargs(cfg), observer_factory=observers)
            http = InferenceServer(
                self.registry, host=cfg.serving_host, port=port, unix_socket=cfg.unix_socket,
                auth_token=token, tls_cert=str(cfg.tls_cert) if cfg.tls_cert else None,
                tls_key=str(cfg.tls_key) if cfg.tls_key else None, limits=cfg.server_limits,
            )
            try:
                self.server = Fronts(http, cfg.serving_grpc_port, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                                     requested_by="serving.grpcPort")
            except GrpcNotInstalled as exc:
                raise UserError(str(exc)) from None
        try:
            self.server.start()
        except GrpcNotInstalled:
            raise UserError(grpc_missing("serving.grpcPort")) from None
        except OSError as exc:
            raise UserError(f"cannot listen on {self.server.url}: {exc.strerror or exc}") from None
        except RuntimeError as exc:  # a worker process that did not start
            raise UserError(f"cannot start the serving workers: {exc}") from None
        if cfg.metrics_enabled and cfg.metrics_port is not None:
            from prometheus_client import REGISTRY, start_http_server

            self.metrics_server = start_http_server(cfg.metrics_port, addr=cfg.metrics_host,
                                                    registry=metrics_registry or REGISTRY)
        if cfg.status_enabled:
            self.status_writer = self._new_status_writer()

    def load_endpoint(self, rec: EndpointRecord, config: AgentConfig, boot: bool) -> tuple[bool, str, str]:
        """Verify the record's blobs in the store and load it on its endpoint (health-checked swap)."""
        from reconciler.distribution.store import StoreCorruption

        try:
            blobs = [self._blob(t) for t in rec.targets]
            probe = json.loads(self._blob(rec.probe)) if rec.probe is not None else None
        except StoreCorruption as exc:
            return False, "StoreCorruption", f"{exc} (quarantined; fetched again on the next pass)"
        except FileNotFoundError as exc:
            return False, "MissingFromStore", str(exc)
        except (ValueError, OSError) as exc:
            return False, "ArtifactUnreadable", str(exc)
        spec = _endpoint_spec(rec, blobs, probe, config)
        result = self.registry.apply(spec)
        if boot and result.ok and self.capture is not None:  # offline boot: the journaled policy until a pass
            self._restore_capture(rec)
        return bool(result.ok), str(getattr(result, "reason", "") or ""), str(getattr(result, "message", "") or "")

    def _blob(self, t: TargetRecord) -> bytes:
        data = self.store.read_verified(t.digest)
        if t.encrypted:
            from reconciler.distribution.modelcrypto import decrypt

            if self._decryption_key is None:
                raise ValueError(f"{t.path} is encrypted and no tuf.decryptionKey is configured")
            data = decrypt(data, self._decryption_key)
        return data

    def serving_endpoints(self) -> set[str]:
        if self.registry is None:
            return set()
        return {name for name, st in self.registry.endpoints().items() if st.version is not None}

    def effective_precision(self, name: str, version: str, declared: str) -> str | None:
        """The precision the runtime computes ``name``'s serving ``version`` in (read back at load; it differs from
        the ``declared`` one where the CPU lacks that format); None when that version is not what serves."""
        st = self.registry.endpoints().get(name) if self.registry is not None else None
        if st is None or st.version != version or st.precision != declared:
            return None
        return st.effective_precision or declared

    def remove_endpoint(self, name: str) -> None:
        self.registry.remove(name)

    def monitoring(self, records: dict[str, Any], endpoints: list[dict[str, Any]]) -> list[tuple[str, bool, str, str]]:
        """Drift and operational sections for the status endpoints, and the device's ``DriftDetected`` and
        ``Degraded`` conditions (none when no endpoint is monitored); see :mod:`reconciler.drift`."""
        if self.drift is None or self.registry is None:
            return []
        self.drift.retire((m.name, m.version) for m in self.registry.models())
        specs = {name: st.active.spec for name, st in records.items() if st.active is not None}
        conds = self.drift.sync(endpoints, specs, lambda t: self._blob(TargetRecord.from_dict(dict(t))))
        return conds if any("operational" in e for e in endpoints) else []

    def workers_condition(self) -> tuple[bool, str, str] | None:
        """``WorkersServing`` with ``serving.workers`` > 1 (None with one event loop in the agent)."""
        import time

        fn = getattr(self.server, "condition", None)
        return fn(time.time()) if fn is not None else None

    def drift_rollbacks(self, endpoints: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Endpoints switched back to their previous version because their drift is ``Alert`` and the
        deployment's ``drift.action`` is ``rollback``: (endpoint, reason) for the journal."""
        from reconciler.drift.settings import rollback_reason

        out = []
        for e in endpoints:
            why = rollback_reason(e)
            if why is not None and self.registry is not None and self.registry.rollback(e["name"]):
                log.warning("drift rollback", extra=fields(endpoint=e["name"], version=e.get("version"), reason=why))
                out.append((e["name"], why))
        return out

    # -- source -----------------------------------------------------------------------------------------------

    def poll(self, last: str | None) -> Any:
        return self.source.poll(last)

    def read_files(self, commit: str) -> dict[str, Any]:
        """The commit's files (bytes, or a ``NonRegular`` for a symlink/submodule the loader reports)."""
        return self.source.read_files(commit)

    def load_manifests(self, commit: str) -> Any:
        """The commit's manifests, loaded and validated (a ``LoadResult``), read again only for a new commit.

        Loading is a pure function of the commit's content, so a heartbeat or retry pass on the same commit
        reuses the last result instead of reading and validating every file again.
        """
        from reconciler.fleet.manifests import load_files

        if self._manifests is not None and self._manifests[0] == commit:
            return self._manifests[1]
        loaded = load_files(self.read_files(commit))
        self._manifests = (commit, loaded)
        return loaded

    def import_bundle(self, path: Path, last: str | None) -> Any:
        return self.source.import_bundle(path, last)

    def watch_bundles(self, on_bundle: Callable[[Path], None]) -> None:
        if self.config.bundle_dir is None:
            return
        from reconciler.gitops.bundles import BundleWatcher

        self.config.bundle_dir.mkdir(parents=True, exist_ok=True)
        self.bundle_watcher = BundleWatcher(self.config.bundle_dir, on_bundle)
        start = getattr(self.bundle_watcher, "start", None)
        if start is not None:
            start()

    # -- artifacts --------------------------------------------------------------------------------------------

    def tuf_refresh(self, metadata_url: str, targets_url: str) -> None:
        if not metadata_url or not targets_url:
            raise StepFailedError("TufNotConfigured", "no TUF metadata/targets URL in the Fleet or agent config")
        if self.tuf is None or self._tuf_urls != (metadata_url, targets_url):
            self.tuf = self._new_tuf_client(metadata_url, targets_url)
            gateway = self.config.gateway_tuf_urls()
            if gateway is not None:  # the site gateway's cache first, with its own (or no) credentials
                from reconciler.agent.failover import FallbackTuf
                from reconciler.core.credentials import Credentials

                near = self._new_tuf_client(*gateway, credentials=self.config.gateway_credentials or Credentials())
                self.tuf = FallbackTuf([(f"gateway {self.config.gateway_url}", near), ("central", self.tuf)])
            self._tuf_urls = (metadata_url, targets_url)
        self.tuf.refresh()

    def _new_tuf_client(self, metadata_url: str, targets_url: str, cls: type[Any] | None = None, **kw: Any) -> Any:
        """The device's TUF client (``cls``: a TufClient subclass, ``kw`` its extra arguments)."""
        from reconciler.distribution.tufclient import TufClient

        cfg = self.config
        kw.setdefault("credentials", cfg.tuf_credentials)
        return (cls or TufClient)(
            cfg.tuf_metadata_dir, metadata_url, targets_url, cfg.trusted_root, self.store,
            staging_dir=cfg.staging_dir, max_concurrent=cfg.max_concurrent_downloads, timeout=cfg.tuf_timeout,
            min_rate=cfg.tuf_min_rate, decryption_key=self._decryption_key, **kw,
        )

    def tuf_fingerprint(self, paths: list[str]) -> str:
        """What the signed metadata currently says these targets are (length and hashes), as one digest.

        The failure memory keys a failed download by it: a re-signed (changed) target gives a new fingerprint
        and is tried at once; the same bad target is not downloaded again before its backoff. A path the
        metadata does not list fingerprints as missing, so publishing it later changes the fingerprint.
        """
        import hashlib

        described = []
        for path in paths:
            try:
                info = self.tuf.target_info(path)
                described.append([path, int(info.length), sorted((str(k), str(v)) for k, v in info.hashes.items())])
            except Exception as exc:  # reported by tuf_fetch with its reason; here it only shapes the key
                described.append([path, None, str(getattr(exc, "reason", "") or type(exc).__name__)])
        return "targets:" + hashlib.sha256(json.dumps(described).encode()).hexdigest()

    def tuf_busy_until(self) -> float | None:
        """When the TUF requests in flight are cut at the latest (monotonic clock); None when none are."""
        fetcher = getattr(self.tuf, "fetcher", None)
        return fetcher.busy_until() if fetcher is not None else None

    def tuf_note(self) -> str:
        """With a site gateway: which TUF place served, and the places asked last for now and why; else ""."""
        note = getattr(self.tuf, "note", None)
        return note() if note is not None else ""

    def tuf_fetch(self, paths: list[str]) -> tuple[dict[str, Any], int]:
        """Targets verified into the store, and how many bytes were actually downloaded."""
        before = self.tuf.bytes_downloaded
        fetched = self.tuf.fetch(paths)
        return fetched, self.tuf.bytes_downloaded - before

    def gc(self, keep: set[str]) -> None:
        if self.store is not None:
            self.store.gc(keep)

    # -- status -----------------------------------------------------------------------------------------------

    def configure_status(self, branch_prefix: str, heartbeat_interval: float) -> None:
        """Follow the Fleet's status branch prefix and heartbeat (unless the agent config pins them)."""
        self._status_settings = (branch_prefix, heartbeat_interval)
        w = self.status_writer
        if w is None:
            return
        w.heartbeat_interval = heartbeat_interval
        if w.branch != f"{branch_prefix}{self.config.device_id}":
            with contextlib.suppress(Exception):
                w.close()
            self.status_writer = self._new_status_writer()

    def _new_status_writer(self) -> Any:
        from reconciler.gitops.statuswriter import StatusWriter

        cfg = self.config
        prefix, heartbeat = self._status_settings
        return StatusWriter(
            cfg.status_url or cfg.source_url, cfg.device_id, cfg.status_work_dir, branch_prefix=prefix,
            heartbeat_interval=heartbeat, signing_key=cfg.status_key_path, timeout=cfg.source_timeout,
            agent_version=__version__, on_push=_count_push, push_spread=cfg.status_push_spread,
            credentials=cfg.status_credentials if cfg.status_credentials is not None else cfg.source_credentials,
            preferred=[(cfg.gateway_status_url, cfg.gateway_credentials)] if cfg.gateway_status_url else None,
        )

    def status_reporting(self) -> dict[str, Any] | None:
        """The status writer's push state (for the ``StatusReported`` condition), None when status is off."""
        return self.status_writer.reporting() if self.status_writer is not None else None

    def submit_status(self, doc: dict[str, Any]) -> bool:
        if self.status_writer is None:
            return False
        self.status_writer.submit(doc)
        return True

    # -- data capture -----------------------------------------------------------------------------------------

    def configure_capture(self, records: dict[str, Any]) -> None:
        """Follow the ``capture`` policy of each endpoint's active version in the journal (updated by apply, also
        for a policy-only change); a policy that cannot be enforced captures nothing and is reported."""
        if self.capture is None:
            return
        from reconciler.capture.policy import PolicyError, parse_policy

        active = {name: st.active for name, st in records.items() if st.active is not None}
        policies, problems = {}, {}
        for name, rec in active.items():
            try:
                policies[name] = parse_policy(rec.spec.get("capture"))
            except PolicyError as exc:
                problems[name] = str(exc)
        self.capture.configure(policies, problems, {n: rec.model for n, rec in active.items()})

    def _restore_capture(self, rec: EndpointRecord) -> None:
        from reconciler.capture.policy import PolicyError, parse_policy

        try:
            policy = parse_policy(rec.spec.get("capture"))
        except PolicyError:
            return
        if policy.enabled:
            self.capture.restore(rec.name, policy, rec.model)

    def capture_section(self, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"capture": …}`` for the status document once some policy enabled capture on this device, else {}.
        The endpoints' drift alerts (from drift monitoring) switch the ``drift`` capture trigger on and off."""
        from reconciler.capture.policy import drifting_endpoints

        c = self.capture
        if c is None:
            return {}
        c.set_drifting(drifting_endpoints(endpoints))
        return {"capture": c.status()} if c.policies or c.spool.batches_dir.exists() else {}

    def release_memory(self) -> None:
        """After a pass: hand freed heap pages back to the OS (see :func:`release_free_memory`)."""
        release_free_memory()

    def close(self) -> None:
        if self.capture is not None:
            with contextlib.suppress(Exception):
                self.capture.close()
        for part, how in ((self.bundle_watcher, "stop"), (self.status_writer, "close"), (self.server, "stop"),
                          (self.source, "close"), (self.drift, "close"), (self.shadow, "close")):
            fn = getattr(part, how, None) if part is not None else None
            if fn is not None:
                with contextlib.suppress(Exception):
                    if part is self.status_writer:
                        part.flush(5.0)
                    fn()
        if self.metrics_server is not None:
            with contextlib.suppress(Exception):
                self.metrics_server[0].shutdown()


def _count_push(landed: bool, reason: str) -> None:
    import time

    from reconciler.agent.metrics import M_STATUS, M_STATUS_FAILURES, M_STATUS_LAST_PUSH

    if landed:
        M_STATUS.inc()
        M_STATUS_LAST_PUSH.set(time.time())
    else:
        M_STATUS_FAILURES.labels(reason).inc()


class StepFailedError(Exception):
    """An edge's failure with a CamelCase ``reason`` (like TufClientError)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_token_file(path: Path | None, setting: str) -> str | None:
    """A token the agent reads once at start, checked like every other secret file (core/credentials.py)."""
    if path is None:
        return None
    try:
        return read_secret(path)
    except CredentialError as exc:
        raise UserError(f"{setting}: {exc.reason}: {exc}") from None


def _capture_service(cfg: AgentConfig) -> Any:
    from reconciler.agent.schedule import window_open
    from reconciler.capture.service import CaptureService
    from reconciler.core.conditions import utcnow

    token = read_token_file(cfg.capture_token_file, "capture.uploadTokenFile")
    return CaptureService(cfg.state_dir, cfg.device_id, upload_token=token,
                          upload_tls=cfg.capture_tls,
                          upload_allowed_origins=cfg.capture_allowed_origins, sealer=cfg.capture_sealer,
                          window_open=lambda w: window_open(w, utcnow()))


def _registry_kwargs(cfg: AgentConfig) -> dict[str, Any]:
    return {"cache_dir": cfg.ov_cache_dir}


def _endpoint_spec(rec: EndpointRecord, blobs: list[bytes], probe: dict[str, Any] | None,
                   cfg: AgentConfig) -> Any:
    from reconciler.serving.registry import EndpointSpec

    s = rec.spec
    return EndpointSpec(
        name=rec.name, version=rec.version, runtime=rec.runtime, variant=rec.variant, blobs=blobs,
        precision=str(s.get("precision") or "fp32"),
        digest=rec.digest, inputs=s.get("inputs") or [], outputs=s.get("outputs") or [],
        health=s.get("health") or {}, probe=probe, strategy=s.get("strategy") or "availability",
        threads=s.get("threads") or cfg.threads, device=s.get("device"), providers=s.get("providers"),
        keep_previous=bool(s.get("keep_previous", True)), batching=s.get("batching"),
    )


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS after a pass (glibc keeps them otherwise): the agent's RSS stays
    near its live size on small devices. A no-op where ``malloc_trim`` does not exist."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


# --- monitoring (reconciler.drift) ----------------------------------------------------------------------------


def monitor_pass(agent: Any, commit: str | None, endpoints: list[dict[str, Any]]) -> None:
    """The agent's monitoring step, once per pass after the status endpoints are known: they get their
    ``drift``/``operational`` sections, the device its ``DriftDetected``/``Degraded`` conditions, and an endpoint
    whose drift is ``Alert`` under ``drift.action: rollback`` goes back to its previous version, the drifting one
    held back in the failure memory; data capture follows the active versions' policies (and drift alerts).
    ``agent`` is the :class:`~reconciler.agent.loop.Agent`."""
    agent.c.configure_capture(agent.journal.endpoints)
    workers = agent.c.workers_condition()
    if workers is not None:
        agent.conditions.set(C.WORKERS_SERVING, *workers, commit)
    for ctype, *cond in agent.c.monitoring(agent.journal.endpoints, endpoints):
        agent.conditions.set(ctype, *cond, commit)
    from reconciler.agent.metrics import M_ROLLBACKS

    for name, why in agent.c.drift_rollbacks(endpoints):
        M_ROLLBACKS.labels(name).inc()
        bad = record_rollback(agent.journal, name, commit, why, agent.clock(), agent.config.state_dir)
        if bad is not None:
            agent._outcomes[name] = EndpointOutcome(name, "Failed", why[:1024], bad.version)
