"""A real Prometheus server for the monitoring tests (Debian's ``prometheus`` package; scripts/install-deps.sh
installs it).

    prom = PrometheusServer(tmp / "prom", config).start()   # 127.0.0.1 on a free port, TSDB in ``tmp``
    prom.wait_for(lambda: prom.query("up == 1"), what="a target up")
    prom.query('modelfleet_agent_converged{device="dev-1"}')  # the ``result`` list of /api/v1/query
    prom.stop()

Every API answer with ``status != success`` raises :class:`PromQLError` carrying Prometheus's error, so a test
that evaluates an expression fails with the server's message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests._git_fixtures import free_port

START_TIMEOUT = 60.0


class PromQLError(AssertionError):
    pass


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed (scripts/install-deps.sh installs Debian's prometheus package)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd, input=stdin)


class PrometheusServer:
    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is not installed (scripts/install-deps.sh installs Debian's prometheus package)"
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={cfg}", f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        self.wait_for(self._ready, START_TIMEOUT, what="prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a successful answer, else :class:`PromQLError`."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now: the result list (vector samples; a scalar becomes one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(self, pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.2)
