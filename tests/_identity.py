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
