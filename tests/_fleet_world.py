"""A fleet world for rollouts at scale: the agent tests' :class:`~tests._agent_fixtures.World` (fleet Git repo,
signed TUF repository, generated models) with an inventory of simulated devices and a staged deployment.

The servers sit behind :func:`fleet_servers` so the choice can change in one place: today ``git daemon`` for
Git and :class:`reconciler.distribution.httpserve.StaticServer` for TUF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests._agent_fixtures import World

DEPLOYMENT = "det-all"
STEPS = [{"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
         {"percent": 10}, {"percent": 50}, {"percent": 100}]


def fleet_servers(root: Path) -> World:
    """Start the Git and TUF servers for a simulated fleet (one place to switch server kinds)."""
    return World(root).start()


def device_ids(n: int, prefix: str = "sim") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def inventory(n: int, canaries: int, prefix: str = "sim") -> dict[str, str]:
    """devices/<id>.yaml for the simulated devices (ring labels as the simulator gives them)."""
    out = {}
    for i, dev in enumerate(device_ids(n, prefix)):
        doc = {"apiVersion": "modelfleet/v1", "kind": "Device",
               "metadata": {"name": dev, "labels": {"ring": "canary" if i < canaries else "stable"}}}
        out[f"devices/{dev}.yaml"] = yaml.safe_dump(doc, sort_keys=False)
    return out


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
