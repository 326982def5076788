"""A site gateway as operators run it: ``modelfleet gateway run --config gateway.yaml`` as a real process
(its own nginx + fcgiwrap + git http-backend), in front of a central world (tests/_fleet_world.HttpWorld).

    gw = GatewayProcess.for_world(world, tmp / "site-1").start()
    gw.url                      # the devices' spec.gateway.url
    gw.round()                  # SIGHUP: refresh the mirror and relay the status now, and wait for it
    gw.kill9(); gw.start()      # a crash, and the restart
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests._git_fixtures import free_port, wait_port
from tests._servers import private_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def central_tuf_url(world: Any) -> str:
    """The world's TUF repository behind its nginx (plain HTTP, bearer token ``unused``)."""
    world.git_http.publish_tuf("fleet", world.tuf_dir)
    return f"http://127.0.0.1:{world.git_http.http_port}/tuf/fleet"


class GatewayProcess:
    def __init__(self, root: Path, config: dict[str, Any], *, environ: dict[str, str | None] | None = None) -> None:
        """``environ``: variables set (None: removed) in the gateway's environment."""
        self.root = root
        self.environ = dict(environ or {})
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = int(config["spec"]["listen"].rsplit(":", 1)[1])
        self.data = Path(config["spec"]["dataDir"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "gateway.log"

    @classmethod
    def for_world(cls, world: Any, root: Path, *, interval: str = "1h", name: str = "site-1",
                  status_urls: list[str] | None = None, extra: dict[str, Any] | None = None) -> GatewayProcess:
        token = private_file(root / "secrets" / "tuf.token", "unused")
        spec: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}", "dataDir": str(root / "data"), "interval": interval,
            "upstream": {"source": {"url": world.git_url},
                         "status": {"credentials": {"username": "device", "passwordFile": str(world.password_file)}},
                         "tuf": {"url": central_tuf_url(world), "credentials": {"bearerTokenFile": str(token)}}}}
        if status_urls:
            spec["upstream"]["status"]["urls"] = status_urls
        spec.update(extra or {})
        return cls(root, {"apiVersion": "modelfleet/v1", "kind": "GatewayConfig", "metadata": {"name": name},
                          "spec": spec})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        for k, v in self.environ.items():
            env.pop(k, None) if v is None else env.__setitem__(k, v)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "gateway", "run", "--config",
                                      str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        wait_port(self.port, timeout)
        pid = self.proc.pid
        self.wait_state(lambda s: s.get("status", {}).get("pid") == pid, timeout)  # this process's first round
        return self

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data / "run" / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_state(self, pred: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            st = self.state()
            if st is not None and pred(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"gateway state not reached in {timeout}s: {self.state()}")

    def round(self, timeout: float = 60.0) -> dict[str, Any]:
        """A mirror refresh and a relay round now (SIGHUP), waited for."""
        before = (self.state() or {}).get("time", 0)
        os.kill(self.pid, signal.SIGHUP)
        return self.wait_state(lambda s: s.get("time", 0) > before, timeout)

    def access_log(self) -> list[list[str]]:
        """nginx's lines: METHOD URI SERVICE STATUS USER SECONDS END BYTES CACHE."""
        try:
            return [line.split() for line in (self.data / "run" / "access.log").read_text().splitlines()]
        except FileNotFoundError:
            return []

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self, timeout: float = 30.0) -> int:
        rc = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(5)
        self._close()
        return rc

    def _close(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()
