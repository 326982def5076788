"""Peer servers for bench_serving.py: MLflow's ``models serve`` and MLServer, each in its own venv.

The venvs live in ``$MODELFLEET_BENCH_CACHE`` (default ``~/.cache/modelfleet/bench-peers``) and are created by
the benchmark on first use (never by ``make test``). A failed install or start is reported, not raised: the
benchmark's JSON line says which peer is missing and why.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("MODELFLEET_BENCH_CACHE", Path.home() / ".cache" / "modelfleet" / "bench-peers"))
PACKAGES = {
    "mlflow": ["mlflow", "onnx", "onnxruntime"],
    "mlserver": ["mlserver", "onnxruntime"],
}

_MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    """The minimal ONNX Runtime runtime: decode v2 tensors with MLServer's codec, run, encode."""

    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.settings.parameters.extra.get("threads", 1))
        self._sess = ort.InferenceSession(self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        names = [o.name for o in self._sess.get_outputs()]
        outs = self._sess.run(names, feeds)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(n, o) for n, o in zip(names, outs)])
'''

_MLFLOW_SAVE = '''
import sys, onnx, mlflow.onnx
mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])
'''


def venv(name: str, timeout: float = 1800) -> tuple[Path | None, str]:
    """The venv's python, installing it first if needed; (None, why) when that fails."""
    root = CACHE / name
    py = root / "bin" / "python"
    done = root / ".installed"
    if done.is_file() and py.is_file():
        return py, ""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, capture_output=True,
                       timeout=300)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES[name]], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            return None, f"pip install {' '.join(PACKAGES[name])} failed: {r.stderr.strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot create the {name} venv: {exc}"
    done.write_text("ok\n")
    return py, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return ""
        except OSError:
            pass
        time.sleep(0.5)
    return f"not ready within {timeout:g} s"


class Peer:
    """A running peer server: ``port``, ``request(probe)`` bytes, ``stop()``."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, path: str, log: Path) -> None:
        self.name, self.proc, self.port, self.path, self.log = name, proc, port, path, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def rss_mb(self) -> float:
        """RSS of the server and its children (MLflow and MLServer fork workers)."""
        total = 0
        out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        for line in [*out.stdout.split(), str(_rss_kb(self.proc.pid))]:
            total += int(line or 0)
        return round(total / 1024, 1)

    def request(self, inputs: list[dict[str, Any]]) -> bytes:
        if self.name == "mlflow":
            body = json.dumps({"inputs": {t["name"]: _nested(t) for t in inputs}}).encode()
            ctype = b"application/json"
        else:
            body = json.dumps({"inputs": inputs}).encode()
            ctype = b"application/json"
        return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (self.path.encode(), self.port, ctype, len(body))) + body


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _nested(t: dict[str, Any]) -> Any:
    import numpy as np

    return np.array(t["data"], np.float32).reshape(t["shape"]).tolist()


def start(name: str, model_file: Path, workdir: Path, threads: int = 1) -> tuple[Peer | None, str]:
    """Start peer ``name`` serving ``model_file`` as model "m"; (None, why) when it cannot."""
    py, why = venv(name)
    if py is None:
        return None, why
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = workdir / f"{name}.log"
    # MLflow starts ``uvicorn``/``gunicorn`` by name: the venv's bin first on PATH.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PATH": f"{py.parent}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    if name == "mlflow":
        model_dir = workdir / "mlflow-model"
        if not model_dir.exists():
            r = subprocess.run([str(py), "-c", _MLFLOW_SAVE, str(model_file), str(model_dir)], capture_output=True,
                               text=True, env=env, timeout=600)
            if r.returncode != 0:
                return None, f"mlflow.onnx.save_model failed: {r.stderr.strip()[-300:]}"
        cmd = [str(py.parent / "mlflow"), "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1", "-p",
               str(port), "--env-manager", "local", "-w", "1"]
        ready, path = f"http://127.0.0.1:{port}/ping", "/invocations"
    else:
        mdir = workdir / "mlserver" / "m"
        mdir.mkdir(parents=True, exist_ok=True)
        (mdir.parent / "onnx_runtime.py").write_text(_MLSERVER_RUNTIME)
        (mdir.parent / "settings.json").write_text(json.dumps(
            {"http_port": port, "grpc_port": _free_port(), "metrics_port": _free_port(), "parallel_workers": 0,
             "host": "127.0.0.1"}))
        (mdir / "model-settings.json").write_text(json.dumps(
            {"name": "m", "implementation": "onnx_runtime.OnnxRuntime",
             "parameters": {"uri": str(model_file), "extra": {"threads": threads}}}))
        cmd = [str(py.parent / "mlserver"), "start", str(mdir.parent)]
        ready, path = f"http://127.0.0.1:{port}/v2/models/m/ready", "/v2/models/m/infer"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(mdir.parent)
                                if name == "mlserver" else str(workdir), start_new_session=True)
    problem = _wait_ready(ready, proc, 180)
    peer = Peer(name, proc, port, path, log)
    if problem:
        peer.stop()
        tail = log.read_text(errors="replace").strip()[-300:]
        return None, f"{name} {problem}: {tail}"
    return peer, ""
