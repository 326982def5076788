"""Signed status at fleet scale, printed as ONE JSON line (issue V).

N devices, each in the inventory with its own Ed25519 status key and a signed status commit on ``status/<id>``
(written as loose objects, as the device's StatusWriter does). Timed on a cold cache, same run, same repository:

* ``fleetStatusSeconds`` / ``rolloutStatusSeconds``: today's readers — every commit judged against the
  inventory's keys in-process, status documents parsed with the node budget and the DeviceStatus schema;
* ``baseline*Seconds``: the readers as they were before signed status (commit ``bee91b7``: no inventory keys, no
  signature, no schema), loaded from git history and run on the same repository;
* ``ratio*``: today / baseline (goal at 1,000: <= 1.5; at 5,000: today <= 10 s);
* ``*Warm*``: a second ``fleet status`` on the same cache (a signature verdict is remembered per commit and keys).

Run: .venv/bin/python bench/bench_status_trust.py   (BENCH_STATUS_DEVICES, default "1000,5000")
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from reconciler.gitops.fleetstatus import fleet_report  # noqa: E402
from reconciler.gitops.statusrepo import StatusRepo  # noqa: E402
from reconciler.gitops.statuswriter import dump_status  # noqa: E402
from reconciler.identity.commitsig import sign_commit  # noqa: E402
from reconciler.identity.keys import public_line  # noqa: E402
from reconciler.rollout.gitrepo import RolloutRepo  # noqa: E402
from tests._git_fixtures import Upstream  # noqa: E402
from tests.rollout._fleet import FLEET, MODEL, deployment_yaml, status  # noqa: E402

BEFORE = "bee91b7"  # the last commit before signed status


def _old_module(name: str, rel: str, replace: dict[str, str]) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{BEFORE}:{rel}"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
    for a, b in replace.items():
        src = src.replace(a, b)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(src, f"{BEFORE}:{rel}", "exec"), mod.__dict__)  # noqa: S102 - our own file from git history
    return mod


def _write(git_dir: Path, kind: str, body: bytes) -> str:
    data = f"{kind} {len(body)}\0".encode() + body
    sha = hashlib.sha1(data).hexdigest()  # noqa: S324 - git object id
    path = git_dir / "objects" / sha[:2] / sha[2:]
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(zlib.compress(data, 1))
    return sha


def build(n: int, root: Path) -> str:
    up = Upstream(root / "up")
    keys = {f"dev-{i:05d}": Ed25519PrivateKey.generate() for i in range(n)}
    files = {"fleet.yaml": FLEET.decode(), "models/tiny.yaml": MODEL.decode(),
             "deployments/tiny.yaml": deployment_yaml(1)}
    for i, (dev, key) in enumerate(keys.items()):
        files[f"devices/{dev}.yaml"] = (f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: {dev}\n"
                                        f"  labels: {{site: a, ring: {'canary' if i < 3 else 'stable'}}}\n"
                                        f"spec:\n  statusKeys: ['{public_line(key, dev)}']\n")
    up.commit(files, "fleet")
    hb = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    refs = []
    for dev, key in keys.items():
        blob = _write(up.bare, "blob", dump_status(status(dev, "1.1.0", heartbeat=hb)))
        tree = _write(up.bare, "tree", b"100644 status.yaml\0" + bytes.fromhex(blob))
        who = f"{dev} <{dev}@devices.modelfleet> {int(time.time())} +0000"
        payload = f"tree {tree}\nauthor {who}\ncommitter {who}\n\nstatus: {dev}\n".encode()
        refs.append(f"update refs/heads/status/{dev} {_write(up.bare, 'commit', sign_commit(payload, key))}\n")
    subprocess.run(["git", f"--git-dir={up.bare}", "update-ref", "--stdin"], input="".join(refs).encode(), check=True)
    subprocess.run(["git", f"--git-dir={up.bare}", "pack-refs", "--all"], check=True)
    subprocess.run(["git", f"--git-dir={up.bare}", "repack", "-adq"], check=True)
    return str(up.bare)


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n: int, old_fs: types.ModuleType, old_rr: types.ModuleType) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as tmp:
        root = Path(tmp)
        url = build(n, root)
        rounds: dict[str, list[float]] = {k: [] for k in ("fleet", "rollout", "baseFleet", "baseRollout",
                                                          "fleetWarm", "baseFleetWarm")}
        for r in range(2):  # alternating, each on a cold cache
            t, rep = timed(lambda r=r: old_fs.StatusRepo(url, root / f"c-bf{r}").report(stale_after=3600))
            rounds["baseFleet"].append(t)
            t, new = timed(lambda r=r: fleet_report(StatusRepo(url, root / f"c-f{r}"), stale_after=3600))
            rounds["fleet"].append(t)
            assert new.totals["ready"] == n and new.totals["untrusted"] == 0, new.totals
            t, _ = timed(lambda r=r: old_rr.RolloutRepo(url, root / f"c-br{r}").status("tiny"))
            rounds["baseRollout"].append(t)
            t, (_, st) = timed(lambda r=r: RolloutRepo(url, root / f"c-r{r}").status("tiny"))
            rounds["rollout"].append(t)
            # again on the same caches: what `watch` and a second `fleet status` cost (verdicts remembered)
            t, _ = timed(lambda r=r: old_fs.StatusRepo(url, root / f"c-bf{r}").report(stale_after=3600))
            rounds["baseFleetWarm"].append(t)
            t, _ = timed(lambda r=r: fleet_report(StatusRepo(url, root / f"c-f{r}"), stale_after=3600))
            rounds["fleetWarm"].append(t)
        best = {k: min(v) for k, v in rounds.items()}
        return {"devices": n, "fleetStatusSeconds": round(best["fleet"], 2),
                "baselineFleetStatusSeconds": round(best["baseFleet"], 2),
                "ratioFleetStatus": round(best["fleet"] / best["baseFleet"], 2),
                "rolloutStatusSeconds": round(best["rollout"], 2),
                "baselineRolloutStatusSeconds": round(best["baseRollout"], 2),
                "ratioRolloutStatus": round(best["rollout"] / best["baseRollout"], 2),
                "fleetStatusMsPerDevice": round(best["fleet"] * 1000 / n, 3),
                "fleetStatusWarmSeconds": round(best["fleetWarm"], 2),
                "baselineFleetStatusWarmSeconds": round(best["baseFleetWarm"], 2),
                "ratioFleetStatusWarm": round(best["fleetWarm"] / best["baseFleetWarm"], 2)}


def main() -> None:
    old_fs = _old_module("_old_fleetstatus", "reconciler/gitops/fleetstatus.py", {})
    old_rr = _old_module("_old_gitrepo", "reconciler/rollout/gitrepo.py",
                         {"from reconciler.gitops.fleetstatus import": "from _old_fleetstatus import"})
    sizes = [int(x) for x in os.environ.get("BENCH_STATUS_DEVICES", "1000,5000").split(",")]
    print(json.dumps({"bench": "status_trust", "before": BEFORE, "results": [run(n, old_fs, old_rr) for n in sizes]}))


if __name__ == "__main__":
    main()
