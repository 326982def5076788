"""The idle poll through an egress proxy against the same poll direct, printed as ONE JSON line.

A device behind a proxy polls its fleet repository (``GitSource.poll`` on an unchanged branch: one protocol v2
``ls-refs`` on a kept-alive connection) over HTTPS with Basic auth and a private CA (nginx + git http-backend),
once directly and once through tinyproxy on loopback (a ``CONNECT`` tunnel), in alternating rounds of the same
run. Per poll: wall time and this process's CPU, each as a ratio to the direct poll of the same round, and the
tunnels opened (``CONNECT`` lines in tinyproxy's log) per poll — about 0 when the tunnel is kept alive.

Run: PYTHONPATH=. .venv/bin/python bench/bench_proxy.py  (needs nginx, fcgiwrap, tinyproxy: scripts/install-deps.sh)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.core.credentials import Credentials  # noqa: E402
from reconciler.gitops.source import GitSource  # noqa: E402
from tests._git_fixtures import Upstream  # noqa: E402
from tests._proxy import TinyProxy  # noqa: E402
from tests._servers import GitHttp, Pki, private_file  # noqa: E402

POLLS = int(os.environ.get("POLLS", "50"))
ROUNDS = int(os.environ.get("ROUNDS", "6"))


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def polls(src: GitSource, head: str) -> tuple[float, float]:
    """(wall ms, CPU ms) per poll over POLLS polls."""
    t0, c0 = time.perf_counter(), cpu()
    for _ in range(POLLS):
        assert src.poll(head).commit == head
    return (time.perf_counter() - t0) / POLLS * 1000, (cpu() - c0) / POLLS * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = Pki.make(root / "pki")
        up = Upstream(root / "upstream")
        up.commit({"fleet.yaml": "kind: Fleet\n"}, "one")
        with GitHttp(root / "nginx", pki, users={"dev": "pw"}, tuf_token="t") as http, \
                TinyProxy(root / "proxy") as proxy:
            http.publish_repo("fleet.git", up.bare)
            url = http.url("fleet.git", private=True, tls=True)
            pw = private_file(root / "pw", "pw")
            direct = GitSource(url, root / "cache-direct", credentials=Credentials("dev", pw, ca_file=pki.ca,
                                                                                   proxy="direct"))
            proxied = GitSource(url, root / "cache-proxy", credentials=Credentials("dev", pw, ca_file=pki.ca,
                                                                                   proxy=proxy.url))
            head = direct.poll(None).commit
            assert head and proxied.poll(None).commit == head
            direct.poll(head), proxied.poll(head)  # connections up, verdicts cached
            connects0 = sum(r.startswith("CONNECT ") for r in proxy.requests())
            wall, cpu_r, base_wall, base_cpu = [], [], [], []
            for i in range(ROUNDS):  # alternate which goes first
                order = [(direct, True), (proxied, False)] if i % 2 == 0 else [(proxied, False), (direct, True)]
                got = {}
                for src, is_direct in order:
                    got[is_direct] = polls(src, head)
                base_wall.append(got[True][0])
                base_cpu.append(got[True][1])
                wall.append(got[False][0] / got[True][0])
                cpu_r.append(got[False][1] / got[True][1])
            connects = sum(r.startswith("CONNECT ") for r in proxy.requests()) - connects0
            direct.close()
            proxied.close()
    print(json.dumps({
        "bench": "proxy", "polls_per_round": POLLS, "rounds": ROUNDS,
        "direct_poll_wall_ms": round(statistics.median(base_wall), 2),
        "direct_poll_cpu_ms": round(statistics.median(base_cpu), 2),
        "proxy_wall_ratio": round(statistics.median(wall), 3),
        "proxy_cpu_ratio": round(statistics.median(cpu_r), 3),
        "proxy_wall_ratio_range": [round(min(wall), 3), round(max(wall), 3)],
        "proxy_cpu_ratio_range": [round(min(cpu_r), 3), round(max(cpu_r), 3)],
        "tunnels_per_poll": round(connects / (POLLS * ROUNDS), 4),
    }))


if __name__ == "__main__":
    main()
