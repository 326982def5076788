"""Benchmark: validating the example repo, and a generated repo with 10,000 devices and 200 deployments.

Prints one JSON line. Goals: example < 1 s, large < 10 s (both through the same code `modelfleet validate` runs).
Baseline in the same run: parsing the same files with plain PyYAML (libyaml safe loader; no positions, no checks).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.fleet.manifests import load_dir, read_dir  # noqa: E402


def generate(root: Path, devices: int = 10_000, deployments: int = 200, models: int = 50) -> None:
    rnd = random.Random(7)
    (root / "models").mkdir(parents=True)
    (root / "deployments").mkdir()
    (root / "devices").mkdir()
    (root / "fleet.yaml").write_text(
        "apiVersion: modelfleet/v1\nkind: Fleet\nmetadata: {name: big}\nspec:\n  tuf:\n"
        "    metadataUrl: https://m.example/metadata/\n    targetsUrl: https://m.example/targets/\n")
    for m in range(models):
        versions = "".join(
            f"    - version: \"1.{v}.0\"\n      variants:\n"
            f"        - {{name: ov, runtime: openvino, targets: [m{m}/1.{v}.0/model.xml, m{m}/1.{v}.0/model.bin], requires: {{arch: [x86_64]}}}}\n"
            f"        - {{name: ort, runtime: onnxruntime, targets: [m{m}/1.{v}.0/model.onnx]}}\n"
            for v in range(4))
        (root / "models" / f"m{m}.yaml").write_text(
            f"apiVersion: modelfleet/v1\nkind: Model\nmetadata: {{name: m{m}}}\nspec:\n  task: t\n"
            f"  inputs: [{{name: x, datatype: FP32, shape: [-1, 16]}}]\n"
            f"  outputs: [{{name: y, datatype: FP32, shape: [-1, 4]}}]\n  versions:\n{versions}")
    sites = [f"site{i}" for i in range(40)]
    for d in range(deployments):
        m = d % models
        site = sites[d % len(sites)]
        (root / "deployments" / f"d{d}.yaml").write_text(
            f"apiVersion: modelfleet/v1\nkind: Deployment\nmetadata: {{name: d{d}}}\nspec:\n  model: m{m}\n"
            f"  version: \"1.3.0\"\n  serveAs: ep{d}\n  selector:\n    matchLabels: {{site: {site}}}\n"
            f"    matchExpressions: [{{key: ring, operator: In, values: [canary, stable]}}]\n"
            f"  rollout:\n    from: \"1.2.0\"\n    steps: [{{percent: 5}}, {{percent: 25}}, {{percent: 100}}]\n    step: 1\n")
    # 10,000 devices in 100 multi-document files (a realistic layout for a big inventory)
    for f in range(100):
        docs = []
        for i in range(devices // 100):
            n = f * (devices // 100) + i
            docs.append(f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{n:05d}\n  labels:\n"
                        f"    site: {rnd.choice(sites)}\n    ring: {rnd.choice(['canary', 'stable', 'beta'])}\n"
                        f"spec:\n  facts: {{hw.arch: x86_64, hw.memoryMB: 4096}}\n")
        (root / "devices" / f"batch-{f:03d}.yaml").write_text("---\n".join(docs))


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    example = ROOT / "fleet-repo-example"
    ex_result = load_dir(example)
    assert ex_result.ok, [d.format_text() for d in ex_result.errors]
    t_example = timed(lambda: load_dir(example), 5)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        generate(big)
        result = load_dir(big)
        assert result.ok, [d.format_text() for d in result.errors[:5]]
        t_big = timed(lambda: load_dir(big), 2)
        files = read_dir(big)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        t_yaml = timed(lambda: [list(yaml.load_all(b, Loader=loader)) for b in files.values()], 2)
    print(json.dumps({
        "bench": "validate",
        "example_s": round(t_example, 4),
        "example_goal_s": 1.0,
        "large_devices": len(result.fleet.devices),
        "large_deployments": len(result.fleet.deployments),
        "large_s": round(t_big, 3),
        "large_goal_s": 10.0,
        "baseline_yaml_safe_load_s": round(t_yaml, 3),
        "ratio_vs_plain_yaml": round(t_big / t_yaml, 2),
    }))


if __name__ == "__main__":
    main()
