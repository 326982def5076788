"""Idle poll cost per transport, printed as ONE JSON line.

For each transport — ``git://`` (git daemon), ``http`` (nginx + git http-backend, anonymous read),
``https+auth`` (Basic auth on everything, private CA) and ``ssh`` (sshd, deploy key, pinned known hosts) — it
measures ``GitSource.poll`` on an unchanged branch (the agent's idle path) against the same run's baseline:
``git ls-remote`` of the branch with the same credentials (what the agent ran on every poll before the
protocol v2 ``ls-refs`` client). Per poll: server requests (counted from the nginx access log; HTTP only)
and CPU of this process + its children (git, git-remote-http, ssh).

Run: PYTHONPATH=. .venv/bin/python bench/bench_idle_poll.py  (needs nginx, fcgiwrap, sshd: scripts/install-deps.sh)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.core.credentials import Credentials  # noqa: E402
from reconciler.gitops.auth import GitAuth  # noqa: E402
from reconciler.gitops.source import GitSource  # noqa: E402
from reconciler.gitops.verify import run_git  # noqa: E402
from tests._git_fixtures import GitDaemon, Upstream  # noqa: E402
from tests._servers import GitHttp, Pki, SshServer, private_file  # noqa: E402

POLLS = int(os.environ.get("POLLS", "40"))


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def measure(url: str, creds: Credentials, root: Path, http: GitHttp | None) -> dict[str, float]:
    src = GitSource(url, root / f"cache-{abs(hash(url))}", credentials=creds)
    head = src.poll(None).commit
    assert head, "first poll failed"
    src.poll(head)  # connection established, verdict cached
    n0 = len(http.requests()) if http else 0
    c0 = cpu()
    for _ in range(POLLS):
        assert src.poll(head).commit == head
    poll_cpu = (cpu() - c0) / POLLS * 1000
    poll_req = (len(http.requests()) - n0) / POLLS if http else None
    auth = GitAuth(url, creds)
    n0 = len(http.requests()) if http else 0
    c0 = cpu()
    for _ in range(POLLS):
        run_git(["ls-remote", "--", url, "refs/heads/main"], env=auth.env())
    base_cpu = (cpu() - c0) / POLLS * 1000
    base_req = (len(http.requests()) - n0) / POLLS if http else None
    src.close()
    out: dict[str, float] = {"poll_cpu_ms": round(poll_cpu, 2), "ls_remote_cpu_ms": round(base_cpu, 2),
                             "cpu_ratio": round(poll_cpu / base_cpu, 3)}
    if http is not None:
        out.update({"poll_requests": round(poll_req or 0, 2), "ls_remote_requests": round(base_req or 0, 2)})
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        up = Upstream(root / "up")
        up.commit({"fleet.yaml": "kind: Fleet\n"})
        pki = Pki.make(root / "pki")
        pw = private_file(root / "secrets" / "pw", "bench-password")
        results: dict[str, dict[str, float]] = {}
        with GitDaemon(up.bare.parent) as daemon, \
                GitHttp(root / "nginx", pki, users={"device": "bench-password"}, tuf_token="t") as http, \
                SshServer(root / "sshd") as ssh:
            http.publish_repo("fleet.git", up.bare)
            results["git"] = measure(daemon.url(up.bare.name), Credentials(), root, None)
            results["http"] = measure(http.url("fleet.git"), Credentials(), root, http)
            results["https_auth"] = measure(http.url("fleet.git", private=True, tls=True),
                                            Credentials("device", pw, ca_file=pki.ca), root, http)
            results["ssh"] = measure(ssh.url(up.bare), Credentials(ssh_key_file=ssh.deploy_key,
                                                                   known_hosts_file=ssh.known_hosts), root, None)
        goal = results["https_auth"]
        print(json.dumps({"bench": "idle_poll", "polls": POLLS, **{f"{t}.{k}": v for t, r in results.items()
                                                                  for k, v in r.items()},
                          "goal_met": goal["poll_requests"] <= 1 and goal["poll_cpu_ms"] <= 2}))


if __name__ == "__main__":
    main()
