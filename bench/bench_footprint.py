"""Installed size and agent memory with and without the ``openvino`` extra, printed as ONE JSON line.

Builds the wheel, installs it into two fresh venvs — the base install and ``modelfleet[openvino]`` — and
measures:

- the size of each venv's site-packages (``du``), and the largest installed distributions;
- the RSS (VmRSS, and the peak VmHWM) of ``modelfleet agent run`` from each venv once it serves the same tiny
  model (16x4 MatMul) from a real Git + TUF world: base/ONNX Runtime (the baseline), openvino-venv/ONNX Runtime
  (the extra installed but unused) and openvino-venv/OpenVINO (the same model on the OpenVINO runtime).

Ratios are against the base install from the same run. The numbers are in docs/install.md.

Run: PYTHONPATH=. .venv/bin/python bench/bench_footprint.py   (downloads the wheels once; pip's cache after)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._agent_fixtures import ENDPOINT, MODEL, World, read_status  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 3.0


def sh(cmd: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, timeout=1800)


def make_venv(root: Path, wheel: Path, extra: str) -> Path:
    venv = root / f"venv-{extra or 'base'}"
    sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    sh([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", target], root)
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / 1024, 1)


def largest(venv: Path, n: int = 5) -> dict[str, float]:
    sp = site_packages(venv)
    sizes = {p.name: du_mb(p) for p in sp.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


def proc_status_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def agent_rss(venv: Path, runtime: str, work: Path) -> dict[str, float]:
    world = World(work / "world").start()
    try:
        world.publish("1.0.0")
        world.commit_fleet("1.0.0", variant={"runtime": runtime},
                           deployment={"runtime": {"preferences": [runtime], "threads": 1}})
        config = world.agent_config(work / "dev", poll="1h")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(venv / "bin" / "modelfleet"), "agent", "run", "--config", str(config)],
                                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                status = read_status(work / "dev")
                eps = {e["name"]: e for e in (status or {}).get("status", {}).get("endpoints", [])}
                if eps.get(ENDPOINT, {}).get("state") == "Serving":
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"agent ({runtime}) did not serve:\n{(work / 'agent.log').read_text()[-3000:]}")
                time.sleep(0.2)
            time.sleep(SETTLE_S)
            return proc_status_mb(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()
    finally:
        world.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mf-footprint-") as tmp:
        root = Path(tmp)
        sh([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"),
            str(REPO_ROOT)], root)
        wheel = next((root / "dist").glob("modelfleet-*.whl"))
        base, ov = make_venv(root, wheel, ""), make_venv(root, wheel, "openvino")
        size_base, size_ov = du_mb(site_packages(base)), du_mb(site_packages(ov))
        biggest = {"base": largest(base), "openvino": largest(ov)}
        runs = {}
        for name, venv, runtime in (("base_onnxruntime", base, "onnxruntime"),
                                    ("openvino_onnxruntime", ov, "onnxruntime"),
                                    ("openvino_openvino", ov, "openvino")):
            work = root / name
            work.mkdir()
            runs[name] = agent_rss(venv, runtime, work)
    baseline = runs["base_onnxruntime"]["VmRSS"]
    print(json.dumps({
        "bench": "footprint",
        "model": f"{MODEL} 16x4 MatMul",
        "site_packages_mb": {"base": size_base, "openvino": size_ov},
        "size_ratio_openvino_vs_base": round(size_ov / size_base, 2),
        "largest_mb": biggest,
        "agent_rss_mb": runs,
        "rss_ratio_vs_base": {k: round(v["VmRSS"] / baseline, 2) for k, v in runs.items()},
    }))


if __name__ == "__main__":
    main()
