"""``validate --tuf-repo``: every variant's targets must be signed in the given TUF repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.distribution import tufrepo
from tests._cli import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def test_missing_targets_are_reported_with_location(tmp_path: Path) -> None:
    repo = tmp_path / "fleet"
    shutil.copytree(CORPUS / "base", repo)
    tuf, keys = tmp_path / "tuf", tmp_path / "keys"
    tufrepo.init_repo(tuf, keys)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx, but signed")
    tufrepo.add_targets(tuf, [keys, tufrepo.default_root_keys_dir(keys)], [model], "tiny/1.0.0")

    r = run_cli("validate", "--tuf-repo", str(tuf), str(repo))
    assert r.code == 1, r.text
    # 1.0.0 is published; 1.1.0 is not, and the error points at its target line in models/tiny.yaml
    assert "tiny/1.0.0/model.onnx" not in r.err
    assert f"{repo}/models/tiny.yaml:17:" in r.err and "'tiny/1.1.0/model.onnx' is not signed" in r.err

    tufrepo.add_targets(tuf, [keys, tufrepo.default_root_keys_dir(keys)], [model], "tiny/1.1.0")
    ok = run_cli("validate", "--tuf-repo", str(tuf), str(repo))
    assert ok.code == 0, ok.text

    missing = run_cli("validate", "--tuf-repo", str(tmp_path / "nope"), str(repo))
    assert missing.code == 1 and "cannot read TUF repository" in missing.err and "Traceback" not in missing.text
