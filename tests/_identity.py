"""Device identities for tests: a status key per device and the inventory files that list them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from reconciler.identity import keys

FLEET_YAML = """apiVersion: modelfleet/v1
kind: Fleet
metadata: {{name: test-fleet}}
spec:
  tuf: {{metadataUrl: "http://127.0.0.1:9/metadata/", targetsUrl: "http://127.0.0.1:9/targets/"}}
  status: {{requireSignatures: {require}}}
"""


def device_key(directory: Path, device: str) -> tuple[Path, str]:
    """A new status key for ``device`` under ``directory``: (private key path, public key line)."""
    path = directory / f"{device}.status_ed25519"
    key = keys.load(path) if path.exists() else keys.generate(path)
    return path, keys.public_line(key, f"{device}@modelfleet")


def inventory_files(devices: Mapping[str, str | None], *, require: bool = True,
                    labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """``fleet.yaml`` and ``devices/<id>.yaml`` listing each device's status key (None: no key)."""
    files = {"fleet.yaml": FLEET_YAML.format(require=str(require).lower())}
    for device, public in devices.items():
        doc: dict[str, object] = {"apiVersion": "modelfleet/v1", "kind": "Device",
                                  "metadata": {"name": device, "labels": dict((labels or {}).get(device, {}))}}
        if public is not None:
            doc["spec"] = {"statusKeys": [public]}
        files[f"devices/{device}.yaml"] = yaml.safe_dump(doc, sort_keys=False)
    return files


_KEYS: dict[str, tuple[Path, str]] = {}


def shared_device_key(device: str) -> tuple[Path, str]:
    """One key per device id for the whole test session (tests that only need *a* valid identity)."""
    if device not in _KEYS:
        import tempfile

        base = Path(tempfile.gettempdir()) / "modelfleet-test-keys"
        base.mkdir(exist_ok=True, mode=0o700)
        _KEYS[device] = device_key(Path(tempfile.mkdtemp(dir=base)), device)
    return _KEYS[device]


def signed_status_commit(git_dir: Path, device: str, status_yaml: bytes, *, key_path: Path | None = None,
                         parent: str | None = None, when: int | None = None) -> str:
    """Write a status commit for ``device`` (signed with its key, or ``key_path``) into ``git_dir``; its sha."""
    import subprocess
    import time as _time

    from reconciler.identity.commitsig import sign_commit

    def git(*args: str, data: bytes) -> str:
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], input=data, capture_output=True,
                              check=True).stdout.decode().strip()

    blob = git("hash-object", "-w", "--stdin", data=status_yaml)
    tree = git("mktree", data=f"100644 blob {blob}\tstatus.yaml\n".encode())
    who = f"{device} <{device}@devices.modelfleet> {int(_time.time()) if when is None else when} +0000"
    payload = (f"tree {tree}\n" + (f"parent {parent}\n" if parent else "") + f"author {who}\ncommitter {who}\n\n"
               f"status: {device}\n").encode()
    key = keys.load(key_path or shared_device_key(device)[0])
    return git("hash-object", "-t", "commit", "-w", "--stdin", data=sign_commit(payload, key))
