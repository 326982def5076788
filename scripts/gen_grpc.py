#!/usr/bin/env python3
"""Generate the gRPC stubs of reconciler/serving/grpc/grpc_predict_v2.proto (run after editing the .proto).

    python scripts/gen_grpc.py            # rewrites grpc_predict_v2_pb2.py and grpc_predict_v2_pb2_grpc.py
    python scripts/gen_grpc.py --out DIR  # writes them to DIR instead (tests/serving/test_grpc_stubs.py compares)

Needs grpcio-tools at GRPC_TOOLS_VERSION (the test extra pins it: the generated text names the compiler's
version). protoc's output is changed in two ways, both needed on a device:

- the descriptors go to a private descriptor pool, not protobuf's default one: the message names are the
  protocol's (``inference.ModelInferRequest``…), which tritonclient and other v2 clients register in the default
  pool too, and one process may hold both (our tests do; so may an application embedding the agent);
- protobuf's gencode version gate is dropped: the module uses only the descriptor builder that every protobuf
  runtime since 4.21 has, and the gate would refuse any runtime older than the compiler (tritonclient[grpc]
  holds protobuf below 7).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("reconciler/serving/grpc/grpc_predict_v2.proto")
GRPC_TOOLS_VERSION = "1.85.4"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(ROOT / PROTO)])
        if rc != 0:
            raise SystemExit(f"protoc failed ({rc})")
        written = []
        for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
            text = (Path(tmp) / PROTO.parent / name).read_text()
            if name.endswith("_pb2.py"):
                text = _private_pool(text)
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
            written.append(out / name)
    return written


def _private_pool(text: str) -> str:
    text, n = re.subn(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)
    text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    text, m = re.subn(r"DESCRIPTOR = _descriptor_pool\.Default\(\)\.AddSerializedFile\(",
                      "# modelfleet: a private pool (scripts/gen_grpc.py says why).\n"
                      "_POOL = _descriptor_pool.DescriptorPool()\n"
                      "DESCRIPTOR = _POOL.AddSerializedFile(", text)
    if n != 1 or m != 1:
        raise SystemExit("protoc's output changed shape: update scripts/gen_grpc.py")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / PROTO.parent)
    args = ap.parse_args()
    import grpc_tools

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if version != GRPC_TOOLS_VERSION:
        print(f"warning: grpcio-tools {version}, the committed stubs come from {GRPC_TOOLS_VERSION}", file=sys.stderr)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
