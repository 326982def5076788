"""A real little world for agent tests: a fleet Git repo (git daemon or file://), a TUF repo served over HTTP on
127.0.0.1, tiny generated models, and agent configs. Used by tests/test_agent*.py, tests/test_faults*.py and the
bench/soak scripts.

    w = World(tmp_path).start()
    w.publish("1.0.0", bias=0.0)            # model + probe signed into TUF
    w.commit_fleet("1.0.0")                 # Fleet + Model + Deployment pushed
    cfg = w.agent_config(tmp_path / "dev")  # agent.yaml for device dev-1
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reconciler.agent.journal import Journal
from reconciler.core import conditions as C
from reconciler.devkit import modelgen
from reconciler.distribution import tufrepo
from reconciler.distribution.httpserve import StaticServer
from reconciler.serving.runtimes.telemetry import import_onnxruntime
from tests._git_fixtures import GitDaemon, Upstream

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "det"
ENDPOINT = "detector"
IN_DIM, OUT_DIM = 16, 4
PROBE_INPUT = np.linspace(-1, 1, IN_DIM, dtype=np.float32).reshape(1, IN_DIM)


class World:
    """Fleet repo + TUF repo + HTTP server; ``publish`` and ``commit_fleet`` drive it like an operator."""

    def __init__(self, root: Path, *, daemon: bool = True) -> None:
        self.root = root
        self.upstream = Upstream(root / "git")
        self.daemon = GitDaemon(self.upstream.bare.parent) if daemon else None
        self.tuf_dir = root / "tuf"
        self.keys = root / "tuf-keys"
        tufrepo.init_repo(self.tuf_dir, self.keys)
        self.http = StaticServer(self.tuf_dir)
        self.versions: dict[str, dict[str, Any]] = {}
        self._http_up = False
        self._http_stopped = False

    def start(self) -> World:
        self.start_tuf()
        self.start_git()
        return self

    def stop(self) -> None:
        self.stop_tuf()
        self.stop_git()

    def start_tuf(self) -> None:
        """(Re)start the TUF HTTP server on the same port (a StaticServer cannot be restarted)."""
        if self._http_up:
            return
        if self._http_stopped:
            port = int(self.http.url.rsplit(":", 1)[1])
            self.http = StaticServer(self.tuf_dir, port=port)
        self.http.start()
        self._http_up = True

    def stop_tuf(self) -> None:
        if self._http_up:
            self.http.stop()
            self._http_up, self._http_stopped = False, True

    def start_git(self) -> None:
        if self.daemon is not None and self.daemon.proc is None:
            self.daemon.start()

    def stop_git(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    @property
    def git_url(self) -> str:
        return self.daemon.url(self.upstream.bare.name) if self.daemon else self.upstream.file_url

    @property
    def trusted_root(self) -> Path:
        return self.tuf_dir / "metadata" / "1.root.json"

    def publish(self, version: str, *, bias: float = 0.0, nan: bool = False, sign: bool = True, noise: float = 0.0,
                model: bytes | None = None) -> dict[str, Any]:
        """Generate version ``version`` (outputs shifted by ``bias``; NaN outputs if ``nan``; weights perturbed by
        ``noise``, see ``modelgen.matmul_model``) and sign it; ``model``: these ONNX bytes instead (its own probe).

        The probe always holds the healthy model's golden outputs, so a ``nan`` build fails its health check.
        """
        custom = model is not None
        if model is None:
            model = modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1, bias=bias, nan=nan, noise=noise)
            healthy = modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1, bias=bias, noise=noise)
        else:
            healthy = model
        probe = modelgen.make_probe(healthy)
        d = self.root / "build" / version
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(model)
        (d / "probe.json").write_text(json.dumps(probe))
        if sign:
            tufrepo.add_targets(self.tuf_dir, [self.keys], [d / "model.onnx", d / "probe.json"],
                                f"{MODEL}/{version}")
        self.versions[version] = {"bias": bias, "nan": nan, "noise": noise, "custom": custom}
        return probe

    def fleet_files(self, version: str, *, versions: list[str] | None = None, poll: str = "1s",
                    deployment: dict[str, Any] | None = None, present: bool = True,
                    variant: dict[str, Any] | None = None) -> dict[str, str | None]:
        versions = versions or sorted(self.versions)
        fleet = {
            "apiVersion": "modelfleet/v1", "kind": "Fleet", "metadata": {"name": "test-fleet"},
            "spec": {"defaults": {"pollInterval": poll, "heartbeatInterval": "1h"},
                     "tuf": {"metadataUrl": f"{self.http.url}/metadata/", "targetsUrl": f"{self.http.url}/targets/"}},
        }
        model = {
            "apiVersion": "modelfleet/v1", "kind": "Model", "metadata": {"name": MODEL},
            "spec": {
                "task": "anomaly-detection",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, IN_DIM]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, OUT_DIM]}],
                "versions": [
                    {"version": v, "variants": [{"name": "cpu", "runtime": "onnxruntime",
                                                 "targets": [f"{MODEL}/{v}/model.onnx"], **(variant or {})}],
                     "probe": {"target": f"{MODEL}/{v}/probe.json"}}
                    for v in versions
                ],
            },
        }
        dep_spec: dict[str, Any] = {"model": MODEL, "version": version, "serveAs": ENDPOINT,
                                    "runtime": {"preferences": ["onnxruntime"], "threads": 1},
                                    "health": {"warmupRuns": 2}}
        dep_spec.update(deployment or {})
        dep = {"apiVersion": "modelfleet/v1", "kind": "Deployment", "metadata": {"name": "det-all"}, "spec": dep_spec}
        return {
            "fleet.yaml": yaml.safe_dump(fleet, sort_keys=False),
            f"models/{MODEL}.yaml": yaml.safe_dump(model, sort_keys=False),
            "deployments/det-all.yaml": yaml.safe_dump(dep, sort_keys=False) if present else None,
        }

    def commit_fleet(self, version: str, message: str | None = None, **kw: Any) -> str:
        files = self.fleet_files(version, **kw)
        for rel, content in list(files.items()):
            if content is None and not (self.upstream.work / rel).exists():
                del files[rel]  # deleting what was never committed
        return self.upstream.commit(files, message or f"deploy {version}")

    def commit_raw(self, files: dict[str, str | bytes | None], message: str) -> str:
        return self.upstream.commit(files, message)

    def provision_identity(self, state_dir: Path, device_id: str = "dev-1",
                           labels: dict[str, str] | None = None) -> dict[str, str]:
        """The device's status key where the agent of ``agent_config(state_dir)`` looks for it, and its inventory
        file listing that key (commit it so operator tools count the device's status)."""
        from reconciler.identity import keys

        path = state_dir / "state" / "identity" / "status_ed25519"
        key = keys.load(path) if path.exists() else keys.generate(path)
        doc = {"apiVersion": "modelfleet/v1", "kind": "Device",
               "metadata": {"name": device_id, "labels": dict(labels or {})},
               "spec": {"statusKeys": [keys.public_line(key, device_id)]}}
        return {f"devices/{device_id}.yaml": yaml.safe_dump(doc, sort_keys=False)}

    def agent_config(self, state_dir: Path, *, device_id: str = "dev-1", poll: str = "200ms", port: int = 0,
                     status: bool = False, extra: dict[str, Any] | None = None) -> Path:
        spec: dict[str, Any] = {
            "deviceId": device_id,
            "stateDir": str(state_dir / "state"),
            "pollInterval": poll,
            "source": {"url": self.git_url, "timeout": "5s"},
            "tuf": {"trustedRoot": str(self.trusted_root), "timeout": "5s"},
            "serving": {"host": "127.0.0.1", "port": port},
            "status": {"enabled": status},
            "log": {"format": "json", "level": "info"},
        }
        for k, v in (extra or {}).items():
            if isinstance(v, dict) and isinstance(spec.get(k), dict):
                spec[k].update(v)
            else:
                spec[k] = v
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "agent.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": spec}))
        return path


def expected_output(bias: float, noise: float = 0.0) -> np.ndarray:
    """What the ``bias`` (and ``noise``) build of the test model answers for :data:`PROBE_INPUT`."""
    ort = import_onnxruntime()
    sess = ort.InferenceSession(modelgen.matmul_model(IN_DIM, OUT_DIM, seed=1, bias=bias, noise=noise),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": PROBE_INPUT})[0]


def infer(base_url: str, endpoint: str = ENDPOINT, timeout: float = 5.0) -> np.ndarray:
    """One KServe v2 inference of :data:`PROBE_INPUT` over HTTP."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, IN_DIM],
                                   "data": PROBE_INPUT.ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"{base_url}/v2/models/{endpoint}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    o = out["outputs"][0]
    return np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])


def which_version(base_url: str, world: World, endpoint: str = ENDPOINT) -> str | None:
    """The published version whose outputs the endpoint gives, or None if it does not answer."""
    try:
        got = infer(base_url, endpoint)
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None
    for v, info in world.versions.items():
        if not info["nan"] and not info.get("custom") and np.allclose(
                got, expected_output(info["bias"], info.get("noise", 0.0)), atol=1e-4):
            return v
    return "unknown"


def wait_for(pred: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class AgentProcess:
    """``modelfleet agent run`` as a real child process; ``url()`` waits for boot (last good models loaded)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str | None] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.pop("NOTIFY_SOCKET", None)
        for key, value in self.extra_env.items():  # None: remove the variable
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "agent", "run", "--config",
                                      str(self.config)], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO_ROOT, start_new_session=True)
        return self

    def url(self, timeout: float = 30.0) -> str:
        def find() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            url = None
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"msg":"serving"' in line:
                    url = json.loads(line)["url"]
                if '"msg":"booted"' in line and url:
                    return url  # last good models restored
            return None

        return wait_for(find, timeout, what="agent serving")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self, timeout: float = 15.0) -> int:
        rc = 0
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                rc = -9
        elif self.proc is not None:
            rc = self.proc.returncode
        self._close()
        return rc

    def _close(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / "state" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def condition(doc: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    if not doc:
        return None
    for c in doc["status"]["conditions"]:
        if c["type"] == ctype:
            return c
    return None


def kill9_trials(world: World, work: Path, trials: int, seed: int, max_delay: float = 1.2) -> dict[str, int]:
    """Restart/update/kill -9 ``trials`` times; assert every boot serves the journal's verified version.

    Shared with bench/soak_kill9.py. Returns counts of what the restarts served.
    """
    cfg = world.agent_config(work, poll="100ms")
    state = work / "state"
    rng = random.Random(seed)
    versions = sorted(world.versions)
    served: dict[str, int] = {}
    target = "1.0.0"
    for trial in range(trials):
        before = Journal.load(state) if (state / "journal.json").exists() else Journal()
        st = before.endpoints.get(ENDPOINT)
        allowed = {r.version for r in ((st.active, st.previous) if st else ()) if r is not None}
        proc = AgentProcess(cfg, work / f"agent-{trial}.log").start()
        try:
            url = proc.url(timeout=60)
            got = which_version(url, world)
            if allowed:
                # Served before any network access, from the local store: a complete verified version.
                assert got in allowed, f"trial {trial}: served {got!r}, journal had {allowed}"
            served[got or "none"] = served.get(got or "none", 0) + 1
            target = versions[(versions.index(target) + 1 + rng.randrange(len(versions) - 1)) % len(versions)]
            world.commit_fleet(target, message=f"trial {trial}: deploy {target}")
            if trial % 4 == 3:
                # Every fourth trial lets the swap finish before the kill, so the journal really moves on however
                # slow the machine is (a loaded CI runner can take seconds for a first pass).
                wait_for(lambda u=url, t=target: which_version(u, world) == t, 60,
                         what=f"trial {trial}: switch to {target}")
            time.sleep(rng.uniform(0.0, max_delay))  # mid-poll, mid-download, mid-swap, mid-journal write…
        finally:
            proc.kill9()
    # Final restart: converges to the last commit and reports Ready (in a status it writes itself).
    (state / "status.json").unlink(missing_ok=True)
    proc = AgentProcess(cfg, work / "agent-final.log").start()
    try:
        url = proc.url(timeout=60)
        wait_for(lambda: which_version(url, world) == target, 30, what=f"convergence to {target}")
        wait_for(lambda: (condition(read_status(work), C.READY) or {}).get("status") == "True", 30, what="Ready")
        assert proc.stop() == 0
    finally:
        proc.kill9()
    leftovers = [p for p in (state / "store" / "sha256").rglob("*") if p.is_file() and not p.name[0].isalnum()]
    assert leftovers == [], leftovers
    return served
