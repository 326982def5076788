"""``validate --tuf-repo``: every variant's targets must be signed in the given TUF repository, their files must
match the signed hashes, and each model must load in its runtime with the interface its Model declares — what a
device would refuse is refused before the push, at the manifest line, with the reason the device reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.devkit.modelgen import identity_model, make_probe, matmul_model, to_openvino_ir
from reconciler.distribution import modelcrypto, tufrepo
from reconciler.serving.registry import EndpointSpec, ModelRegistry
from tests._cli import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ORT_DATASETS = Path(__import__("onnxruntime").__file__).parent / "datasets"

MODEL = """\
apiVersion: modelfleet/v1
kind: Model
metadata:
  name: tiny
spec:
  task: regression
  inputs:
    - {{name: {in_name}, datatype: {in_type}, shape: {in_shape}}}
  outputs:
    - {{name: {out_name}, datatype: FP32, shape: {out_shape}}}
  versions:
    - version: "1.0.0"
      variants:
        - {{name: onnx, runtime: onnxruntime, targets: [tiny/1.0.0/model.onnx]}}
    - version: "1.1.0"
      variants:
        - {{name: onnx, runtime: onnxruntime, targets: [tiny/1.1.0/model.onnx]}}
"""


class Repo:
    """A fleet (the corpus with its Model rewritten) and a TUF repository to publish into."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fleet = tmp / "fleet"
        shutil.copytree(CORPUS / "base", self.fleet)
        self.manifest = self.fleet / "models" / "tiny.yaml"
        self.tuf, self.keys = tmp / "tuf", tmp / "keys"
        tufrepo.init_repo(self.tuf, self.keys)

    def model(self, text: str | None = None, **decl: str) -> None:
        fields = {"in_name": "input", "in_type": "FP32", "in_shape": "[-1, 16]", "out_name": "output",
                  "out_shape": "[-1, 4]", **decl}
        self.manifest.write_text(text if text is not None else MODEL.format(**fields))

    def publish(self, data: bytes, prefix: str, name: str = "model.onnx", **kw: object) -> Path:
        src = self.tmp / "src" / prefix / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        key_dirs = kw.pop("key_dirs", [self.keys, tufrepo.default_root_keys_dir(self.keys)])
        row = tufrepo.add_targets(self.tuf, key_dirs, [src], prefix, **kw)[0]  # type: ignore[arg-type]
        return self.tuf / "targets" / tufrepo.target_url_path(row.path, row.sha256)

    def validate(self, *extra: str):  # type: ignore[no-untyped-def]
        return run_cli("validate", "--tuf-repo", str(self.tuf), *extra, str(self.fleet))

    def at(self, line: int) -> str:
        return f"{self.manifest}:{line}:"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def _device_refusal(data: bytes, inputs: list[dict], outputs: list[dict]) -> tuple[str, str]:
    """What the device's registry answers for this model and these declarations."""
    reg = ModelRegistry()
    try:
        r = reg.apply(EndpointSpec(name="tiny", version="1.0.0", blobs=[data], inputs=inputs, outputs=outputs,
                                   probe=None, health={"warmupRuns": 1}))
        return r.reason, r.message
    finally:
        reg.remove("tiny")


def test_missing_targets_are_reported_with_location(repo: Repo) -> None:
    repo.model()
    repo.publish(matmul_model(), "tiny/1.0.0")

    r = repo.validate()
    assert r.code == 1, r.text
    # 1.0.0 is published; 1.1.0 is not, and the error points at its target line in models/tiny.yaml
    assert "tiny/1.0.0/model.onnx" not in r.err
    assert repo.at(17) in r.err and "'tiny/1.1.0/model.onnx' is not signed" in r.err

    repo.publish(matmul_model(), "tiny/1.1.0")
    ok = repo.validate()
    assert ok.code == 0, ok.text

    missing = run_cli("validate", "--tuf-repo", str(repo.tmp / "nope"), str(repo.fleet))
    assert missing.code == 1 and "cannot read TUF repository" in missing.err and "Traceback" not in missing.text


def test_a_model_that_matches_its_declaration_is_opened_and_passes(repo: Repo) -> None:
    repo.model()
    repo.publish(matmul_model(seed=1), "tiny/1.0.0")
    repo.publish(matmul_model(seed=2), "tiny/1.1.0")
    r = repo.validate("--strict")
    assert r.code == 0, r.text
    assert "2 target files checked against their signed hashes, 2 models opened" in r.out
    assert "0 errors, 0 warnings" in r.out
    doc = json.loads(repo.validate("--format", "json").out)
    assert doc["valid"] and doc["tuf"] == {"repository": str(repo.tuf), "files": 2, "opened": 2}


def test_an_input_name_the_graph_does_not_have_is_refused_as_the_device_refuses_it(repo: Repo) -> None:
    repo.model(in_name="image")
    data = matmul_model()
    repo.publish(data, "tiny/1.0.0")
    repo.publish(data, "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 1, r.text
    problem = "declared input 'image' is not in the model (input)"
    for line, version in ((14, "1.0.0"), (17, "1.1.0")):  # each variant, at its target line
        assert f"{repo.at(line)}56: error: Model/tiny: InterfaceMismatch: variant onnx of {version}: {problem}" in r.err
    assert "hint: fix the Model's inputs (line 8) or outputs (line 10)" in r.err
    assert "1 models opened" in r.err  # one file: loaded once for both versions
    reason, message = _device_refusal(data, [{"name": "image", "datatype": "FP32", "shape": [-1, 16]}], [])
    assert reason == "InterfaceMismatch" and message.endswith(problem)
    github = repo.validate("--format", "github")
    assert f"::error file={repo.manifest},line=14,col=56,title=InterfaceMismatch::" in github.out


def test_a_datatype_the_graph_does_not_have_is_refused(repo: Repo) -> None:
    repo.model(in_type="INT64")
    data = matmul_model()
    repo.publish(data, "tiny/1.0.0")
    repo.publish(data, "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 1, r.text
    problem = "input 'input' is FP32 in the model, declared INT64"
    assert f"{repo.at(14)}56: error: Model/tiny: InterfaceMismatch: variant onnx of 1.0.0: {problem}" in r.err
    assert _device_refusal(data, [{"name": "input", "datatype": "INT64", "shape": [-1, 16]}], [])[1].endswith(problem)


def test_shapes_are_compared_rank_and_fixed_dimensions(repo: Repo) -> None:
    repo.model(in_shape="[-1, 16, 1]", out_shape="[-1, 8]")
    data = matmul_model()
    repo.publish(data, "tiny/1.0.0")
    repo.publish(data, "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 1, r.text
    rank = "input 'input' has rank 2 in the model, declared 3"
    assert f"InterfaceMismatch: variant onnx of 1.0.0: {rank}" in r.err
    assert "InterfaceMismatch: variant onnx of 1.0.0: output 'output' dimension 1 is 4 in the model, declared 8" in r.err
    assert _device_refusal(data, [{"name": "input", "datatype": "FP32", "shape": [-1, 16, 1]}], [])[1].endswith(rank)

    # A model with a fixed batch of 1 where the Model declares a variable one: loads, but larger batches fail.
    repo.model()
    fixed = identity_model("FP32", [1, 16])
    repo.manifest.write_text(repo.manifest.read_text().replace("{name: output, datatype: FP32, shape: [-1, 4]}",
                                                               "{name: output, datatype: FP32, shape: [-1, 16]}"))
    repo.publish(fixed, "tiny/1.0.0")
    repo.publish(fixed, "tiny/1.1.0")
    warned = repo.validate()
    assert warned.code == 0, warned.text
    assert ("warning: Model/tiny: variant onnx of 1.0.0: input 'input' dimension 0 is fixed to 1 in the model, "
            "declared -1 (variable): requests of another size fail") in warned.out
    assert repo.validate("--strict").code == 1


def test_a_replaced_file_is_refused_and_the_other_models_are_still_checked(repo: Repo) -> None:
    repo.model()
    first = repo.publish(matmul_model(seed=1), "tiny/1.0.0")
    repo.publish(matmul_model(seed=2), "tiny/1.1.0")
    # Replaced on the server: same name and length, other bytes (what a device then reports as TargetHashMismatch).
    first.write_bytes(matmul_model(seed=3))
    assert len(first.read_bytes()) == len(matmul_model(seed=1))
    r = repo.validate()
    assert r.code == 1, r.text
    assert (f"{repo.at(14)}56: error: Model/tiny: TargetHashMismatch: target 'tiny/1.0.0/model.onnx': "
            f"targets/tiny/1.0.0/{first.name} does not match its signed metadata") in r.err
    assert "2 target files checked against their signed hashes, 1 models opened" in r.err  # 1.1.0 still opened
    assert "1 errors" in r.err

    first.write_bytes(matmul_model(seed=1) + b"\0")
    assert "LengthExceeded: target 'tiny/1.0.0/model.onnx'" in repo.validate().err
    first.write_bytes(matmul_model(seed=1)[:-1])
    assert "RepositoryUnavailable: target 'tiny/1.0.0/model.onnx'" in repo.validate().err
    first.unlink()
    gone = repo.validate()
    assert f"{repo.at(14)}56: error: Model/tiny: RepositoryUnavailable: target 'tiny/1.0.0/model.onnx'" in gone.err
    assert "is missing" in gone.err and "Traceback" not in gone.text


def test_targets_of_a_delegated_role_are_checked_against_that_role(repo: Repo) -> None:
    repo.model()
    team = repo.tmp / "team-keys"
    tufrepo.delegate(repo.tuf, [repo.keys], "tiny-team", tufrepo.prefix_patterns("tiny/"), team)
    key_dirs = [team, repo.keys]
    first = repo.publish(matmul_model(seed=1), "tiny/1.0.0", key_dirs=key_dirs)
    repo.publish(matmul_model(seed=2), "tiny/1.1.0", key_dirs=key_dirs)
    assert {r.role for r in tufrepo.list_targets(repo.tuf)} == {"tiny-team"}
    assert repo.validate().code == 0
    first.write_bytes(matmul_model(seed=3))
    r = repo.validate()
    assert r.code == 1 and f"{repo.at(14)}56: error: Model/tiny: TargetHashMismatch" in r.err, r.text


def test_encrypted_targets_are_not_opened_but_their_hashes_are_checked(repo: Repo) -> None:
    repo.model(in_name="image")  # would be refused if it could be opened
    key = modelcrypto.generate_key()
    first = repo.publish(matmul_model(seed=1), "tiny/1.0.0", encrypt_key=key)
    repo.publish(matmul_model(seed=2), "tiny/1.1.0", encrypt_key=key)
    r = repo.validate("--strict")
    assert r.code == 0, r.text
    assert (f"{repo.at(14)}56: note: Model/tiny: variant onnx of 1.0.0 not opened: its targets are encrypted (no "
            "decryption key here); their hashes match") in r.out
    assert "0 errors, 0 warnings, 2 notes" in r.out and "0 models opened" in r.out
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 1
    first.write_bytes(bytes(blob))
    bad = repo.validate()
    assert bad.code == 1 and f"{repo.at(14)}56: error: Model/tiny: TargetHashMismatch" in bad.err, bad.text


def test_a_probe_that_does_not_fit_the_model_is_refused(repo: Repo) -> None:
    data = matmul_model()
    probe = make_probe(data)
    probe["inputs"][0]["name"] = "x"
    repo.model(MODEL.format(in_name="input", in_type="FP32", in_shape="[-1, 16]", out_name="output",
                            out_shape="[-1, 4]").replace(
        '    - version: "1.1.0"\n', '      probe: {target: tiny/1.0.0/probe.json}\n    - version: "1.1.0"\n'))
    repo.publish(data, "tiny/1.0.0")
    repo.publish(data, "tiny/1.1.0")
    repo.publish(json.dumps(probe).encode(), "tiny/1.0.0", name="probe.json")
    r = repo.validate()
    assert r.code == 1, r.text
    assert (f"{repo.at(15)}23: error: Model/tiny: ProbeInvalid: variant onnx of 1.0.0: probe does not fit the model: "
            "probe input 'x' is not a model input (input)") in r.err
    repo.publish(b"{not json", "tiny/1.0.0", name="probe.json")
    assert f"{repo.at(15)}23: error: Model/tiny: ArtifactUnreadable: probe 'tiny/1.0.0/probe.json' is not JSON" in \
        repo.validate().err


def test_models_over_the_size_cap_are_hashed_but_not_opened(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.cli import modelcheck

    monkeypatch.setattr(modelcheck, "MAX_OPEN_BYTES", 64)
    repo.model(in_name="image")
    first = repo.publish(matmul_model(seed=1), "tiny/1.0.0")
    repo.publish(matmul_model(seed=2), "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 0, r.text
    assert "warning: Model/tiny: variant onnx of 1.0.0 not opened: its files hold 0 MiB, over the 0 MiB" in r.out
    first.write_bytes(matmul_model(seed=3))
    assert "TargetHashMismatch" in repo.validate().err


def test_openvino_ir_variants_are_opened_with_openvino(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    xml, bin_ = to_openvino_ir(matmul_model(), repo.tmp / "ir", "model")
    repo.model(MODEL.format(in_name="image", in_type="FP32", in_shape="[-1, 16]", out_name="output",
                            out_shape="[-1, 4]").replace(
        "{name: onnx, runtime: onnxruntime, targets: [tiny/1.0.0/model.onnx]}",
        "{name: ir, runtime: openvino, targets: [tiny/1.0.0/model.xml, tiny/1.0.0/model.bin]}"))
    repo.publish(xml.read_bytes(), "tiny/1.0.0", name="model.xml")
    repo.publish(bin_.read_bytes(), "tiny/1.0.0", name="model.bin")
    repo.publish(matmul_model(), "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 1, r.text
    assert (f"{repo.at(14)}51: error: Model/tiny: InterfaceMismatch: variant ir of 1.0.0: declared input 'image' "
            "is not in the model (input)") in r.err

    import reconciler.serving.runtimes as runtimes

    monkeypatch.setattr(runtimes, "runtime_installed", lambda name: name != "openvino")
    r = repo.validate()
    assert f"{repo.at(14)}51: warning: Model/tiny: variant ir of 1.0.0 not opened: " in r.out + r.err
    assert "openvino" in r.text and "its hashes match" in r.text


def test_published_models_from_the_onnxruntime_wheel(repo: Repo) -> None:
    """Real models shipped in onnxruntime's wheel: one a device serves, one it cannot (a sequence-of-maps output
    has no KServe v2 datatype), refused as the device refuses it: LoadFailed."""
    sigmoid, logreg = ORT_DATASETS / "sigmoid.onnx", ORT_DATASETS / "logreg_iris.onnx"
    if not (sigmoid.is_file() and logreg.is_file()):
        pytest.skip("this onnxruntime wheel ships no datasets")
    repo.model(in_name="x", in_shape="[3, 4, 5]", out_name="y", out_shape="[3, 4, 5]")
    repo.publish(sigmoid.read_bytes(), "tiny/1.0.0")
    repo.publish(logreg.read_bytes(), "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 1, r.text
    assert "variant onnx of 1.0.0" not in r.err
    assert (f"{repo.at(17)}56: error: Model/tiny: LoadFailed: variant onnx of 1.1.0: tensor 'probabilities' has "
            "type seq(map(int64,tensor(float))), which KServe v2 cannot carry") in r.err
    assert "1 models opened" in r.err
    reason, message = _device_refusal(logreg.read_bytes(), [], [])
    assert reason == "LoadFailed" and "KServe v2 cannot carry" in message


def test_metadata_edited_to_match_a_replaced_file_is_not_trusted(repo: Repo) -> None:
    """Rewriting the hash in targets.json to the replaced file's breaks the signature: devices would reject the
    metadata, and validate does not take the forged hash as the signed one."""
    import hashlib

    repo.model()
    first = repo.publish(matmul_model(seed=1), "tiny/1.0.0")
    repo.publish(matmul_model(seed=2), "tiny/1.1.0")
    other = matmul_model(seed=3)
    first.write_bytes(other)
    meta = repo.tuf / "metadata" / "targets.json"
    doc = json.loads(meta.read_text())
    doc["signed"]["targets"]["tiny/1.0.0/model.onnx"]["hashes"]["sha256"] = hashlib.sha256(other).hexdigest()
    meta.write_text(json.dumps(doc))
    r = repo.validate()
    assert r.code == 1 and "cannot read TUF repository" in r.err, r.text
    assert "metadata of role 'targets' is not signed by its keys" in r.err and "Traceback" not in r.text


def test_a_model_input_the_model_does_not_declare_is_a_warning(repo: Repo) -> None:
    from reconciler.devkit.modelgen import two_input_model

    repo.model(in_name="a", in_shape="[-1, 4]", out_name="sum", out_shape="[-1, 4]")
    repo.publish(two_input_model(), "tiny/1.0.0")
    repo.publish(two_input_model(), "tiny/1.1.0")
    r = repo.validate()
    assert r.code == 0, r.text
    assert (f"{repo.at(14)}56: warning: Model/tiny: variant onnx of 1.0.0: the model also takes input 'b' "
            "(FP32 [-1, 4]), which the Model does not declare: requests without it fail") in r.out


def test_a_signed_hash_that_is_not_hexadecimal_never_names_a_file(repo: Repo) -> None:
    """Hostile (but signed) metadata: the hash names the file under targets/, so it must be hex first."""
    repo.model()
    repo.publish(matmul_model(seed=1), "tiny/1.0.0")
    repo.publish(matmul_model(seed=2), "tiny/1.1.0")
    outside = repo.tmp / "outside.onnx"
    outside.write_bytes(matmul_model(seed=1))
    signer = tufrepo._Repo(repo.tuf, [repo.keys])
    targets = signer.load("targets")
    targets.signed.targets["tiny/1.0.0/model.onnx"].hashes["sha256"] = "../../../outside"
    signer.resign_targets_role(targets, "targets")
    signer.resign_snapshot_timestamp()
    r = repo.validate()
    assert r.code == 1, r.text
    assert (f"{repo.at(14)}56: error: Model/tiny: BadMetadata: target 'tiny/1.0.0/model.onnx': a signed hash is "
            "not hexadecimal") in r.err
    assert "1 models opened" in r.err  # 1.1.0 still checked
