"""The status relay and the device side of a gateway, against plain repositories (no nginx): one push per round
with many ref updates, bounded; the journal; a branch further upstream adopted; the status repository's hook;
the source's and the status writer's failover between a gateway and the central repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.core.errors import UserError
from reconciler.gateway.config import parse_gateway_config
from reconciler.gateway.relay import StatusRelay
from reconciler.gitops.failover import Failover
from reconciler.gitops.source import GitSource
from reconciler.gitops.statuswriter import StatusWriter
from tests._git_fixtures import Upstream, git, make_status


def bare(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    git(path.parent, "init", "--bare", "--quiet", "--initial-branch=main", str(path))
    return path


def status_commits(repo: Path, n: int, start: int = 0) -> None:
    stream = []
    for i in range(start, start + n):
        dev, data = f"dev-{i:04d}", f"n: {i}\n".encode()
        stream.append(f"commit refs/heads/status/{dev}\ncommitter {dev} <d@x> 1700000000 +0000\ndata 2\ns\n"
                      f"M 100644 inline status.yaml\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "fast-import", "--quiet", "--force"], cwd=repo, input=b"".join(stream), check=True)


def refs(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/status/")
    return {ref: oid for oid, ref in (line.split() for line in out.splitlines())}


def test_one_push_per_round_bounded_journaled_and_idempotent(tmp_path: Path) -> None:
    up = bare(tmp_path / "up.git")
    relay = StatusRelay(tmp_path / "gw" / "status.git", tmp_path / "gw" / "journal.json", (str(up),),
                        max_refs_per_push=30)
    relay.ensure()
    status_commits(relay.git_dir, 50)
    first = relay.relay_once()
    assert first == {"pending": 50, "pushes": 1, "relayed": 30, "rejected": 0, "failed": 0}  # bounded
    assert len(refs(up)) == 30
    # A restart: the journal says what upstream acknowledged; the rest goes next.
    again = StatusRelay(relay.git_dir, relay.journal.path, (str(up),), max_refs_per_push=30)
    assert len(again.journal.acked) == 30 and len(again.pending()) == 20
    assert again.relay_once()["relayed"] == 20 and refs(up) == refs(relay.git_dir)
    assert again.relay_once() == {"pending": 0, "pushes": 0, "relayed": 0, "rejected": 0, "failed": 0}
    # A lost journal (or a crash before it was written): everything is pushed again, a no-op upstream.
    relay.journal.path.unlink()
    fresh = StatusRelay(relay.git_dir, relay.journal.path, (str(up),), max_refs_per_push=100)
    assert fresh.relay_once()["relayed"] == 50 and refs(up) == refs(relay.git_dir)
    assert json.loads(relay.journal.path.read_text())["acked"] == refs(relay.git_dir)
    assert (relay.journal.path.stat().st_mode & 0o777) == 0o600


def test_sharded_upstream_and_a_branch_further_upstream_is_adopted(tmp_path: Path) -> None:
    shards = (str(bare(tmp_path / "s0.git")), str(bare(tmp_path / "s1.git")))
    relay = StatusRelay(tmp_path / "gw" / "status.git", tmp_path / "gw" / "journal.json", shards)
    relay.ensure()
    status_commits(relay.git_dir, 20)
    r = relay.relay_once()
    assert r["pushes"] == 2 and r["relayed"] == 20  # one push per upstream repository
    on = [refs(Path(s)) for s in shards]
    assert len(on[0]) + len(on[1]) == 20 and on[0] and on[1]
    # dev-0000 pushed straight to its shard meanwhile (the gateway was down), then its next status reached the
    # gateway built on its old tip there: upstream refuses the relay's push, the relay follows upstream.
    ref = "refs/heads/status/dev-0000"
    home = next(Path(s) for s in shards if ref in refs(Path(s)))
    old = refs(home)[ref]
    direct = git(home, "commit-tree", f"{old}^{{tree}}", "-p", old, "-m", "pushed direct")
    git(home, "update-ref", ref, direct)
    stale = git(relay.git_dir, "commit-tree", f"{old}^{{tree}}", "-p", old, "-m", "at the gateway")
    git(relay.git_dir, "update-ref", ref, stale)
    r = relay.relay_once()
    assert r["rejected"] == 1 and refs(home)[ref] == direct  # nothing forced upstream
    assert refs(relay.git_dir)[ref] == direct and relay.journal.acked[ref] == direct and not relay.pending()


def test_the_status_repository_takes_only_device_status_branches(tmp_path: Path) -> None:
    relay = StatusRelay(tmp_path / "gw" / "status.git", tmp_path / "gw" / "journal.json", (str(tmp_path / "x"),),
                        max_devices=2)
    relay.ensure()
    work = Upstream(tmp_path / "dev")
    work.commit({"status.yaml": "x: 1\n"}, push=False)
    url = str(relay.git_dir)

    def push(ref: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(work.work), "push", url, f"HEAD:{ref}"], capture_output=True, text=True)

    assert push("refs/heads/main").returncode != 0  # the fleet's branches are not pushed here
    assert push("refs/heads/status/Bad_Id").returncode != 0
    assert push("refs/heads/status/cam-1").returncode == 0
    assert push("refs/heads/status/cam-2").returncode == 0
    refused = push("refs/heads/status/cam-3")
    assert refused.returncode != 0 and "2 status branches already" in refused.stderr  # bounded
    assert subprocess.run(["git", "-C", str(work.work), "push", url, ":refs/heads/status/cam-1"],
                          capture_output=True).returncode != 0  # no deletes


def test_failover_order_and_backoff() -> None:
    now = [0.0]
    f = Failover(["gateway", "central"], base=10, maximum=40, clock=lambda: now[0])
    assert [e for _, e in f.order()] == ["gateway", "central"]
    f.failed(0)
    assert [e for _, e in f.order()] == ["central", "gateway"] and f.backing_off(0)
    now[0] = 11
    assert [e for _, e in f.order()] == ["gateway", "central"]
    f.failed(0)
    f.failed(0)
    now[0] = 11 + 39
    assert f.backing_off(0)  # 10, 20, 40 (capped)
    f.succeeded(0)
    assert not f.backing_off(0)
    f.failed(0, "UnsignedCommit")  # the reason is said while the endpoint is asked last, and only then
    assert f.avoided() == [(0, "UnsignedCommit")]
    now[0] += 11
    assert f.avoided() == []
    f.failed(0, "TargetHashMismatch")
    f.succeeded(0)
    assert f.avoided() == []


def test_source_falls_back_from_a_refused_or_stale_mirror_and_checks_upstream(tmp_path: Path) -> None:
    central = Upstream(tmp_path / "central")
    c1 = central.commit({"fleet.yaml": "x: 1\n"})
    mirror = bare(tmp_path / "gw" / "fleet.git")
    git(mirror, "fetch", "--quiet", str(central.bare), "+refs/heads/main:refs/heads/main")
    now = [0.0]
    src = GitSource(central.file_url, tmp_path / "cache", mirrors=[(mirror.as_uri(), None)], upstream_check=100,
                    clock=lambda: now[0])
    try:
        r = src.poll(None)
        assert r.ok and r.commit == c1 and f"from {mirror.as_uri()}" in r.conditions[0].message
        # The mirror withholds a new commit: the upstream check (every 100 s) finds it.
        c2 = central.commit({"fleet.yaml": "x: 2\n"})
        now[0] = 50
        assert src.poll(c1).commit == c1  # within the bound, the mirror's head
        now[0] = 150
        r = src.poll(c1)
        assert r.ok and r.commit == c2 and "behind" in r.conditions[0].message
        # The mirror goes on serving c1, an ancestor of what was applied: passed over, central answers.
        r = src.poll(c2)
        assert r.ok and r.commit == c2 and "HistoryRewrite" in r.conditions[0].message
        # The next polls ask central first; the condition keeps saying why the mirror is asked last until its
        # backoff (30 s here) is over, not only in the poll that passed it over.
        now[0] = 170
        r = src.poll(c2)
        assert r.conditions[0].message == (f"main at {c2[:12]} from {central.file_url} ({mirror.as_uri()}: "
                                           "HistoryRewrite; asked last for now)")
        now[0] = 181
        r = src.poll(c2)  # backoff over: the mirror is asked first again, refused again
        assert r.ok and r.commit == c2 and "HistoryRewrite; asked last for now" in r.conditions[0].message
        # The mirror is gone: central answers, and the mirror is tried last for a while.
        import shutil

        shutil.rmtree(mirror)
        now[0] = 1000
        r = src.poll(c2)
        assert r.ok and r.commit == c2 and f"from {central.file_url}" in r.conditions[0].message
    finally:
        src.close()


def test_status_writer_pushes_to_the_gateway_first_and_fast_forwards_the_other(tmp_path: Path) -> None:
    gw, central = bare(tmp_path / "gw.git"), bare(tmp_path / "central.git")
    w = StatusWriter(central.as_uri(), "cam-1", tmp_path / "dev", heartbeat_interval=0,
                     preferred=[(gw.as_uri(), None)], retry_base=0.1, retry_max=0.2)
    try:
        w.submit(make_status("cam-1", version="1.0.0"))
        assert w.flush(15) and w.pushed_to == gw.as_uri()
        assert "refs/heads/status/cam-1" in git(gw, "for-each-ref") and not git(central, "for-each-ref")
        gone = gw.with_name("gw-away.git")
        gw.rename(gone)  # the gateway is down: central takes the push (git push: the whole history)
        w.submit(make_status("cam-1", version="1.1.0"))
        assert w.flush(15) and w.pushed_to == central.as_uri()
        assert git(central, "rev-list", "--count", "refs/heads/status/cam-1") == "2"
        gone.rename(gw)  # back, one commit behind: a fast-forward there once its backoff ends
        w._failover.succeeded(0)
        w.submit(make_status("cam-1", version="1.2.0"))
        assert w.flush(15) and w.pushed_to == gw.as_uri()
        assert git(gw, "rev-list", "--count", "refs/heads/status/cam-1") == "3"
    finally:
        w.close()


def test_gateway_config_defaults_and_refusals(tmp_path: Path) -> None:
    doc = """apiVersion: modelfleet/v1
kind: GatewayConfig
metadata: {name: site-7}
spec:
  upstream:
    source: {url: https://git.example.com/git/fleet.git}
    tuf: {url: https://tuf.example.com/, credentials: {bearerTokenFile: tuf.token}}
"""
    cfg = parse_gateway_config(doc, tmp_path / "gw.yaml")
    assert cfg.listen == "0.0.0.0:8780" and cfg.interval == 10.0 and cfg.branches == ("main",)
    assert cfg.upstream_status_urls == ("https://git.example.com/git/fleet.git",)
    assert cfg.tuf_url == "https://tuf.example.com" and cfg.tuf_credentials.bearer_token_file == tmp_path / "tuf.token"
    with pytest.raises(UserError, match="embeds a password"):
        parse_gateway_config(doc.replace("https://git.", "https://u:p@git."), tmp_path / "gw.yaml")
    with pytest.raises(UserError, match="spec.upstream: 'tuf' is a required property"):
        parse_gateway_config(doc.replace("    tuf: {url: https://tuf.example.com/, credentials: {bearerTokenFile: "
                                         "tuf.token}}\n", ""), tmp_path / "gw.yaml")


def test_agent_config_gateway_setting(tmp_path: Path) -> None:
    from reconciler.agent.config import parse_agent_config

    text = """apiVersion: modelfleet/v1
kind: AgentConfig
spec:
  deviceId: cam-1
  source: {url: https://git.example.com/git/fleet.git}
  tuf: {trustedRoot: root.json}
  gateway:
    url: http://gw.site.lan:8780/
    credentials: {username: cam-1, passwordFile: gw.pw}
    upstreamCheckInterval: 15m
"""
    cfg = parse_agent_config(text, tmp_path / "agent.yaml")
    assert cfg.gateway_source_url == "http://gw.site.lan:8780/git/fleet.git"
    assert cfg.gateway_status_url == "http://gw.site.lan:8780/git/status.git"
    assert cfg.gateway_tuf_urls() == ("http://gw.site.lan:8780/tuf/metadata/", "http://gw.site.lan:8780/tuf/targets/")
    assert cfg.gateway_upstream_check == 900 and cfg.gateway_credentials.password_file == tmp_path / "gw.pw"
    assert cfg.source_url == "https://git.example.com/git/fleet.git"  # the central URL stays: the fallback
    with pytest.raises(UserError, match="gateway.url .* holds userinfo"):
        parse_agent_config(text.replace("http://gw", "http://u:p@gw"), tmp_path / "agent.yaml")
