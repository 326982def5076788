"""Real agents (``modelfleet agent run`` processes) behind a real site gateway (``modelfleet gateway run``: its
own nginx + fcgiwrap + git http-backend), in front of a central nginx + git http-backend serving the fleet
repository (signed commits, pushes with Basic auth) and the TUF repository (bearer token).

1. The devices converge through the gateway: their polls, fetches and TUF requests end there; the central TUF
   server sends each file once; their signed status reaches the central repository through the relay and
   `fleet status` counts it (trusted).
2. A compromised gateway: a target tampered with in its cache is refused by every device (hash mismatch),
   which downloads it from the central server in the same pass and serves the right model; an unsigned commit
   injected into its mirror is refused, the devices stay on the signed head (read from the central server).
3. ``kill -9`` of the gateway while its relay pushes 2,000 status branches upstream: after the restart every
   branch upstream is at the gateway's tip, none lost, and the journal says so.
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

import pytest

from tests._agent_fixtures import AgentProcess, which_version
from tests._fleet_world import HttpWorld
from tests._gateway import GatewayProcess, central_tuf_url
from tests._git_fixtures import env, git, make_ssh_key, write_allowed_signers
from tests._servers import private_file

DEVICES = ("dev-a", "dev-b")


def modelfleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(XDG_CACHE_HOME=str(cwd / ".cache")), timeout=120)


def wait(pred: Any, what: str, timeout: float = 60.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def tips_syn(tips: dict[str, str]) -> dict[str, str]:
    return {r: sha for r, sha in tips.items() if "/syn-" in r}


def central_log(world: HttpWorld) -> list[list[str]]:
    return [line.split() for line in world.git_http.service_requests()]


@pytest.fixture
def site(tmp_path: Path):
    w = HttpWorld(tmp_path / "world").start()
    key = make_ssh_key(tmp_path / "keys", "ops@example.com")
    allowed = write_allowed_signers(tmp_path / "allowed_signers", key)
    gw: GatewayProcess | None = None
    agents: list[AgentProcess] = []
    try:
        w.publish("1.0.0")
        inventory: dict[str, str] = {}
        for dev in DEVICES:
            inventory.update(w.provision_identity(tmp_path / dev, dev))
        w.upstream.commit({**w.fleet_files("1.0.0", poll="300ms"), **inventory}, "deploy 1.0.0", ssh_key=key)
        tuf = central_tuf_url(w)
        token = private_file(tmp_path / "secrets" / "tuf.token", "unused")
        gw = GatewayProcess.for_world(w, tmp_path / "gateway").start()
        for dev in DEVICES:
            cfg = w.agent_config(tmp_path / dev, device_id=dev, poll="300ms", status=True, extra={
                "source": {"verify": {"mode": "head", "allowedSigners": str(allowed)}},
                "status": {"credentials": {"username": "device", "passwordFile": str(w.password_file)}},
                "tuf": {"metadataUrl": f"{tuf}/metadata/", "targetsUrl": f"{tuf}/targets/",
                        "credentials": {"bearerTokenFile": str(token)}},
                "gateway": {"url": gw.url}})
            agents.append(AgentProcess(cfg, tmp_path / f"{dev}.log").start())
        urls = [a.url() for a in agents]
        yield w, gw, agents, urls, key, tmp_path
    finally:
        for a in agents:
            a.stop()
        if gw is not None:
            gw.stop()
        w.stop()


def test_devices_behind_a_gateway_refuse_what_it_forges_and_their_status_is_relayed(site) -> None:
    w, gw, agents, urls, key, tmp_path = site
    wait(lambda: all(which_version(u, w) == "1.0.0" for u in urls), "both devices serving 1.0.0")

    # 1. Everything went through the gateway: the devices' polls and fetches hit its mirror, their TUF
    # requests its cache; the central server saw the gateway (anonymous reads) and no device poll.
    glog = gw.access_log()
    assert sum(1 for f in glog if f[1] == "/git/fleet.git/git-upload-pack") >= 4
    assert any(f[1].startswith("/tuf/targets/") and f[3] == "200" for f in glog)
    target_gets = [f for f in central_log(w) if f[1].startswith("/tuf/fleet/targets/")]
    assert len(target_gets) == len({f[1] for f in target_gets})  # each target file left the center once
    assert not any(f[1].endswith("/git-receive-pack") and f[4] == "device" and f[0] == "POST"
                   for f in central_log(w))  # no device pushed to the center: the gateway is up
    # Status: pushed to the gateway, relayed upstream in one push, signed, counted.
    wait(lambda: gw.round()["status"]["branches"] == 2 and gw.state()["status"]["pending"] == 0,
         "both statuses relayed", 60)
    # The devices' pushes to the gateway were the one-request in-process push (anonymous there): no `git push`
    # (whose first request is the ref advertisement).
    pushes = [f for f in gw.access_log() if f[1] == "/git/status.git/git-receive-pack"]
    assert pushes and all(f[3] == "200" for f in pushes)
    assert not [f for f in gw.access_log() if f[1] == "/git/status.git/info/refs" and f[2] == "git-receive-pack"]
    branches = git(w.upstream.bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/status/").split()
    assert branches == [f"status/{d}" for d in DEVICES]
    fs = modelfleet("fleet", "status", "--repo", w.git_url, "--format", "json", cwd=tmp_path)
    assert fs.returncode == 0, fs.stderr
    rows = {r["device"]: r for r in json.loads(fs.stdout)["devices"]}
    assert {d: rows[d]["trust"] for d in DEVICES} == {d: "trusted" for d in DEVICES}

    # 2a. A tampered target in the gateway's cache: refused by every device, fetched centrally instead.
    w.publish("1.1.0", bias=0.5)
    model = next(p for p in (w.tuf_dir / "targets").rglob("*model.onnx") if "1.1.0" in str(p))
    rel = model.relative_to(w.tuf_dir / "targets").as_posix()
    import urllib.request

    with urllib.request.urlopen(f"{gw.url}/tuf/targets/{rel}", timeout=10) as resp:  # the gateway caches it
        assert resp.read() == model.read_bytes()
    cached = [p for p in (gw.data / "cache" / "tuf").rglob("*") if f"/tuf/targets/{rel}".encode() in _head(p)]
    assert len(cached) == 1
    blob = bytearray(cached[0].read_bytes())
    blob[-1] ^= 0xFF  # the last byte of the model: same length, other bytes
    cached[0].write_bytes(bytes(blob))
    with urllib.request.urlopen(f"{gw.url}/tuf/targets/{rel}", timeout=10) as resp:
        assert resp.read() != model.read_bytes()  # the gateway now serves the tampered file
    # The gateway keeps metadata 1 s (tufCache.metadataSeconds): a device asking sooner gets the timestamp from
    # before 1.1.0 was published, finds no such target there and fetches it centrally, never meeting the tampered
    # copy. The deployment comes once the gateway passes the new timestamp on.
    timestamp = (w.tuf_dir / "metadata" / "timestamp.json").read_bytes()

    def gateway_timestamp() -> bytes:
        with urllib.request.urlopen(f"{gw.url}/tuf/metadata/timestamp.json", timeout=10) as resp:
            return resp.read()

    wait(lambda: gateway_timestamp() == timestamp, "the gateway passing on the new timestamp", 10, 0.1)
    before = len(central_log(w))
    w.upstream.commit(w.fleet_files("1.1.0", poll="300ms"), "deploy 1.1.0", ssh_key=key)
    gw.round()
    seen: set[str | None] = set()

    def on_new() -> bool:
        vs = [which_version(u, w) for u in urls]
        seen.update(vs)
        return all(v == "1.1.0" for v in vs)

    wait(on_new, "both devices serving 1.1.0", 90)
    assert "unknown" not in seen  # never served the tampered bytes
    for a in agents:
        log = a.log_path.read_text()
        assert "TargetHashMismatch" in log and "trying the next place" in log
    # ... and in its status: ArtifactsReady names the center as the place that served, and the gateway with the
    # reason while it is asked last (30 s), so the operator sees it without the device's log.
    def artifacts_note() -> bool:
        msgs = [next(c["message"] for c in json.loads((tmp_path / d / "state" / "status.json").read_text())
                     ["status"]["conditions"] if c["type"] == "ArtifactsReady") for d in DEVICES]
        return all(m.startswith("all targets verified in the store, from central (gateway ")
                   and m.endswith(": TargetHashMismatch; asked last for now)") for m in msgs)

    wait(artifacts_note, "ArtifactsReady naming the gateway's TargetHashMismatch", 20)
    central_gets = [f for f in central_log(w)[before:] if f[1] == f"/tuf/fleet/targets/{rel}"]
    assert len(central_gets) >= len(DEVICES)  # each device fetched the good copy from the center

    # 2b. An unsigned commit injected into the gateway's mirror: refused, the devices stay on the signed head.
    signed = w.upstream.head()
    mirror = gw.data / "repos" / "fleet.git"
    forged = git(mirror, "commit-tree", f"{signed}^{{tree}}", "-p", signed, "-m", "injected by the gateway")
    git(mirror, "update-ref", "refs/heads/main", forged, signed)

    refused: set[str] = set()

    def refused_everywhere() -> bool:
        # A compromised gateway keeps serving its forgery: its own refresh round may have put the signed head
        # back in the mirror (a slow machine runs one between the injection and the devices' polls).
        if git(mirror, "rev-parse", "refs/heads/main") != forged:
            git(mirror, "update-ref", "refs/heads/main", forged)
        for dev in DEVICES:
            st = json.loads((tmp_path / dev / "state" / "status.json").read_text())["status"]
            avail = next(c for c in st["conditions"] if c["type"] == "SourceAvailable")
            assert st.get("appliedCommit") != forged, st  # never the forgery
            # The refusal is named in the pass that asked the gateway; the next passes ask the central server
            # first (a refused place is asked last for 30 s, doubling), so each device's is seen once, not held.
            if "UnsignedCommit" in avail["message"] and st.get("appliedCommit") == signed:
                refused.add(dev)
        return refused == set(DEVICES)

    wait(refused_everywhere, "the injected commit refused by both devices", 90, 0.05)
    for dev in DEVICES:
        assert json.loads((tmp_path / dev / "state" / "status.json").read_text())["status"]["appliedCommit"] == signed
    assert all(which_version(u, w) == "1.1.0" for u in urls)


def test_kill9_of_the_gateway_mid_relay_loses_no_status_commit(site) -> None:
    w, gw, agents, urls, key, tmp_path = site
    wait(lambda: all(which_version(u, w) == "1.0.0" for u in urls), "both devices serving 1.0.0")
    status = gw.data / "repos" / "status.git"
    # 2,000 devices' status commits waiting at the gateway (as the devices of a big site push them), plus ours.
    stream = []
    for i in range(2000):
        dev = f"syn-{i:05d}"
        data = f"device: {dev}\n".encode()
        stream.append(f"commit refs/heads/status/{dev}\ncommitter {dev} <d@x> 1700000000 +0000\ndata 6\nstatus\n"
                      f"M 100644 inline status.yaml\ndata {len(data)}\n".encode() + data + b"\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=status, input=b"".join(stream), check=True)
    tips = dict(line.split()[::-1] for line in git(status, "for-each-ref", "--format=%(objectname) %(refname)",
                                                   "refs/heads/status/").splitlines())
    # A slow upstream (a pre-receive hook that takes 3 s, as policy hooks on a busy server do): the relay's push
    # is certainly under way when the gateway is killed.
    hook = w.upstream.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\ncat >/dev/null\nsleep 3\n")
    hook.chmod(0o755)
    os.kill(gw.pid, signal.SIGHUP)

    def pushing() -> bool:  # the relay's `git push` upstream is under way
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(fields[1]) == gw.pid and cmd[0].endswith(b"git") and b"push" in cmd:
                return True
        return False

    wait(pushing, "the relay's push upstream", 30, step=0.01)
    time.sleep(0.5)  # its pack is on its way; the hook holds the answer
    gw.kill9()
    hook.unlink()
    journal = gw.data / "relay-journal.json"
    acked = json.loads(journal.read_text())["acked"] if journal.exists() else {}
    assert len(acked) < len(tips)  # killed before the push was acknowledged
    gw.start(timeout=120)  # the restart relays what is not acknowledged (its first round: at once)
    # The killed gateway's own `git push` may still be landing (a child outlives its parent): then the restart's
    # push of the same branches is refused, the relay reads upstream's tips — ours — and acknowledges them.
    def caught_up() -> dict[str, Any] | None:
        st = gw.round()
        return st if st["status"]["pending"] <= len(DEVICES) else None  # the devices keep reporting meanwhile

    st = wait(caught_up, "the relay caught up", 120)
    assert st["status"]["lastError"] is None and st["status"]["branches"] >= len(tips)
    upstream = dict(line.split()[::-1] for line in git(
        w.upstream.bare, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/status/").splitlines())
    now = dict(line.split()[::-1] for line in git(status, "for-each-ref", "--format=%(objectname) %(refname)",
                                                  "refs/heads/status/").splitlines())
    synthetic = {r: sha for r, sha in now.items() if "/syn-" in r}
    assert len(synthetic) == 2000 and synthetic == tips_syn(tips)
    assert {r: upstream.get(r) for r in synthetic} == synthetic  # every branch upstream at its tip: none lost
    acked = json.loads(journal.read_text())["acked"]
    assert {r: acked.get(r) for r in synthetic} == synthetic
    for dev in DEVICES:  # and the devices go on reporting through the restarted gateway
        assert f"refs/heads/status/{dev}" in upstream


def test_simulate_behind_gateways(tmp_path: Path) -> None:
    """`modelfleet simulate --gateway` twice: the devices are cut into two sites, each polls and pushes through its
    site's gateway, and the relays bring every device's newest status to the central repository."""
    w = HttpWorld(tmp_path / "world").start()
    gws: list[GatewayProcess] = []
    try:
        w.publish("1.0.0")
        w.commit_raw(w.fleet_files("1.0.0"), "deploy 1.0.0")
        gws = [GatewayProcess.for_world(w, tmp_path / f"site-{i}", interval="1s", name=f"site-{i}").start()
               for i in range(2)]
        token = private_file(tmp_path / "tuf.token", "unused")
        p = modelfleet("simulate", "--devices", "6", "--repo", w.git_url, "--tuf", central_tuf_url(w),
                       "--tuf-token-file", str(token), "--trusted-root", str(w.trusted_root), "--username", "device",
                       "--password-file", str(w.password_file), "--gateway", gws[0].url, "--gateway", gws[1].url,
                       "--poll-interval", "1s", "--until", "converged", "--duration", "120s", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        final = json.loads(p.stdout.splitlines()[-1])
        assert final["versions"] == {"1.0.0": 6}
        for g in gws:  # each site's devices poll and push through their own gateway
            assert [f for f in g.access_log() if f[1] == "/git/status.git/git-receive-pack" and f[3] == "200"]
            assert [f for f in g.access_log() if f[1] == "/git/fleet.git/git-upload-pack"]
        wait(lambda: len(git(w.upstream.bare, "for-each-ref", "refs/heads/status/").splitlines()) == 6,
             "every device's status relayed to the center", 30)
    finally:
        for g in gws:
            g.stop()
        w.stop()


def fcgiwrap_of(gw: GatewayProcess) -> set[int]:
    """The fcgiwrap processes a gateway started (it gives them HOME=<dataDir>): the parent and its workers."""
    home = f"HOME={gw.data}".encode()
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "fcgiwrap" and home in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def test_kill9_and_stop_leave_no_fcgiwrap_worker_behind(tmp_path: Path) -> None:
    w = HttpWorld(tmp_path / "world").start()
    gw: GatewayProcess | None = None
    try:
        w.publish("1.0.0")
        w.commit_raw(w.fleet_files("1.0.0"), "deploy 1.0.0")
        gw = GatewayProcess.for_world(w, tmp_path / "gateway").start()
        first = wait(lambda: len(fcgiwrap_of(gw)) == 5 and fcgiwrap_of(gw), "fcgiwrap and its 4 workers")
        gw.kill9()  # fcgiwrap dies with the gateway; its workers are not told
        gw.start(timeout=120)
        assert not first & fcgiwrap_of(gw)  # the restart stopped what the killed gateway left
        wait(lambda: len(fcgiwrap_of(gw)) == 5, "the new fcgiwrap and its workers")
        assert gw.stop() == 0
        wait(lambda: not fcgiwrap_of(gw), "no fcgiwrap left after the gateway stopped", 15)
    finally:
        if gw is not None:
            gw.stop()
        w.stop()


def _head(path: Path) -> bytes:
    """A cache file's first 4 KiB; nothing for a directory or for one of nginx's temp files gone meanwhile (it
    renames them into place, or deletes them, while the test walks the cache)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4096)
    except (FileNotFoundError, IsADirectoryError):
        return b""
