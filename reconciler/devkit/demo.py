"""``make demo``: the whole GitOps loop on one machine, in under a minute.

1. Build a local TUF repository with generated models (``reconciler.devkit.modelgen``), signed with fresh keys, and
   serve it over HTTP on 127.0.0.1.
2. Create a local Git fleet repository from ``fleet-repo-example/`` (TUF URLs rewritten to the local server; the
   device's status key listed in its manifest, so ``fleet status`` counts its signed reports).
3. Start ``modelfleet agent run`` for device ``gw-austin-01``; show it converge and serve an inference.
4. Commit a version bump while a client sends requests non-stop; show the swap with no failed request.
5. Show the device's ``status/gw-austin-01`` branch, then stop the agent cleanly, and print what to try next.

A line is printed before every wait, so the run is never silent for more than a few seconds.

Everything lives in ``demo-work/`` (git-ignored; ``$MODELFLEET_DEMO_WORK`` overrides), recreated on every run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from reconciler.serving.runtimes.telemetry import import_onnxruntime

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("MODELFLEET_DEMO_WORK") or ROOT / "demo-work")
DEVICE = "gw-austin-01"
ENDPOINT = "vibration"
MODEL_PREFIX = "pdm/vibration-anomaly"
GIT_ENV = {"GIT_AUTHOR_NAME": "Demo Operator", "GIT_AUTHOR_EMAIL": "ops@example.com",
           "GIT_COMMITTER_NAME": "Demo Operator", "GIT_COMMITTER_EMAIL": "ops@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
BIAS = {"2.0.0": 0.0, "2.1.0": 0.5, "2.2.0": 1.0}  # each version shifts the outputs: visible in inferences
SAMPLE = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ)
    env.update(GIT_ENV)
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def build_model(version: str, out: Path) -> list[Path]:
    from reconciler.devkit import modelgen

    onnx_bytes = modelgen.matmul_model(16, 4, seed=7, bias=BIAS[version])
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_bytes)
    (out / "probe.json").write_text(json.dumps(modelgen.make_probe(onnx_bytes)))
    return [out / "model.onnx", out / "probe.json"]


def infer(url: str) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                   "data": SAMPLE.ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{ENDPOINT}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        o = json.loads(resp.read())["outputs"][0]
    return np.asarray(o["data"], dtype=np.float32)


def version_of(out: np.ndarray, base: np.ndarray) -> str:
    for v, b in BIAS.items():
        if np.allclose(out, base + b, atol=1e-4):
            return v
    return "?"


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"demo failed: timed out waiting for {what} (see {WORK / 'agent.log'})")


def read_status() -> dict[str, Any]:
    try:
        return json.loads((WORK / "device" / "state" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def ready_at(commit: str) -> bool:
    st = read_status().get("status", {})
    conds = {c["type"]: c for c in st.get("conditions", [])}
    return st.get("appliedCommit") == commit and conds.get("Ready", {}).get("status") == "True"


def main() -> None:
    from reconciler.distribution import tufrepo
    from reconciler.distribution.httpserve import StaticServer
    from reconciler.identity import keys as keys_mod

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    say(f"modelfleet demo: one device, its Git fleet repository and a TUF model repository on 127.0.0.1, "
        f"in {_shown(WORK)} (about 10 s)")

    # 1. TUF repository with generated, signed models.
    say("generating vibration-anomaly 2.0.0 and 2.1.0 and signing them into a TUF repository …")
    tuf, keys = WORK / "tuf", WORK / "tuf-keys"
    tufrepo.init_repo(tuf, keys)
    for v in ("2.0.0", "2.1.0"):
        tufrepo.add_targets(tuf, [keys], build_model(v, WORK / "build" / v), f"{MODEL_PREFIX}/{v}")
    http = StaticServer(tuf).start()
    say(f"TUF repository: vibration-anomaly 2.0.0 and 2.1.0 generated and signed, served at {http.url}")

    # 2. The fleet Git repository.
    fleet, bare = WORK / "fleet", WORK / "fleet.git"
    shutil.copytree(ROOT / "fleet-repo-example", fleet)
    fy = fleet / "fleet.yaml"
    text = fy.read_text()
    for key, path in (("metadataUrl", "metadata/"), ("targetsUrl", "targets/")):
        text = "\n".join(f"    {key}: {http.url}/{path}" if line.strip().startswith(f"{key}:") else line
                         for line in text.splitlines()) + "\n"
    fy.write_text(text.replace("pollInterval: 30s", "pollInterval: 1s"))
    # The example gateway deployment uses the `resource` strategy (unload first: a short gap). The demo shows the
    # zero-downtime `availability` switch instead.
    dep_yaml = fleet / "deployments" / "vibration-anomaly.yaml"
    dep_yaml.write_text(dep_yaml.read_text().replace("strategy: resource", "strategy: availability"))
    # The device signs its status with its own key, listed in its Device manifest: `fleet status` counts it.
    dev = WORK / "device"
    device_key = keys_mod.generate(dev / "state" / "identity" / "status_ed25519")
    inventory = fleet / "devices" / f"{DEVICE}.yaml"
    inventory.write_text(inventory.read_text().replace(
        "\nspec:\n", f"\nspec:\n  statusKeys: [\"{keys_mod.public_line(device_key, DEVICE)}\"]\n", 1))
    git(WORK, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git(WORK, "init", "--quiet", "--initial-branch=main", str(fleet))
    # The operator signs every commit with an SSH key; the device trusts only that key (allowed signers).
    signer_key = WORK / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example.com", "-f", str(signer_key)],
                   check=True, capture_output=True)
    allowed = WORK / "device-allowed-signers"
    public_key = signer_key.with_suffix(".pub").read_text().strip()
    allowed.write_text(f'ops@example.com namespaces="git" {public_key}\n')
    for key, value in (("gpg.format", "ssh"), ("user.signingkey", str(signer_key)), ("commit.gpgsign", "true")):
        git(fleet, "config", key, value)
    git(fleet, "add", "-A")
    git(fleet, "commit", "--quiet", "-m", "fleet from fleet-repo-example")
    git(fleet, "push", "--quiet", bare.as_uri(), "HEAD:refs/heads/main")
    first = git(fleet, "rev-parse", "HEAD")
    say(f"fleet repository {bare.as_uri()} at {first[:12]}, SSH-signed (deployment vibration-anomaly → 2.1.0, "
        "update strategy availability); the device verifies every commit against its allowed signers")

    # 3. The agent.
    (dev / "agent.yaml").write_text(json.dumps({
        "apiVersion": "modelfleet/v1", "kind": "AgentConfig",
        "spec": {"deviceId": DEVICE, "stateDir": str(dev / "state"), "pollInterval": "1s",
                 "source": {"url": bare.as_uri(), "timeout": "10s",
                            "verify": {"mode": "all", "allowedSigners": str(allowed)}},
                 "status": {"enabled": True, "heartbeatInterval": "1h"},
                 "tuf": {"trustedRoot": str(tuf / "metadata" / "1.root.json"), "timeout": "10s"},
                 "serving": {"host": "127.0.0.1", "port": 0}, "log": {"format": "json"}},
    }, indent=1))
    log_path = WORK / "agent.log"
    env = dict(os.environ)
    env.update(GIT_ENV)
    env["PYTHONPATH"] = str(ROOT)
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "reconciler.cli.main", "agent", "run", "--config",
                                  str(dev / "agent.yaml")], stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT, start_new_session=True)
    say(f"starting the agent for device {DEVICE} (log: {_shown(log_path)}) …")
    try:
        _run_agent_part(agent, log_path, fleet, bare, tuf, keys, first)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        http.stop()


def _agent_url(agent: subprocess.Popen[bytes], log_path: Path) -> str | None:
    if agent.poll() is not None:
        raise SystemExit(f"demo failed: the agent exited with {agent.returncode}:\n{log_path.read_text()[-2000:]}")
    for line in log_path.read_text(errors="replace").splitlines():
        if '"msg":"serving"' in line:
            return json.loads(line)["url"]
    return None


def _run_agent_part(agent: subprocess.Popen[bytes], log_path: Path, fleet: Path, bare: Path, tuf: Path,
                    keys: Path, first: str) -> None:
    from reconciler.devkit import modelgen
    from reconciler.distribution import tufrepo

    url = wait(lambda: _agent_url(agent, log_path), 30, "the agent to listen")
    say(f"agent started (pid {agent.pid}) for device {DEVICE}, serving on {url}")
    say("the device clones the fleet, verifies the commit's signature, downloads and checks the model (up to 30 s) …")
    wait(lambda: ready_at(first), 30, "convergence")
    ort = import_onnxruntime()

    base = ort.InferenceSession(modelgen.matmul_model(16, 4, seed=7), providers=["CPUExecutionProvider"]).run(
        None, {"input": SAMPLE})[0].ravel()
    out = infer(url)
    say(f"converged at {first[:12]}: endpoint '{ENDPOINT}' serves {version_of(out, base)} → {np.round(out, 3)}")

    # 4. A version bump while a client hammers the endpoint.
    tufrepo.add_targets(tuf, [keys], build_model("2.2.0", WORK / "build" / "2.2.0"), f"{MODEL_PREFIX}/2.2.0")
    model_yaml = fleet / "models" / "vibration-anomaly.yaml"
    model_yaml.write_text(model_yaml.read_text().rstrip("\n") + f"""
    - version: "2.2.0"
      variants:
        - name: onnx-fp32
          runtime: onnxruntime
          targets: [{MODEL_PREFIX}/2.2.0/model.onnx]
      probe:
        target: {MODEL_PREFIX}/2.2.0/probe.json
""")
    dep_yaml = fleet / "deployments" / "vibration-anomaly.yaml"
    dep_yaml.write_text(dep_yaml.read_text().replace('version: "2.1.0"', 'version: "2.2.0"'))
    stats = {"ok": 0, "failed": 0}
    errors: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                v = version_of(infer(url), base)
                stats["ok"] += 1
                if not seen or seen[-1] != v:
                    seen.append(v)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                stats["failed"] += 1
                detail = exc.read().decode(errors="replace")[:200] if isinstance(exc, urllib.error.HTTPError) else ""
                errors.append(f"{type(exc).__name__}: {exc} {detail}")

    t = threading.Thread(target=client, daemon=True)
    t.start()
    git(fleet, "add", "-A")
    git(fleet, "commit", "--quiet", "-m", "vibration-anomaly: roll out 2.2.0")
    git(fleet, "push", "--quiet", bare.as_uri(), "HEAD:refs/heads/main")
    bump = git(fleet, "rev-parse", "HEAD")
    t_commit = time.monotonic()
    say(f"committed {bump[:12]}: vibration-anomaly 2.1.0 → 2.2.0 (signed into TUF); client sending requests")
    wait(lambda: seen and seen[-1] == "2.2.0", 30, "the new version to serve")
    say(f"swap seen by the client {time.monotonic() - t_commit:.1f}s after the commit")
    time.sleep(0.5)
    stop.set()
    t.join()
    say(f"client: {stats['ok']} requests answered, {stats['failed']} failed, versions seen: {' → '.join(seen)}")
    if stats["failed"]:
        raise SystemExit("demo failed: requests failed during the swap:\n  " + "\n  ".join(errors[:5]))

    # 5. The status branch.
    branch = f"status/{DEVICE}"

    def status_at_bump() -> str | None:
        r = subprocess.run(["git", "--git-dir", str(bare), "show", f"{branch}:status.yaml"], capture_output=True,
                           text=True)
        return r.stdout if r.returncode == 0 and bump in r.stdout else None

    doc = wait(status_at_bump, 30, "the status branch")
    say(f"status branch {branch} in {bare.name}:")
    import yaml

    st = yaml.safe_load(doc)["status"]
    print(f"    appliedCommit: {st['appliedCommit']}")
    for e in st.get("endpoints", []):
        print(f"    endpoint {e['name']}: {e['state']} {e.get('version')} (previous {e.get('previousVersion')})")
    for c in st.get("conditions", []):
        if c["type"] in ("Ready", "SourceVerified", "ArtifactsReady", "Applied"):
            print(f"    {c['type']}={c['status']} {c.get('reason', '')}")

    agent.send_signal(signal.SIGTERM)
    rc = agent.wait(20)
    say(f"agent stopped cleanly (exit code {rc}); logs in {log_path}")
    if rc != 0:
        raise SystemExit(rc)
    print(next_steps(), flush=True)


def next_steps() -> str:
    """What to try after the demo: commands that work on what it left in the work dir, then the quickstart."""
    cli = Path(sys.executable).parent / "modelfleet"
    mf = _shown(cli) if cli.exists() else "modelfleet"
    return "\n".join([
        "",
        "next: try",
        f"  {mf} fleet status --repo {_shown(WORK / 'fleet.git')}    # what the device reported, from its "
        "status branch",
        f"  {mf} plan --repo {_shown(WORK / 'fleet')} --base HEAD~1    # what the 2.2.0 commit changed, per device",
        "  docs/quickstart.md: three devices on your own Git server, and a new version by pull request (10 minutes)",
    ])


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (what a reader types), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
