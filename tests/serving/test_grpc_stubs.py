"""The committed gRPC stubs are what scripts/gen_grpc.py generates from the committed .proto, and our .proto is
the protocol's wire contract: every field tritonclient's own descriptor of the protocol has, by name, number,
type and label."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRPC_DIR = ROOT / "reconciler" / "serving" / "grpc"


def test_regenerating_the_stubs_gives_the_committed_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_grpc", ROOT / "scripts" / "gen_grpc.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_grpc"] = gen
    spec.loader.exec_module(gen)
    from importlib.metadata import version

    assert version("grpcio-tools") == gen.GRPC_TOOLS_VERSION, "the test extra pins the stubs' compiler"
    for path in gen.generate(tmp_path):
        assert path.read_text() == (GRPC_DIR / path.name).read_text(), f"{path.name}: run scripts/gen_grpc.py"


def test_the_proto_is_the_protocols_wire_contract() -> None:
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    from reconciler.serving.grpc import grpc_predict_v2_pb2 as ours

    def fields(fd_module: object) -> dict[str, set[tuple[str, int, int, int, str]]]:
        fd = descriptor_pb2.FileDescriptorProto()
        fd_module.DESCRIPTOR.CopyToProto(fd)  # type: ignore[attr-defined]
        out: dict[str, set[tuple[str, int, int, int, str]]] = {}

        def walk(prefix: str, msgs: object) -> None:
            for m in msgs:  # type: ignore[attr-defined]
                out[prefix + m.name] = {(f.name, f.number, f.type, f.label, f.type_name) for f in m.field}
                walk(prefix + m.name + ".", m.nested_type)

        walk("", fd.message_type)
        return out

    mine, theirs = fields(ours), fields(service_pb2)
    assert set(mine) <= set(theirs)
    for name, fs in mine.items():
        assert fs == theirs[name], name
    assert {m for m in mine if not m.endswith("Entry")} >= {
        "ServerLiveRequest", "ServerReadyResponse", "ModelMetadataResponse.TensorMetadata", "InferParameter",
        "InferTensorContents", "ModelInferRequest.InferInputTensor", "ModelInferResponse"}
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                  "ModelMetadata", "ModelInfer"]
