"""The agent against Git and TUF hosting as operators run it (tests/_servers.py): nginx + git http-backend
(Basic auth on push, or on everything; HTTPS with a private CA), sshd with a deploy key and pinned known hosts,
and the TUF repository behind nginx with a bearer token. Every scenario also runs the secret scan: no secret
in any process's argv (sampled from /proc while it runs), logs, state files, command output, or anything on
the server (all objects of the fleet repository)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._agent_fixtures import AgentProcess, World, condition, read_status, wait_for, which_version
from tests._cli import run_cli
from tests._servers import GitHttp, Pki, SshServer, private_file

PUSH_PW = "push-S3cret-7f1c9e"  # the device's write credential (status push)
READ_PW = "read-S3cret-2b8d41"  # the device's read credential (source, on the private path)
TUF_TOKEN = "tuf-T0ken-93aa0c"
RO_PW = "ro-S3cret-c4e9a1"  # valid, read-only: its pushes get HTTP 403
NOACCESS_PW = "noaccess-S3cret-71d0e2"  # valid, no access to the repositories at all
GH_TOKEN = "ghp_U1urlT0ken5f3e2d1c0b9a8"  # a token as GitHub documents it in URLs: https://<token>@github.com
USERS = {"device-push": PUSH_PW, "device-read": READ_PW, "ops": PUSH_PW + "-ops", "device-ro": RO_PW,
         "device-noaccess": NOACCESS_PW}


def _variants(secret: str) -> list[bytes]:
    """The forms a leaked secret could take: itself and inside a Basic header."""
    out = [secret.encode()]
    for user in USERS:
        out.append(base64.b64encode(f"{user}:{secret}".encode()))
    out.append(base64.b64encode(f"tuf:{secret}".encode()))
    return out


SECRETS = [v for s in (PUSH_PW, READ_PW, TUF_TOKEN, USERS["ops"], RO_PW, NOACCESS_PW, GH_TOKEN) for v in _variants(s)]


@dataclass
class Servers:
    root: Path
    pki: Pki
    http: GitHttp
    ssh: SshServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("hosting")
    pki = Pki.make(root / "pki")
    with GitHttp(root / "nginx", pki, users=USERS, tuf_token=TUF_TOKEN, read_only=("device-ro",),
                 no_access=("device-noaccess",)) as http, SshServer(root / "sshd") as ssh:
        yield Servers(root, pki, http, ssh)


class CmdlineSampler:
    """Reads every process's command line from /proc every few ms while a scenario runs."""

    def __init__(self, secrets: list[bytes] = SECRETS) -> None:
        self.secrets = secrets
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _ppid(pid: str) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return None
        return int(stat[stat.rindex(b")") + 2:].split()[1])

    def _ours(self, ppid: int | None) -> bool:
        """Whether a process with parent ``ppid`` descends from this test's process. Other tests run in parallel
        (xdist) with the same secrets; their processes are not this scenario's leak. A chain that breaks (a parent
        already gone) counts as ours: better a false alarm than a missed leak."""
        me = os.getpid()
        for _ in range(64):
            if ppid is None:
                return True
            if ppid == me:
                return True
            if ppid <= 1:
                return False
            ppid = self._ppid(str(ppid))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                ppid = self._ppid(pid)
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmd = fh.read()
                except OSError:
                    continue
                self.samples += 1
                if any(s in cmd for s in self.secrets) and self._ours(ppid):
                    self.hits.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(0.005)

    def __enter__(self) -> CmdlineSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Device:
    world: World
    dir: Path
    config: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.dir / "state"


def all_objects(git_dir: Path) -> bytes:
    """Every object (decompressed) and ref of a repository."""
    objs = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                          capture_output=True, check=True).stdout
    refs = subprocess.run(["git", "--git-dir", str(git_dir), "for-each-ref"], capture_output=True, check=True).stdout
    cfg = (git_dir / "config").read_bytes()
    return objs + refs + cfg


def assert_no_secret(dev: Device, sampler: CmdlineSampler, servers: Servers) -> None:
    assert sampler.samples > 100 and sampler.hits == [], sampler.hits[:3]
    places: list[tuple[str, bytes]] = [(f"output {i}", o.encode()) for i, o in enumerate(dev.outputs)]
    for p in dev.dir.rglob("*"):
        if p.is_file() and not p.is_symlink() and "secrets" not in p.parts:
            places.append((str(p), p.read_bytes()))
    for repo in [dev.world.upstream.bare, *[p.parent for p in dev.state.rglob("HEAD") if (p.parent / "objects").is_dir()]]:
        places.append((f"repository {repo}", all_objects(repo)))
    for log in (servers.http.access_log, servers.http.root / "error.log"):
        places.append((str(log), log.read_bytes() if log.exists() else b""))
    leaks = [where for where, data in places for s in SECRETS if s in data]
    assert leaks == [], leaks


def _world(servers: Servers, tmp_path: Path, name: str) -> World:
    w = World(tmp_path / "world", daemon=False)
    w.publish("1.0.0", bias=0.0)
    w.commit_fleet("1.0.0")
    servers.http.publish_repo(f"{name}.git", w.upstream.bare)
    return w


def _device(servers: Servers, w: World, tmp_path: Path, name: str, transport: str, *,
            push_pw: str = PUSH_PW, push_user: str = "device-push") -> Device:
    d = tmp_path / "device"
    sec = d / "secrets"
    tuf_base = servers.http.publish_tuf(name, w.tuf_dir)
    tuf = {"metadataUrl": f"{tuf_base}/metadata/", "targetsUrl": f"{tuf_base}/targets/",
           "credentials": {"bearerTokenFile": str(private_file(sec / "tuf-token", TUF_TOKEN)),
                           "caFile": str(servers.pki.ca)}}
    push = {"username": push_user, "passwordFile": str(private_file(sec / "push", push_pw))}
    if transport == "http":  # auth on push only: the source reads anonymously
        source: dict[str, Any] = {"url": servers.http.url(f"{name}.git")}
        status: dict[str, Any] = {"credentials": push}
    elif transport == "https":  # auth on everything, private CA; a read credential and a write credential
        source = {"url": servers.http.url(f"{name}.git", private=True, tls=True),
                  "credentials": {"username": "device-read", "caFile": str(servers.pki.ca),
                                  "passwordFile": str(private_file(sec / "read", READ_PW))}}
        status = {"credentials": {**push, "caFile": str(servers.pki.ca)}}
    else:  # ssh deploy key + pinned known hosts
        key = sec / "deploy"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(servers.ssh.deploy_key.read_bytes())
        key.chmod(0o600)
        source = {"url": servers.ssh.url(w.upstream.bare),
                  "credentials": {"sshKeyFile": str(key), "knownHostsFile": str(servers.ssh.known_hosts)}}
        status = {}
    cfg = w.agent_config(d, poll="300ms", status=True,
                         extra={"source": source, "status": status, "tuf": tuf})
    return Device(w, d, cfg)


@contextlib.contextmanager
def converged_agent(dev: Device) -> Iterator[str]:
    """The agent running on ``dev``, serving 1.0.0; yields its URL and stops it cleanly (exit 0)."""
    agent = AgentProcess(dev.config, dev.dir / "agent.log").start()
    try:
        url = agent.url()
        wait_for(lambda: which_version(url, dev.world) == "1.0.0", 60, what="convergence")
        yield url
    finally:
        assert agent.stop() == 0


def _server_status(w: World) -> dict[str, Any] | None:
    import yaml

    p = subprocess.run(["git", "--git-dir", str(w.upstream.bare), "show", "refs/heads/status/dev-1:status.yaml"],
                       capture_output=True)
    return yaml.safe_load(p.stdout) if p.returncode == 0 else None


def _fleet_status(servers: Servers, dev: Device, transport: str, name: str, *args: str) -> Any:
    w = dev.world
    if transport == "ssh":
        env = {"GIT_SSH_COMMAND": f"ssh -o BatchMode=yes -i {dev.dir / 'secrets' / 'deploy'} -o IdentitiesOnly=yes "
                                  f"-o UserKnownHostsFile={servers.ssh.known_hosts} -o StrictHostKeyChecking=yes"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            r = run_cli("fleet", "status", "--repo", servers.ssh.url(w.upstream.bare), "--cache-dir",
                        str(dev.dir / "ops-cache"), *args)
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    else:
        ops_pw = private_file(dev.dir / "secrets" / "ops-pw", USERS["ops"])
        r = run_cli("fleet", "status", "--repo", servers.http.url(f"{name}.git", private=True, tls=True),
                    "--username", "ops", "--password-file", str(ops_pw), "--ca-file", str(servers.pki.ca),
                    "--cache-dir", str(dev.dir / "ops-cache"), *args)
    dev.outputs.append(r.text)
    return r


@pytest.mark.parametrize("transport", ["http", "https", "ssh"])
def test_converge_serve_report_on_each_transport(servers: Servers, tmp_path: Path, transport: str) -> None:
    name = f"fleet-{transport}"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, transport)
    w.commit_raw({"devices/dev-9.yaml": "apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-9\n",
                  **w.provision_identity(dev.dir)}, "inventory: dev-1 with its status key, dev-9 (not installed yet)")
    with CmdlineSampler() as sampler:
        r = _fleet_status(servers, dev, transport, name)
        assert r.code == 0, r.text
        assert "no device has reported yet" in r.out and "dev-9" in r.out  # before any device reported
        agent = AgentProcess(dev.config, dev.dir / "agent.log").start()
        try:
            url = agent.url()
            wait_for(lambda: which_version(url, w) == "1.0.0", 60, what="convergence")
            pushed = wait_for(lambda: condition(_server_status(w), "StatusReported"), 30, what="status pushed")
            assert pushed["status"] == "True" and pushed["reason"] == "Pushed"
            assert _server_status(w)["status"]["reporting"]["lastPushTime"]
            r = _fleet_status(servers, dev, transport, name)
            assert r.code == 0, r.text
            assert "dev-1" in r.out and "det@1.0.0" in r.out and "never reported (1 in the inventory): dev-9" in r.out
            st = run_cli("agent", "status", "--config", str(dev.config))
            dev.outputs.append(st.text)
            assert "StatusReported" in st.out and "Pushed" in st.out
        finally:
            assert agent.stop() == 0
    assert_no_secret(dev, sampler, servers)


def test_wrong_source_credential_is_named_and_last_good_keeps_serving(servers: Servers, tmp_path: Path) -> None:
    name = "fleet-rotate"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "https")
    with CmdlineSampler() as sampler, converged_agent(dev) as url:
        private_file(dev.dir / "secrets" / "read", READ_PW + "-revoked")  # a wrong (rotated-away) password
        w.publish("1.1.0", bias=1.0)
        w.commit_fleet("1.1.0")
        cond = wait_for(lambda: (c := condition(read_status(dev.dir), "SourceAvailable")) and c["status"] == "False"
                        and c, 30, what="SourceAvailable=False")
        assert cond["reason"] == "AuthenticationFailed", cond
        assert "401" in cond["message"]
        assert which_version(url, w) == "1.0.0"  # the last good version keeps serving
        st = run_cli("agent", "status", "--config", str(dev.config))
        dev.outputs.append(st.text)
        assert "AuthenticationFailed" in st.out
        private_file(dev.dir / "secrets" / "read", READ_PW)  # rotated back: recovers without a restart
        wait_for(lambda: which_version(url, w) == "1.1.0", 60, what="recovery after rotation")
    assert_no_secret(dev, sampler, servers)


def test_refused_status_push_is_visible(servers: Servers, tmp_path: Path) -> None:
    name = "fleet-refused"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "http", push_pw=PUSH_PW + "-wrong")
    with CmdlineSampler() as sampler, converged_agent(dev) as url:
        cond = wait_for(lambda: (c := condition(read_status(dev.dir), "StatusReported")) and c["status"] == "False"
                        and c, 30, what="StatusReported=False")
        assert cond["reason"] == "AuthenticationFailed", cond
        assert cond["message"].startswith("last successful push: never; the server refused the credentials")
        assert condition(read_status(dev.dir), "Ready")["status"] == "True"  # serving is fine
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        dev.outputs.append(metrics)
        assert 'modelfleet_agent_status_push_failures_total{reason="AuthenticationFailed"}' in metrics
        assert "modelfleet_agent_status_pushes_total 0.0" in metrics
        st = run_cli("agent", "status", "--config", str(dev.config))
        dev.outputs.append(st.text)
        assert "StatusReported  False" in st.out and "AuthenticationFailed" in st.out
        assert "status push last landed never; " in st.out
        assert _server_status(w) is None
    dev.outputs.append((dev.dir / "agent.log").read_text())
    assert_no_secret(dev, sampler, servers)


def test_tls_host_key_and_tuf_failures_are_named(servers: Servers, tmp_path: Path) -> None:
    from reconciler.core.credentials import Credentials
    from reconciler.distribution.store import ModelStore
    from reconciler.distribution.tufclient import TufClient, TufClientError
    from reconciler.gitops.source import GitSource

    name = "fleet-named"
    w = _world(servers, tmp_path, name)
    sec = tmp_path / "secrets"
    read = private_file(sec / "read", READ_PW)
    cases = [
        (servers.http.url(f"{name}.git", private=True, tls=True),
         Credentials("device-read", read, ca_file=servers.pki.other_ca), "TLSVerificationFailed"),
        (servers.http.url(f"{name}.git", private=True, tls=True),
         Credentials("device-read", private_file(sec / "bad", "nope"), ca_file=servers.pki.ca), "AuthenticationFailed"),
        (servers.ssh.url(w.upstream.bare),
         Credentials(ssh_key_file=servers.ssh.deploy_key, known_hosts_file=servers.ssh.wrong_known_hosts),
         "HostKeyVerificationFailed"),
        (servers.ssh.url(w.upstream.bare),
         Credentials(ssh_key_file=servers.ssh.other_key, known_hosts_file=servers.ssh.known_hosts),
         "AuthenticationFailed"),
    ]
    for i, (url, creds, reason) in enumerate(cases):
        res = GitSource(url, tmp_path / f"cache-{i}", credentials=creds, timeout=10).poll(None)
        assert res.reason == reason, (url, res.message)
        assert READ_PW not in res.message
    open_read = sec / "open"
    open_read.write_text(READ_PW)
    open_read.chmod(0o644)
    res = GitSource(cases[0][0], tmp_path / "cache-open", credentials=Credentials("device-read", open_read)).poll(None)
    assert res.reason == "CredentialsUnreadable" and "too open" in res.message
    tuf_base = servers.http.publish_tuf(name, w.tuf_dir)
    token = private_file(sec / "tuf", TUF_TOKEN)
    for creds, reason in ((Credentials(bearer_token_file=token, ca_file=servers.pki.other_ca), "TLSVerificationFailed"),
                          (Credentials(bearer_token_file=private_file(sec / "t2", "bad"), ca_file=servers.pki.ca),
                           "AuthenticationFailed"),
                          (Credentials(username="tuf", password_file=token, ca_file=servers.pki.ca), None)):
        client = TufClient(tmp_path / f"tuf-{reason}", f"{tuf_base}/metadata/", f"{tuf_base}/targets/",
                           w.trusted_root, ModelStore(tmp_path / f"store-{reason}"), credentials=creds, timeout=10)
        try:
            client.refresh()
            got = None
        except TufClientError as exc:
            got = exc.reason
            assert TUF_TOKEN not in str(exc)
        assert got == reason


def test_credentials_in_urls_are_refused_or_kept_off_argv(servers: Servers, tmp_path: Path) -> None:
    from reconciler.agent.config import parse_agent_config
    from reconciler.core.errors import UserError

    text = json.dumps({"apiVersion": "modelfleet/v1", "kind": "AgentConfig", "spec": {
        "deviceId": "dev-1", "source": {"url": f"https://device-read:{READ_PW}@example.com/fleet.git"},
        "tuf": {"trustedRoot": "root.json"}}})
    with pytest.raises(UserError) as err:
        parse_agent_config(text)
    assert READ_PW not in str(err.value) and "passwordFile" in str(err.value)
    name = "fleet-inline"
    w = _world(servers, tmp_path, name)
    dev = Device(w, tmp_path / "ops", tmp_path / "none")
    url = servers.http.url(f"{name}.git", private=True).replace("://", f"://ops:{USERS['ops']}@")
    with CmdlineSampler() as sampler:
        r = run_cli("fleet", "status", "--repo", url, "--cache-dir", str(dev.dir / "cache"))
        bad = run_cli("fleet", "status", "--repo", url.replace(USERS["ops"], READ_PW + "x"), "--cache-dir",
                      str(dev.dir / "cache2"))
    dev.outputs += [r.text, bad.text]
    assert r.code == 0 and "no device has reported yet" in r.out and "warning:" in r.err, r.text
    assert bad.code == 1 and "Traceback" not in bad.text
    assert sampler.hits == []
    assert READ_PW not in bad.text and USERS["ops"] not in r.text + bad.text
    assert_no_secret(dev, sampler, servers)


def test_a_token_as_the_url_user_name_stays_off_operator_argv(servers: Servers, tmp_path: Path) -> None:
    """GitHub's https://<token>@host form on the operator's side: the token is taken out of the URL (it is sent
    as a header, never on a git command line) or the command refuses the URL before any git process starts."""
    name = "fleet-token-user"
    w = _world(servers, tmp_path, name)
    dev = Device(w, tmp_path / "ops", tmp_path / "none")
    token = "ghp_0perat0rUserT0ken7a6b5c4d"  # not in SECRETS: it reaches nginx's log (the module's servers)
    url = servers.http.url(f"{name}.git", private=True).replace("://", f"://{token}@")
    with CmdlineSampler([token.encode()]) as sampler:
        runs = [run_cli("fleet", "status", "--repo", url, "--cache-dir", str(dev.dir / "c1")),
                run_cli("rollout", "status", "tiny", "--repo", url, "--cache-dir", str(dev.dir / "c2")),
                run_cli("fleet", "status", "--repo", url.replace(f"{token}@", ""), "--cache-dir",
                        str(dev.dir / "c3"), "--status-repo", url)]
        plan = run_cli("plan", "--repo", url, "--base", "main")
    dev.outputs += [r.text for r in [*runs, plan]]
    for r in runs:  # the server refuses a token it does not know: a named failure, no traceback
        assert r.code != 0 and "Traceback" not in r.text, r.text
    assert "embeds a password or token" in runs[0].err and "embeds a password or token" in runs[2].err
    assert plan.code == 2 and "credentials in the URL would show in `ps`" in plan.err, plan.text
    assert sampler.samples > 10 and sampler.hits == [], sampler.hits[:3]
    assert all(token not in r.text for r in [*runs, plan])
    # The token is the credential, so it reaches the server (nginx logs it as the user name); nowhere else.
    cached = [p for p in dev.dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert cached == []


def test_secret_scan_catches_leaks(servers: Servers, tmp_path: Path) -> None:
    """The scan itself can fail: a secret in argv, in a file or base64'd in a Basic header is found."""
    import sys

    w = _world(servers, tmp_path, "fleet-scan")
    dev = Device(w, tmp_path / "dev", tmp_path / "none")
    dev.dir.mkdir()
    with CmdlineSampler() as sampler:
        leaky = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", READ_PW])
        try:
            # (and to have looked as long as assert_no_secret asks of a scenario: on a loaded machine the leak can
            # be seen in the first sweep, before 100 command lines were read)
            wait_for(lambda: any(READ_PW in h for h in sampler.hits) and sampler.samples > 100, 20,
                     what="the sampler to see the leak")
        finally:
            leaky.kill()
            leaky.wait()
    sampler.hits.clear()
    (dev.dir / "journal.json").write_text(base64.b64encode(f"device-read:{READ_PW}".encode()).decode())
    with pytest.raises(AssertionError, match="journal.json"):
        assert_no_secret(dev, sampler, servers)


def test_idle_poll_is_one_authenticated_request_on_a_kept_alive_connection(servers: Servers, tmp_path: Path) -> None:
    from reconciler.core.credentials import Credentials
    from reconciler.gitops.source import GitSource

    name = "fleet-idle"
    w = _world(servers, tmp_path, name)
    creds = Credentials("device-read", private_file(tmp_path / "secrets" / "read", READ_PW), ca_file=servers.pki.ca)
    src = GitSource(servers.http.url(f"{name}.git", private=True, tls=True), tmp_path / "cache", credentials=creds)
    head = src.poll(None).commit
    assert head == w.upstream.head()
    before = len(servers.http.requests())
    for _ in range(10):
        res = src.poll(head)
        assert res.commit == head and not res.fetched

    def logged() -> list[list[str]]:
        return [line.split() for line in servers.http.requests()[before:] if f"/{name}.git/" in line]

    # nginx logs a request just after its response goes out, so the last line may trail the client.
    deadline = time.monotonic() + 5
    while len(logged()) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = logged()
    assert len(lines) == 10, lines  # no GET info/refs, no 401 challenge
    assert {(m, uri, status, user) for m, uri, status, user, *_ in lines} == {
        ("POST", f"/private/{name}.git/git-upload-pack", "200", "device-read")}
    assert len({conn for _m, _uri, _status, _user, conn, *_ in lines}) == 1  # one kept-alive connection
    src.close()


def test_rollout_commands_authenticate_like_fleet_status(servers: Servers, tmp_path: Path) -> None:
    """`modelfleet rollout` reads and pushes through the same credential options as `fleet status`: a private
    HTTPS repository (auth on everything, private CA); a password in the URL is taken out with a warning."""
    from tests._git_fixtures import Upstream
    from tests.rollout._fleet import FLEET, MODEL, deployment_yaml

    up = Upstream(tmp_path / "up")
    devices = {f"devices/dev-{i}.yaml": f"apiVersion: modelfleet/v1\nkind: Device\nmetadata:\n  name: dev-{i}\n"
                                        f"  labels: {{site: a, ring: {'canary' if i == 0 else 'stable'}}}\n"
               for i in range(3)}
    up.commit({"fleet.yaml": FLEET, "models/tiny.yaml": MODEL, "deployments/tiny.yaml": deployment_yaml(0),
               **devices}, "tiny: rollout at the canary step")
    servers.http.publish_repo("fleet-rollout.git", up.bare)
    url = servers.http.url("fleet-rollout.git", private=True, tls=True)
    ops_pw = private_file(tmp_path / "secrets" / "ops-pw", USERS["ops"])
    creds = ["--repo", url, "--username", "ops", "--password-file", str(ops_pw), "--ca-file", str(servers.pki.ca),
             "--cache-dir", str(tmp_path / "ops-cache")]
    outputs: list[str] = []
    with CmdlineSampler() as sampler:
        r = run_cli("rollout", "status", "tiny", *creds, "--format", "json")
        outputs.append(r.text)
        assert r.code == 0, r.text
        st = json.loads(r.out)
        assert st["version"] == "1.1.0" and st["step"] == 0, st
        r = run_cli("rollout", "pause", "tiny", *creds, "--insecure-skip-verify")  # clone and push, same credentials
        outputs.append(r.text)
        assert r.code == 0 and "paused rollout of tiny at step 0" in r.out, r.text
        shown = subprocess.run(["git", "--git-dir", str(up.bare), "show", "main:deployments/tiny.yaml"],
                               capture_output=True, text=True, check=True).stdout
        assert "paused: true" in shown
        anonymous = run_cli("rollout", "status", "tiny", "--repo", url, "--ca-file", str(servers.pki.ca),
                            "--cache-dir", str(tmp_path / "anon-cache"))
        outputs.append(anonymous.text)
        assert anonymous.code != 0 and anonymous.err.startswith("error: cannot read ") and "Traceback" not in anonymous.text
        inline = url.replace("https://", f"https://ops:{USERS['ops']}@")
        r = run_cli("rollout", "resume", "tiny", "--repo", inline, "--ca-file", str(servers.pki.ca),
                    "--cache-dir", str(tmp_path / "inline-cache"), "--insecure-skip-verify")
        outputs.append(r.text)
        assert r.code == 0, r.text
        assert "embeds a password or token" in r.err and "resumed rollout of tiny" in r.out
        half = run_cli("rollout", "status", "tiny", "--repo", url, "--username", "ops")
        outputs.append(half.text)
        assert half.code != 0 and "--username and --password-file go together" in half.err
    assert sampler.samples > 100 and sampler.hits == [], sampler.hits[:3]
    places = [(f"output {i}", o.encode()) for i, o in enumerate(outputs)]
    places += [(str(p), p.read_bytes()) for p in tmp_path.rglob("*")
               if p.is_file() and not p.is_symlink() and "secrets" not in p.parts and "ops-pw" not in p.name]
    places.append(("repository", all_objects(up.bare)))
    assert [where for where, data in places for s in SECRETS if s in data] == []


# Every form of userinfo a URL can carry (issue U.1): each is refused when the agent config is loaded.
USERINFO_FORMS = {
    "user@": lambda url: url.replace("://", "://device-read@"),
    "token@": lambda url: url.replace("://", f"://{GH_TOKEN}@"),  # GitHub's https://<token>@github.com/…
    "user:pass@": lambda url: url.replace("://", f"://{GH_TOKEN}:x-oauth-basic@"),  # the token is the user name
    "percent-encoded-colon": lambda url: url.replace("://", f"://x-access-token%3A{GH_TOKEN}@"),
    "percent-encoded-at": lambda url: url.replace("://", f"://{GH_TOKEN}%40"),
    "uppercase-scheme": lambda url: url.replace("https://", f"HTTPS://{GH_TOKEN}@"),
}


def _config_with(dev: Device, edit: Any) -> tuple[Path, int]:
    """``dev``'s agent config with ``edit(spec)`` applied, written under secrets/ (it holds the URL under test,
    which the leak scan must not find anywhere else), and the line of the first URL holding userinfo."""
    import yaml

    doc = yaml.safe_load(dev.config.read_text())
    edit(doc["spec"])
    path = dev.dir / "secrets" / "agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    line = next((i for i, text in enumerate(path.read_text().splitlines(), 1)
                 if ("@" in text or "%40" in text) and "://" in text), 0)
    return path, line


def _repo_requests(servers: Servers, name: str) -> list[str]:
    return [r for r in servers.http.requests() if f"/{name}.git/" in r]


@pytest.mark.parametrize("form", sorted(USERINFO_FORMS))
def test_userinfo_in_the_source_url_is_refused_at_load(servers: Servers, tmp_path: Path, form: str) -> None:
    """`https://<token>@host/fleet.git` used to load, then the token reached the log (`ls-refs at https://ghp_…`),
    journal.json, status.json, the status commits and the argv of git; now every userinfo form stops the agent
    before it starts, naming file:line and the `credentials` block, and nothing is sent to the server."""
    name = "fleet-userinfo"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "https")
    url = servers.http.url(f"{name}.git", private=True, tls=True)
    cfg, line = _config_with(dev, lambda spec: spec["source"].update(url=USERINFO_FORMS[form](url)))
    before = len(_repo_requests(servers, name))
    with CmdlineSampler() as sampler:
        r = run_cli("agent", "once", "--config", str(cfg))
        dev.outputs.append(r.text)
        time.sleep(0.6)  # let the sampler look a while
    assert r.code != 0 and "Traceback" not in r.text, r.text
    assert f"{cfg}:{line}: spec.source.url https://***@127.0.0.1:{servers.http.https_port}/private/{name}.git " \
           "holds userinfo" in r.err, r.err
    assert "`credentials` block" in r.err and "username + passwordFile" in r.err
    assert len(_repo_requests(servers, name)) == before  # refused before any request
    assert not (dev.state / "journal.json").exists() and not (dev.state / "status.json").exists()
    assert_no_secret(dev, sampler, servers)


def test_userinfo_in_status_tuf_and_capture_urls_is_refused_at_load(servers: Servers, tmp_path: Path) -> None:
    """The same rule for every other URL of the agent config; an SSH login (`ssh://git@host/…`, scp-like
    `git@host:path`) is not userinfo that holds a secret and keeps working."""
    name = "fleet-userinfo-other"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "https")
    git_url = servers.http.url(f"{name}.git", private=True, tls=True)
    tuf_base = servers.http.publish_tuf(name, w.tuf_dir)
    cases = {
        "spec.status.url": (lambda s: s["status"].update(url=git_url.replace("://", f"://{GH_TOKEN}@")),
                            "`credentials` block"),
        "spec.tuf.metadataUrl": (lambda s: s["tuf"].update(metadataUrl=f"{tuf_base}/metadata/".replace(
            "://", f"://tuf:{GH_TOKEN}@")), "spec.tuf.credentials: bearerTokenFile"),
        "spec.tuf.targetsUrl": (lambda s: s["tuf"].update(targetsUrl=f"{tuf_base}/targets/".replace(
            "://", f"://{GH_TOKEN}%40")), "spec.tuf.credentials: bearerTokenFile"),
        "spec.capture.allowedOrigins[0]": (lambda s: s.update(capture={"allowedOrigins": [
            f"HTTPS://{GH_TOKEN}@127.0.0.1:{servers.http.https_port}"]}), "spec.capture.uploadTokenFile"),
    }
    with CmdlineSampler() as sampler:
        for field_name, (edit, hint) in cases.items():
            cfg, line = _config_with(dev, edit)
            r = run_cli("agent", "once", "--config", str(cfg))
            dev.outputs.append(r.text)
            assert r.code != 0 and f"{cfg}:{line}: {field_name} https://***@127.0.0.1:" in r.err, (field_name, r.err)
            assert "holds userinfo" in r.err and hint in r.err, r.err
        time.sleep(0.6)
    assert not (dev.state / "status.json").exists()
    assert_no_secret(dev, sampler, servers)

    from reconciler.agent.config import load_agent_config

    for ssh_url in (servers.ssh.url(w.upstream.bare), f"{servers.ssh.user}@127.0.0.1:{w.upstream.bare}"):
        cfg, _ = _config_with(dev, lambda s, u=ssh_url: s["source"].update(url=u))
        assert load_agent_config(cfg).source_url == ssh_url


def _status_branch(w: World) -> bytes:
    """Everything on the device's status branch in the server's repository: every commit, tree and blob."""
    git = ["git", "--git-dir", str(w.upstream.bare)]
    revs = subprocess.run([*git, "rev-list", "--objects", "refs/heads/status/dev-1"], capture_output=True,
                          check=True).stdout.decode().split()
    shas = "\n".join(r for r in revs if len(r) == 40) + "\n"
    return subprocess.run([*git, "cat-file", "--batch"], input=shas.encode(), capture_output=True, check=True).stdout


@pytest.mark.parametrize("scheme", ["https", "HTTPS"])
def test_a_token_in_the_fleets_tuf_url_never_reaches_status_journal_or_logs(
        servers: Servers, tmp_path: Path, scheme: str) -> None:
    """A Fleet manifest is not agent config: a token in its `tuf.metadataUrl` comes from Git. The commit is
    refused (`ManifestsValid=False ValidationFailed` at fleet.yaml:line; `HTTPS://` fails the schema, whose message
    quotes the value) and the token reaches none of status.json, journal.json, the log, `agent status`, the
    status commits on the server or any argv."""
    import yaml

    name = f"fleet-tuf-token-{scheme}"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "https")
    doc = yaml.safe_load(dev.config.read_text())
    for key in ("metadataUrl", "targetsUrl"):  # the device takes the Fleet's TUF URLs
        del doc["spec"]["tuf"][key]
    dev.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    tuf_base = servers.http.publish_tuf(name, w.tuf_dir)
    fleet = yaml.safe_load(w.fleet_files("1.0.0")["fleet.yaml"])
    fleet["spec"]["tuf"] = {"metadataUrl": f"{tuf_base}/metadata/".replace("https://", f"{scheme}://{GH_TOKEN}@"),
                            "targetsUrl": f"{tuf_base}/targets/"}
    text = yaml.safe_dump(fleet, sort_keys=False, width=1000)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "metadataUrl" in t)
    w.commit_raw({"fleet.yaml": text, **w.provision_identity(dev.dir)}, "fleet: a token in the TUF URL")
    with CmdlineSampler() as sampler:
        agent = AgentProcess(dev.config, dev.dir / "agent.log").start()
        try:
            pushed = wait_for(lambda: (c := condition(_server_status(w), "ManifestsValid")) and c["status"] == "False"
                              and c, 60, what="ManifestsValid=False pushed")
            st = run_cli("agent", "status", "--config", str(dev.config))
            dev.outputs.append(st.text)
        finally:
            assert agent.stop() == 0
    assert pushed["reason"] == "ValidationFailed" and pushed["message"].startswith(f"fleet.yaml:{line}: "), pushed
    assert ("tuf.metadataUrl must not hold credentials" if scheme == "https"
            else "'HTTPS://***@127.0.0.1:") in pushed["message"], pushed
    assert condition(read_status(dev.dir), "ManifestsValid")["message"] == pushed["message"]
    assert "ValidationFailed" in st.out
    places = {"agent.log": (dev.dir / "agent.log").read_bytes(), "status branch": _status_branch(w),
              "agent status": st.text.encode()}
    for p in dev.state.rglob("*"):
        if p.is_file() and not p.is_symlink() and (dev.state / "git") not in p.parents:  # git/: the fleet repo's cache
            places[str(p)] = p.read_bytes()
    assert "journal.json" in " ".join(places) and "status.json" in " ".join(places)
    assert [where for where, data in places.items() if GH_TOKEN.encode() in data] == []
    assert sampler.samples > 100 and sampler.hits == [], sampler.hits[:3]


def test_read_only_credentials_report_permission_denied_not_a_wrong_password(servers: Servers, tmp_path: Path) -> None:
    """Valid credentials without write access (a read-only token, a protected branch): the server answers the
    push with HTTP 403, and the device says so (`StatusReported=False PermissionDenied`, with what to change),
    instead of `AuthenticationFailed` "the server refused the credentials" (that stays for a wrong password:
    test_refused_status_push_is_visible)."""
    name = "fleet-read-only"
    w = _world(servers, tmp_path, name)
    dev = _device(servers, w, tmp_path, name, "http", push_user="device-ro", push_pw=RO_PW)
    with CmdlineSampler() as sampler, converged_agent(dev) as url:
        cond = wait_for(lambda: (c := condition(read_status(dev.dir), "StatusReported")) and c["status"] == "False"
                        and c, 30, what="StatusReported=False")
        assert cond["reason"] == "PermissionDenied", cond
        assert cond["message"].startswith(
            "last successful push: never; the credentials are valid but lack write access to status/dev-1: give "
            "the device's token write access to that branch, or check branch protection: "), cond
        assert "HTTP 403" in cond["message"]
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        dev.outputs.append(metrics)
        assert 'modelfleet_agent_status_push_failures_total{reason="PermissionDenied"}' in metrics
        assert 'reason="AuthenticationFailed"' not in metrics
        st = run_cli("agent", "status", "--config", str(dev.config))
        dev.outputs.append(st.text)
        assert "StatusReported  False" in st.out and "PermissionDenied" in st.out
        assert _server_status(w) is None
    # The in-process push's requests (the ref update alone, POST git-receive-pack; or the advertisement, GET
    # info/refs): authenticated, then refused; no `git push` fallback (it would get the same answer with four
    # processes).
    pushes = [r.split() for r in _repo_requests(servers, name) if r.split()[3] == "device-ro"]
    assert pushes and {p[2] for p in pushes} == {"403"} and {p[0] for p in pushes} <= {"GET", "POST"}, pushes
    dev.outputs.append((dev.dir / "agent.log").read_text())
    assert_no_secret(dev, sampler, servers)


def test_http_403_is_permission_denied_for_git_and_in_process_clients(servers: Servers, tmp_path: Path) -> None:
    """What each client makes of the server's answers: HTTP 403 (authenticated, no access) is PermissionDenied,
    HTTP 401 (wrong password) AuthenticationFailed — for the in-process ls-refs poll, for `git ls-remote`/`git
    fetch` and for `git push` (their messages classified), the same server and repository."""
    from reconciler.core.credentials import Credentials
    from reconciler.gitops.auth import GitAuth, classify
    from reconciler.gitops.source import GitSource

    name = "fleet-403"
    w = _world(servers, tmp_path, name)
    url = servers.http.url(f"{name}.git", private=True, tls=True)
    sec = tmp_path / "secrets"

    def creds(user: str, pw: str) -> Credentials:
        return Credentials(user, private_file(sec / user, pw), ca_file=servers.pki.ca)

    noaccess, readonly, wrong = creds("device-noaccess", NOACCESS_PW), creds("device-ro", RO_PW), \
        creds("device-push", "not-" + PUSH_PW)
    with CmdlineSampler() as sampler:
        res = GitSource(url, tmp_path / "c1", credentials=noaccess, timeout=10).poll(None)
        assert res.reason == "PermissionDenied", res.message
        assert res.message.startswith("the credentials are valid but lack access to the repository") and \
            "HTTP 403" in res.message
        assert GitSource(url, tmp_path / "c2", credentials=wrong, timeout=10).poll(None).reason == "AuthenticationFailed"
        assert GitSource(url, tmp_path / "c3", credentials=readonly, timeout=10).poll(None).commit == w.upstream.head()

        def git(c: Credentials, *args: str) -> str:
            p = subprocess.run(["git", *args], capture_output=True, text=True, cwd=w.upstream.work,
                               env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **GitAuth(url, c).env()})
            assert p.returncode != 0
            return p.stderr

        assert classify(git(noaccess, "ls-remote", url)) == "PermissionDenied"
        assert classify(git(readonly, "push", url, "HEAD:refs/heads/status/dev-1")) == "PermissionDenied"
        assert classify(git(wrong, "push", url, "HEAD:refs/heads/status/dev-1")) == "AuthenticationFailed"
        time.sleep(0.3)
    assert sampler.samples > 100 and sampler.hits == [], sampler.hits[:3]
