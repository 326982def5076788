"""A fleet world for rollouts at scale: the agent tests' :class:`~tests._agent_fixtures.World` (fleet Git repo,
signed TUF repository, generated models) with an inventory of simulated devices and a staged deployment.

The servers sit behind :func:`fleet_servers` so the choice is made in one place: Git over smart HTTP
(nginx + fcgiwrap + ``git http-backend``, :class:`tests._servers.GitHttp`; devices read anonymously and push
their status with Basic auth) or ``git daemon``; TUF from :class:`reconciler.distribution.httpserve.StaticServer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.core.credentials import Credentials
from tests._agent_fixtures import World
from tests._servers import GitHttp, Pki, private_file

DEPLOYMENT = "det-all"
STEPS = [{"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
         {"percent": 10}, {"percent": 50}, {"percent": 100}]


PASSWORD = "s3cret-for-tests"


class HttpWorld(World):
    """The agent tests' world with the fleet repository served by nginx + git http-backend (smart HTTP)."""

    def __init__(self, root: Path, *, ls_refs_cache_s: int | None = None) -> None:
        super().__init__(root, daemon=False)
        self.git_http = GitHttp(root / "nginx", Pki.make(root / "pki"), users={"device": PASSWORD, "ops": PASSWORD},
                                tuf_token="unused", ls_refs_cache_s=ls_refs_cache_s)
        self.password_file = private_file(root / "secrets" / "device.password", PASSWORD)

    def start(self) -> HttpWorld:
        super().start()
        self.git_http.start()
        self.git_http.publish_repo(self.upstream.bare.name, self.upstream.bare)
        return self

    def stop(self) -> None:
        super().stop()
        self.git_http.stop()

    @property
    def git_url(self) -> str:
        return self.git_http.url(self.upstream.bare.name)

    @property
    def operator_url(self) -> str:
        """The operator's push URL (credentials in the URL: a test shortcut, see docs/hosting.md)."""
        return self.git_url.replace("http://", f"http://ops:{PASSWORD}@")

    @property
    def device_credentials(self) -> Credentials:
        return Credentials(username="device", password_file=self.password_file)


def fleet_servers(root: Path, git: str = "http") -> World:
    """Start the Git and TUF servers for a simulated fleet: ``git="http"`` (smart HTTP) or ``"daemon"``."""
    return HttpWorld(root).start() if git == "http" else World(root).start()


def device_ids(n: int, prefix: str = "sim") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def inventory(n: int, canaries: int, prefix: str = "sim", keys: Path | None = None) -> dict[str, str]:
    """devices/<id>.yaml for the simulated devices (ring labels as the simulator gives them); with ``keys``, each
    device's status key is made there (``keys/<id>``, the simulator's ``status_keys``) and listed. The same
    manifests as ``modelfleet simulate --write-inventory``."""
    from reconciler.simulate.inventory import device_manifests

    return {f"devices/{name}": text
            for name, text in device_manifests(n, canaries=canaries, prefix=prefix, keys=keys).items()}


def commit_version(world: World, version: str, *, rollout_from: str | None = None, step: int = 0,
                   poll: str = "1s", heartbeat: str = "1h", gates: dict[str, Any] | None = None,
                   extra_files: dict[str, str] | None = None, message: str | None = None) -> str:
    """Commit the fleet with the deployment at ``version`` (staged from ``rollout_from`` when given)."""
    dep: dict[str, Any] = {}
    if rollout_from is not None:
        dep["rollout"] = {"from": rollout_from, "steps": STEPS, "step": step, "gates": gates or {}}
    files = world.fleet_files(version, poll=poll, deployment=dep)
    files["fleet.yaml"] = files["fleet.yaml"].replace("heartbeatInterval: 1h", f"heartbeatInterval: {heartbeat}")
    files.update(extra_files or {})
    return world.commit_raw(files, message or (f"roll out {version} from {rollout_from}" if rollout_from
                                              else f"deploy {version}"))
