"""``validate --tuf-repo``: every Model variant's published files checked as a device checks them, before the push.

Each file a device downloads for a variant (its targets, its probe, the version's probe and drift baseline) is
checked in the repository's ``targets/`` against the signed length and hashes, delegated roles included:
``TargetHashMismatch``, ``LengthExceeded``, or ``RepositoryUnavailable`` for a missing or short file. A variant
whose files pass is then loaded in its runtime on this CPU from the verified bytes, as the agent loads it
(``LoadFailed``); its tensors are compared with the Model's ``inputs``/``outputs`` (``InterfaceMismatch``:
names, KServe v2 datatypes, ranks, and fixed dimensions) and its probe is decoded and fitted to the model
(``ArtifactUnreadable``, ``ProbeInvalid``). Each diagnostic points at the manifest line of the target and starts
with the reason a device would report.

Not opened, and said so: encrypted targets (a note: there is no key here; the hash is still checked), a variant
whose runtime is not installed here (a warning), a variant larger than :data:`MAX_OPEN_BYTES` (a warning; its
files are hashed without being kept in memory). A failing variant does not stop the others; a model loaded once
serves every variant with the same files and precision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.diagnostics import ERROR, NOTE, WARNING, Diagnostic
from reconciler.core.errors import UserError
from reconciler.distribution.signedtargets import SignedTargets
from reconciler.distribution.tuferrors import TufClientError
from reconciler.fleet.repository import FleetRepo, Manifest

#: The most a variant's files may hold to be read into memory and opened (the signed lengths are compared first).
MAX_OPEN_BYTES = 2 << 30


@dataclass(frozen=True)
class _Loaded:
    """What loading one model gave: its tensors (TensorMeta), or the runtime's reason and message."""

    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    reason: str = ""
    message: str = ""


@dataclass
class Checked:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: target path → (precision read from the file, or None and why), for ``precision_checks``.
    precisions: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    files: int = 0  # distinct target files checked against their signed hashes
    opened: int = 0  # distinct models loaded in their runtime


def check_published(fleet: FleetRepo, signed: SignedTargets) -> Checked:
    return _Checker(signed).run(fleet)


class _Checker:
    def __init__(self, signed: SignedTargets) -> None:
        self.signed = signed
        self.out = Checked()
        self.verdicts: dict[str, TufClientError | None] = {}
        self.loaded: dict[tuple[Any, ...], _Loaded] = {}
        self.probes: dict[str, Any] = {}

    def run(self, fleet: FleetRepo) -> Checked:
        for m in fleet.models.values():
            for vi, v in enumerate(m.spec.get("versions", [])):
                for section in ("probe", "driftBaseline"):
                    t = (v.get(section) or {}).get("target")
                    if t:
                        self._hash_diag(m, t, "spec", "versions", vi, section, "target")
                for ri, var in enumerate(v.get("variants", [])):
                    try:
                        self._variant(m, vi, v, ri, var)
                    except Exception as exc:  # noqa: BLE001 - one hostile file must not stop the others
                        self.out.diagnostics.append(m.diag(
                            f"LoadFailed: variant {var.get('name')} of {v.get('version')} could not be checked: "
                            f"{type(exc).__name__}: {exc}", "spec", "versions", vi, "variants", ri, code="LoadFailed"))
        self.out.files = len(self.verdicts)
        return self.out

    # -- hashes -------------------------------------------------------------------------------------------------

    def _verdict(self, path: str) -> TufClientError | None:
        if path not in self.verdicts:
            try:
                self.signed.read(path, -1)  # hashed while streamed, never kept
                self.verdicts[path] = None
            except TufClientError as exc:
                self.verdicts[path] = exc
        return self.verdicts[path]

    def _hash_diag(self, m: Manifest, path: str, *where: Any) -> bool:
        """Whether ``path`` is signed and its file matches; an error at ``where`` when the file does not."""
        if self.signed.lookup(path) is None:
            return False  # reported by the semantic checks ("is not signed in the TUF repository")
        err = self._verdict(path)
        if err is not None:
            self.out.diagnostics.append(m.diag(f"{err.reason}: {err}", *where, code=err.reason,
                                               hint="publish the file again (`modelfleet repo add`)"))
        return err is None

    # -- one variant --------------------------------------------------------------------------------------------

    def _variant(self, m: Manifest, vi: int, v: dict[str, Any], ri: int, var: dict[str, Any]) -> None:
        at = ("spec", "versions", vi, "variants", ri)
        targets: list[str] = list(var["targets"])
        ok = [self._hash_diag(m, t, *at, "targets", ti) for ti, t in enumerate(targets)]
        probe_path, probe_at, own_probe = _probe(v, var, vi, ri)
        if probe_path is None or self.signed.lookup(probe_path) is None:
            probe_ok = False
        elif own_probe:  # the variant's own: reported here
            probe_ok = self._hash_diag(m, probe_path, *probe_at)
        else:  # the version's: reported once, at the version
            probe_ok = self._verdict(probe_path) is None
        if not all(ok):
            return
        label = f"variant {var['name']} of {v['version']}"
        runtime, precision = var["runtime"], str(var.get("precision") or "fp32")
        models = [t for t in targets if t.lower().endswith((".onnx", ".xml"))]
        if any(self.signed.encrypted(t) for t in targets):
            self.out.diagnostics.append(m.diag(
                f"{label} not opened: its targets are encrypted (no decryption key here); their hashes match",
                *at, "targets", 0, severity=NOTE, code="not-opened"))
            if var.get("precision"):
                self.out.precisions.update({t: (None, "the target is encrypted") for t in models})
            return
        sizes = [self.signed.lookup(t).length for t in targets]  # type: ignore[union-attr]
        if sum(sizes) > MAX_OPEN_BYTES:
            why = f"its files hold {sum(sizes) >> 20} MiB, over the {MAX_OPEN_BYTES >> 20} MiB validate opens"
            self.out.diagnostics.append(m.diag(f"{label} not opened: {why}; their hashes match", *at, "targets", 0,
                                               severity=WARNING, code="not-opened"))
            if var.get("precision"):
                self.out.precisions.update({t: (None, why) for t in models})
            return
        key = (runtime, precision, *(self.signed.lookup(t).hashes.get("sha256") for t in targets))  # type: ignore[union-attr]
        need_precision = [t for t in models if var.get("precision") and t not in self.out.precisions]
        if key not in self.loaded or need_precision:
            blobs = [self.signed.read(t, MAX_OPEN_BYTES) or b"" for t in targets]
            for t in need_precision:
                self.out.precisions[t] = _precision(t, blobs[targets.index(t)])
            if key not in self.loaded:
                self.loaded[key] = self._load(runtime, blobs, precision)
        loaded = self.loaded[key]
        if loaded.reason == "RuntimeNotInstalled":  # here, where validate runs: not the device's verdict
            self.out.diagnostics.append(m.diag(f"{label} not opened: {loaded.message}; its hashes match", *at,
                                               "targets", 0, severity=WARNING, code="not-opened"))
            return
        if loaded.reason:
            self.out.diagnostics.append(m.diag(f"{loaded.reason}: {label}: {loaded.message}", *at, "targets", 0,
                                               code=loaded.reason))
            return
        self._interface(m, at, label, loaded.inputs, loaded.outputs)
        if probe_ok and probe_path is not None and not self.signed.encrypted(probe_path):
            self._probe_fits(m, probe_path, probe_at, label, loaded.inputs)

    def _load(self, runtime: str, blobs: list[bytes], precision: str) -> _Loaded:
        """Load as the agent does (from bytes, the variant's precision), on the CPU with one thread."""
        from reconciler.serving.runtimes import RuntimeLoadError, load_backend

        try:
            backend = load_backend(runtime, blobs=blobs, threads=1, device="CPU", providers=["CPUExecutionProvider"],
                                   precision=precision)
        except RuntimeLoadError as exc:
            return _Loaded(reason=exc.reason, message=str(exc))
        try:
            self.out.opened += 1
            return _Loaded(list(backend.inputs), list(backend.outputs))
        finally:
            backend.close()

    def _interface(self, m: Manifest, at: tuple[Any, ...], label: str, inputs: Sequence[Any],
                   outputs: Sequence[Any]) -> None:
        from reconciler.serving.interface import interface_problems, shape_findings

        declared_in, declared_out = m.spec.get("inputs", []), m.spec.get("outputs", [])
        hint = (f"fix the Model's inputs (line {m.pos('spec', 'inputs')[0]}) or outputs "
                f"(line {m.pos('spec', 'outputs')[0]}), or publish a model that matches them")
        for problem in interface_problems(declared_in, declared_out, inputs, outputs):
            self.out.diagnostics.append(m.diag(f"InterfaceMismatch: {label}: {problem}", *at, "targets", 0,
                                               hint=hint, code="InterfaceMismatch"))
        for is_error, finding in shape_findings(declared_in, declared_out, inputs, outputs):
            self.out.diagnostics.append(m.diag(
                f"InterfaceMismatch: {label}: {finding}" if is_error else f"{label}: {finding}", *at, "targets", 0,
                hint=hint, code="InterfaceMismatch", severity=ERROR if is_error else WARNING))

    def _probe_fits(self, m: Manifest, path: str, where: tuple[Any, ...], label: str, inputs: Sequence[Any]) -> None:
        from reconciler.serving.health import probe_feeds
        from reconciler.serving.v2.codec import CodecError

        if path not in self.probes:
            try:
                data = self.signed.read(path, MAX_OPEN_BYTES)
                self.probes[path] = json.loads(data) if data is not None else None
            except ValueError as exc:  # bad JSON or UTF-8
                self.probes[path] = ("ArtifactUnreadable", f"probe {path!r} is not JSON: {exc}")
        probe = self.probes[path]
        if probe is None:
            return  # over MAX_OPEN_BYTES: hashed only
        if isinstance(probe, tuple):
            self.out.diagnostics.append(m.diag(f"{probe[0]}: {probe[1]}", *where, code=probe[0]))
            return
        try:
            if not isinstance(probe, dict):
                raise CodecError("the probe is not a JSON object")
            probe_feeds(probe, inputs)
        except CodecError as exc:
            self.out.diagnostics.append(m.diag(f"ProbeInvalid: {label}: probe does not fit the model: {exc}", *where,
                                               code="ProbeInvalid"))


def _probe(v: dict[str, Any], var: dict[str, Any], vi: int, ri: int) -> tuple[str | None, tuple[Any, ...], bool]:
    """The probe target a device health-checks the variant with, where the manifest names it, and whether it is
    the variant's own (else the version's)."""
    own = (var.get("probe") or {}).get("target")
    if own:
        return own, ("spec", "versions", vi, "variants", ri, "probe", "target"), True
    return (v.get("probe") or {}).get("target"), ("spec", "versions", vi, "probe", "target"), False


def _precision(path: str, data: bytes) -> tuple[str | None, str]:
    from reconciler.optimize.inspect import MAX_XML_BYTES, ir_precision, onnx_precision

    try:
        if path.lower().endswith(".xml"):
            if len(data) > MAX_XML_BYTES:
                return None, f"larger than {MAX_XML_BYTES >> 20} MiB"
            return ir_precision(data.decode("utf-8", errors="replace")), ""
        return onnx_precision(data), ""
    except UserError as exc:
        return None, str(exc)
