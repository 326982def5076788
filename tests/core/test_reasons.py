"""One vocabulary of reason codes: every CamelCase reason in the code is registered, the docs table is generated
from the registry, and the reasons the docs name exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from reconciler.core import conditions as C, reasons as R
from reconciler.distribution import tufclient
from tests._cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
CAMEL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+$")
# CamelCase strings in the code that are not reasons: kinds, condition types, class and ONNX op names, selector
# operators, execution providers. Anything else CamelCase is a reason and must be in core/reasons.py.
NOT_REASONS = {
    "AgentConfig", "DeviceStatus", "RolloutStatus", "FleetRepo", "FleetRead", "StatusRecord", "StatusRepo", "LoadResult", "GitSource", "PollResult", "MatMul", "MaxPool",
    "NotIn", "DoesNotExist", "NonRegular", "AzureExecutionProvider", "RuntimeLoadError", "AlreadyActive", "NoChange",
    "OpenVINO",  # the runtime's display name in reconciler.core.extras
    C.SOURCE_AVAILABLE, C.SOURCE_VERIFIED, C.MANIFESTS_VALID, C.ARTIFACTS_READY, C.STATUS_REPORTED, C.DRIFT_DETECTED,
    C.WORKERS_SERVING,
    "DriftBaseline",
    # ONNX operators and OpenVINO layer types `optimize` generates or recognises, /proc/self/status fields
    "GlobalAveragePool", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FakeQuantize", "VmRSS", "VmHWM",
    "ReduceMean",  # modelgen.image_mean
    "ZipMap", "MinMax",  # skl2onnx's map output op; onnxruntime's calibration method (reconciler.optimize)
    "UserError",  # the exception's name, in optimize's step reasons
    "GatewayConfig", "MmapedValue",  # a kind; prometheus_client's multiprocess value class
    # the Open Inference Protocol's gRPC methods (reconciler.serving.grpc)
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
}


def camel_literals() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in sorted((ROOT / "reconciler").rglob("*.py")):
        if f.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and CAMEL.match(node.value):
                found.setdefault(node.value, set()).add(str(f.relative_to(ROOT)))
    return found


def test_every_reason_literal_in_the_code_is_registered() -> None:
    unknown = {k: sorted(v) for k, v in camel_literals().items() if k not in NOT_REASONS and k not in R.BY_CODE}
    assert not unknown, f"register these reasons in reconciler/core/reasons.py (and regenerate the docs): {unknown}"


def test_tuf_client_reasons_are_registered() -> None:
    classes = [tufclient.TufClientError, *tufclient.TufClientError.__subclasses__()]
    missing = sorted(c.reason for c in classes if c.reason not in R.BY_CODE)
    assert not missing and R.TARGET_HASH_MISMATCH in {c.reason for c in classes}


def test_codes_are_unique_camel_case_and_fully_described() -> None:
    codes = [r.code for r in R.REASONS]
    assert len(codes) == len(set(codes))
    for r in R.REASONS:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", r.code) and r.where and r.meaning and r.action, r
    assert R.HELD_BACK_ARTIFACT_REASONS <= set(codes) and R.HEALTH_REASONS <= set(codes)


def test_reason_of_reads_failure_records() -> None:
    assert R.reason_of("TargetHashMismatch: target x: bad hash") == R.TARGET_HASH_MISMATCH
    assert R.reason_of("no code here: x") == ""


def test_operations_guide_table_is_generated_from_the_code() -> None:
    r = run_cli("docs", "reasons", "--check", "-o", str(ROOT / "docs" / "operations.md"))
    assert r.code == 0, r.text
    assert R.markdown_table() in (ROOT / "docs" / "operations.md").read_text()


def test_reasons_the_docs_promise_exist() -> None:
    """A reason named in the docs' failure lists must be one the code can report."""
    pages = {p: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    promised = {
        code for text in pages.values()
        for m in re.finditer(r"(?:reason|Failures carry|False|reports?)[^\n]*", text)
        for code in re.findall(r"`([A-Z][a-z]+(?:[A-Z][a-z]+)+)`", m.group(0))
    }
    promised -= NOT_REASONS | {"DeviceStatus", "TrustedMetadataSet"}
    assert promised, "the docs name no reasons?"
    assert not promised - set(R.BY_CODE), f"docs promise reasons the code never reports: {promised - set(R.BY_CODE)}"
