"""deploy/container/Dockerfile, built with podman and run: the agent in the image converges against a real fleet.

No container registry is reachable from the test machines, so the base image is made from Debian's packages
(scripts/container-base.sh: debootstrap minbase with python3-venv) and passed as the Dockerfile's
``PYTHON_IMAGE``; the Dockerfile is otherwise built as written (its pip and apt steps reach PyPI and Debian).
The container runs the agent on the host's network against the tests' git daemon and TUF server on 127.0.0.1,
with a read-only root filesystem, and must serve the fleet's model; the image's HEALTHCHECK (``podman
healthcheck run``), its user and the read-only root are checked on the running container.

Bounded and cached: the base tarball (keyed by the script's hash) and podman's storage (layers) live in
``$MODELFLEET_TEST_CACHE`` (default ``~/.cache/modelfleet-tests``)/container, so a rerun rebuilds only the layers
whose inputs changed (the wheel, when the sources did). First run on a 2-core machine: ~2 min for the base, ~2 min
for the build. One run at a time per cache (a lock file), as podman's storage is shared.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests._agent_fixtures import ENDPOINT, World, expected_output, infer
from tests._git_fixtures import free_port
from tests.packaging.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "container" / "Dockerfile"
BASE_SCRIPT = REPO_ROOT / "scripts" / "container-base.sh"
BASE_IMAGE = "localhost/modelfleet-test-base:bookworm"
IMAGE = "localhost/modelfleet-agent:test"
CACHE = Path(os.environ.get("MODELFLEET_TEST_CACHE") or Path.home() / ".cache" / "modelfleet-tests") / "container"
AGENT_UID = 10001


def podman_argv() -> list[str]:
    # Our own storage: layers cached across runs, nothing mixed with the host's images. runc where installed:
    # crun, podman's default, refuses hosts with hybrid cgroups (v1 controllers plus a v2 mount); runc runs on
    # v1, hybrid and v2. Builds use chroot isolation (no OCI runtime at all).
    runtime = ["--runtime", "runc"] if shutil.which("runc") or Path("/usr/sbin/runc").exists() else []
    return ["podman", "--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), *runtime]


def ulimits() -> list[str]:
    """The container's limits: this process's (podman's defaults for root are above the hard limits of a host
    without CAP_SYS_RESOURCE, where setting them fails); the process count kept below them, which always works."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(4096, *(n for n in resource.getrlimit(resource.RLIMIT_NPROC) if n != resource.RLIM_INFINITY))
    return ["--ulimit", f"nofile={nofile[0]}:{nofile[0]}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*podman_argv(), *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} … failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def _usable_podman() -> str | None:
    """Why podman cannot run containers here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/install-deps.sh installs it: apt-get install podman)"
    CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([*podman_argv(), "info", "--format", "{{.Host.Security.Rootless}}"], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        return f"podman cannot run here ({'rootless' if os.getuid() else 'rootful'}): {r.stderr.strip()[-500:]}"
    return None


def _base_image() -> None:
    """Import the Debian base (made once per version of the script, then cached)."""
    key = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()[:16]
    tarball = CACHE / f"debian-base-{key}.tar"
    if not tarball.exists():
        if os.getuid() != 0:
            pytest.skip("making the Debian base image needs root (debootstrap) and none is cached in "
                        f"{CACHE}: run scripts/container-base.sh {tarball} as root once")
        for old in CACHE.glob("debian-base-*.tar"):
            old.unlink()
        subprocess.run([str(BASE_SCRIPT), str(tarball)], check=True, timeout=900, capture_output=True)
    label = run("image", "inspect", "--format", "{{index .Labels \"modelfleet.test.base\"}}", BASE_IMAGE,
                check=False)
    if label.returncode != 0 or label.stdout.strip() != key:
        run("import", "--change", f"LABEL modelfleet.test.base={key}", str(tarball), BASE_IMAGE, timeout=300)


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, object]]:
    why = _usable_podman()
    if why:
        pytest.skip(why)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _base_image()
        before = run("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout.strip()
        t0 = time.monotonic()
        run("build", "--isolation", "chroot", "--format", "docker", "--pull=never", "--network", "host",
            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--ignorefile", str(DOCKERFILE) + ".dockerignore",
            "-f", str(DOCKERFILE), "-t", IMAGE, str(REPO_ROOT), timeout=900)
        build_s = time.monotonic() - t0
        (info,) = json.loads(run("image", "inspect", IMAGE).stdout)
        # Disk stays bounded: the previous image goes (its intermediate layers are the build cache and stay,
        # for a week after they were made).
        if before and before != info["Id"]:
            run("rmi", before, check=False)
        run("image", "prune", "--force", "--filter", "until=168h", check=False)
        yield {"info": info, "build_seconds": build_s}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0", bias=0.0)
    w.commit_fleet("1.0.0")
    yield w
    w.stop()


def _get(url_port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


# The first run makes the base (~1-2 min) and builds every layer (~2-3 min, mostly pip downloading the
# dependencies); a rerun after a source change rebuilds the wheel layer only (well under a minute).
@pytest.mark.timeout(900)
def test_the_image_runs_the_agent_non_root_on_a_read_only_root_and_reports_healthy(
        image: dict[str, object], world: World, tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    info = image["info"]
    assert isinstance(info, dict)
    size_mb = info["Size"] / 1e6
    record_property("image_size_mb", round(size_mb))
    print(f"\nimage {IMAGE}: {size_mb:.0f} MB, built in {image['build_seconds']:.0f} s")
    config = info["Config"]
    assert config["User"] == f"{AGENT_UID}:{AGENT_UID}"
    assert config["Entrypoint"] == ["modelfleet", "agent", "run"]
    healthcheck = info.get("Healthcheck") or config.get("Healthcheck")
    assert healthcheck["Test"][:2] == ["CMD", "python"]  # kept: built with --format docker
    assert size_mb < 700, size_mb  # ONNX Runtime, NumPy, git: ~0.5 GB; a jump means a fat new dependency

    port = free_port()
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir(mode=0o750)
    if os.getuid() == 0:  # rootful: the container's uid 10001 is the host's
        os.chown(state, AGENT_UID, AGENT_UID)
    else:  # rootless: it is one of the user's subordinate uids
        run("unshare", "chown", f"{AGENT_UID}:{AGENT_UID}", str(state))
    shutil.copy(world.trusted_root, etc / "root.json")
    cfg = yaml.safe_load(world.agent_config(tmp_path / "host", port=port).read_text())
    cfg["spec"].update(stateDir="/var/lib/modelfleet", serving={"host": "127.0.0.1", "port": port},
                       tuf={"trustedRoot": "/etc/modelfleet/root.json", "timeout": "5s"})
    (etc / "agent.yaml").write_text(yaml.safe_dump(cfg))
    for p in (etc, etc / "agent.yaml", etc / "root.json"):
        p.chmod(0o755 if p.is_dir() else 0o644)

    name = f"modelfleet-test-{port}"
    # --health-interval=disable: no periodic timer (podman makes it with systemd, which a test host may not run);
    # the test runs the HEALTHCHECK itself with `podman healthcheck run`.
    run("run", "-d", "--name", name, "--network", "host", "--read-only", "--health-interval=disable", *ulimits(),
        "-v", f"{etc}:/etc/modelfleet:ro", "-v", f"{state}:/var/lib/modelfleet",
        "-e", f"MODELFLEET_HEALTH_URL=http://127.0.0.1:{port}/v2/health/ready", IMAGE)
    try:
        deadline = time.monotonic() + 180
        while _get(port, f"/v2/models/{ENDPOINT}/ready") != 200:  # converged: the fleet's model serves
            status = run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if status != "running" or time.monotonic() > deadline:
                logs = run("logs", name, check=False)
                raise AssertionError(f"agent not ready ({status}):\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(0.5)
        np.testing.assert_allclose(infer(f"http://127.0.0.1:{port}", ENDPOINT), expected_output(0.0), rtol=1e-5)
        # The image's own HEALTHCHECK, as the runtime runs it.
        health = run("healthcheck", "run", name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        # Non-root: the agent (pid 1) and anything exec'd run as the image's user.
        status = run("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {str(AGENT_UID)}
        assert run("exec", name, "id", "-u").stdout.strip() == str(AGENT_UID)
        # Capture's ring writer was compiled into the wheel (the build stage's gcc; no compiler in the image).
        native = run("exec", name, "/opt/modelfleet/bin/python", "-c",
                     "from reconciler.capture.sealer import ring; print(ring.NATIVE)").stdout.strip()
        assert native == "True"
        assert run("exec", name, "sh", "-c", "command -v gcc cc", check=False).stdout.strip() == ""
        # Read-only root: nothing outside the state volume (and the runtime's tmpfs) is writable, for root too.
        for who in ([], ["--user", "0"]):
            denied = run("exec", *who, name, "touch", "/opt/modelfleet/x", check=False)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
        assert run("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
        written = list(state.iterdir())  # the agent's state (journal, store, Git cache), on the volume
        assert written and ({p.stat().st_uid for p in written} == {AGENT_UID} or os.getuid() != 0)
        run("stop", "--time", "15", name)
        assert run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"  # clean shutdown
    finally:
        run("rm", "--force", name, check=False)
