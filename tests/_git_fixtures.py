"""Test helpers for the Git tests: real repositories, real ``git daemon`` on 127.0.0.1, real ssh-keygen/gpg keys.

Nothing here depends on the user's global git configuration: identities and config come from :data:`GIT_ENV`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Operator",
    "GIT_AUTHOR_EMAIL": "ops@example.com",
    "GIT_COMMITTER_NAME": "Test Operator",
    "GIT_COMMITTER_EMAIL": "ops@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(GIT_ENV)
    e.update(extra)
    return e


def git(cwd: Path, *args: str, extra_env: dict[str, str] | None = None, input: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env(**(extra_env or {})), input=input, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


@dataclass
class SshKey:
    path: Path
    public: str
    principal: str


def make_ssh_key(directory: Path, principal: str) -> SshKey:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / principal.split("@")[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return SshKey(path, path.with_suffix(".pub").read_text().strip(), principal)


def write_allowed_signers(path: Path, *keys: SshKey) -> Path:
    path.write_text("".join(f"{k.principal} namespaces=\"git\" {k.public}\n" for k in keys))
    return path


@dataclass
class GpgKey:
    home: Path
    uid: str
    pubring: Path  # exported public key: what a device gets provisioned with


def make_gpg_key(directory: Path, uid: str = "Release Bot <release@example.com>") -> GpgKey:
    home = directory / "gnupg"
    if len(str(home)) > 80:  # gpg names its agent's sockets after the home: keep them within a socket address
        directory.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="gpg-")) / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(home), "--passphrase", "", "--quick-gen-key", uid,
                    "ed25519", "sign", "never"], check=True, capture_output=True)
    pub = directory / "release-keyring.gpg"
    with open(pub, "wb") as fh:
        subprocess.run(["gpg", "--batch", "--homedir", str(home), "--export"], check=True, stdout=fh)
    return GpgKey(home, uid, pub)


def kill_gpg_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)


def commit_payload(repo: Path, message: str = "crafted", parent: str = "HEAD") -> bytes:
    """The bytes of an unsigned commit on top of ``parent`` with its tree: what a signature covers."""
    parent = git(repo, "rev-parse", parent)
    tree = git(repo, "rev-parse", f"{parent}^{{tree}}")
    who = f"{GIT_ENV['GIT_COMMITTER_NAME']} <{GIT_ENV['GIT_COMMITTER_EMAIL']}> 1700000000 +0000"
    return f"tree {tree}\nparent {parent}\nauthor {who}\ncommitter {who}\n\n{message}\n".encode()


def ssh_signature(key: SshKey, payload: bytes) -> bytes:
    """An armored SSH signature of ``payload`` in git's namespace, as ``git commit -S`` with gpg.format=ssh makes."""
    proc = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "git", "-f", str(key.path)], input=payload,
                          capture_output=True, check=True)
    return proc.stdout


def gpg_signature(key: GpgKey, payload: bytes) -> bytes:
    """An armored detached OpenPGP signature of ``payload``, as ``git commit -S`` makes."""
    proc = subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(key.home), "--armor", "--detach-sign"],
                          input=payload, capture_output=True, check=True)
    return proc.stdout


def write_raw_commit(repo: Path, payload: bytes, headers: list[tuple[str, bytes]]) -> str:
    """Write ``payload`` with the given signature headers (name, armored value) appended to its header block,
    byte for byte as given: no git command would write several of them, so the object is hashed literally."""
    head, body = payload.split(b"\n\n", 1)
    for name, value in headers:
        lines = value.rstrip(b"\n").split(b"\n")
        head += b"\n" + name.encode() + b" " + b"\n ".join(lines)
    return git(repo, "hash-object", "-t", "commit", "-w", "--literally", "--stdin", input=head + b"\n\n" + body)


class Upstream:
    """A bare 'server' repository plus an operator worktree that pushes to it."""

    def __init__(self, root: Path, name: str = "fleet.git", branch: str = "main") -> None:
        self.root = root
        self.bare = root / "srv" / name
        self.work = root / "operator"
        self.branch = branch
        self.bare.mkdir(parents=True)
        git(self.bare, "init", "--bare", "--quiet", f"--initial-branch={branch}")
        git(root, "init", "--quiet", f"--initial-branch={branch}", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def file_url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | bytes | None], message: str = "update", *,
               ssh_key: SshKey | None = None, gpg_key: GpgKey | None = None, push: bool = True) -> str:
        for rel, content in files.items():
            p = self.work / rel
            if content is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content.encode() if isinstance(content, str) else content)
        git(self.work, "add", "-A")
        args = ["commit", "--quiet", "--allow-empty", "-m", message]
        extra: dict[str, str] = {}
        if ssh_key is not None:
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={ssh_key.path}", *args, "-S"]
        elif gpg_key is not None:
            args = ["-c", f"user.signingkey={gpg_key.uid.split('<')[1].rstrip('>')}", *args, "-S"]
            extra["GNUPGHOME"] = str(gpg_key.home)
        git(self.work, *args, extra_env=extra)
        if push:
            self.push()
        return git(self.work, "rev-parse", "HEAD")

    def push(self, force: bool = False) -> None:
        git(self.work, "push", "--quiet", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{self.branch}")

    def head(self) -> str:
        return git(self.bare, "rev-parse", f"refs/heads/{self.branch}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


class GitDaemon:
    """``git daemon`` serving ``base`` on 127.0.0.1 with receive-pack enabled; stop()/start() simulate outages."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GitDaemon:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", f"--base-path={self.base}", "--export-all", "--enable=receive-pack",
             "--listen=127.0.0.1", f"--port={self.port}", "--max-connections=64", str(self.base)],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self.proc = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SilentServer:
    """Accepts TCP connections and never answers: a Git server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def make_status(device: str, *, applied: str | None = None, ready: bool = True, version: str = "1.0.0",
                heartbeat: str = "2026-11-24T10:00:00Z", deployment: str = "cams", model: str = "detector",
                endpoint: str = "detect", attempts: int = 1, message: str = "") -> dict:
    """A valid DeviceStatus document."""
    return {
        "apiVersion": "modelfleet/v1",
        "kind": "DeviceStatus",
        "metadata": {"name": device},
        "status": {
            "agentVersion": "0.1.0",
            "appliedCommit": applied,
            "attemptedCommit": applied,
            "heartbeat": heartbeat,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "Succeeded" if ready else "HealthCheckFailed", "message": message,
                 "lastTransitionTime": "2026-11-24T09:00:00Z"},
            ],
            "endpoints": [{"name": endpoint, "deployment": deployment, "model": model, "version": version,
                           "variant": "cpu-fp32", "runtime": "onnxruntime", "digest": "ab" * 32,
                           "state": "Serving" if ready else "Failed"}],
            "facts": {"hw.arch": "x86_64", "hw.memoryMB": 4096},
            "attempts": [{"time": "2026-11-24T09:59:00Z", "commit": applied, "result": "Succeeded", "message": message[:1024]}
                         for _ in range(attempts)],
        },
    }
