"""The Device manifests of a simulated fleet (``modelfleet simulate --write-inventory DIR``).

Rollout steps select devices from the inventory (``devices/<id>.yaml`` in the fleet repository), never from
what a status claims; and the operator's tools count a status only when it is signed by a key the device's
manifest lists. A rehearsal with N simulated devices therefore needs N Device manifests whose names and
labels are the ones the simulator gives (``sim-00000`` …, ``ring: canary`` for the first ``--canaries``,
``ring: stable`` for the others, plus every ``--label``) and, for signed status, each device's public key.

:func:`device_manifests` makes them (pure but for the keys); with ``keys``, a missing key file ``keys/<id>`` is
generated (0600, as ``modelfleet agent keygen --output keys/<id>`` would) and its public half listed in
``spec.statusKeys``. :func:`write_inventory` writes them, one file per device, each atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.core.fsutil import atomic_write_text
from reconciler.simulate.fleet import device_id


def device_manifests(devices: int, *, canaries: int = 0, labels: dict[str, str] | None = None,
                     prefix: str = "sim", first: int = 0, keys: Path | None = None) -> dict[str, str]:
    """``<id>.yaml`` -> the Device manifest of each simulated device numbered ``first`` … ``first+devices-1``."""
    from reconciler.identity import keys as device_keys

    out = {}
    for i in range(first, first + devices):
        dev = device_id(prefix, i)
        doc: dict[str, Any] = {"apiVersion": "modelfleet/v1", "kind": "Device",
                               "metadata": {"name": dev, "labels": {**(labels or {}),
                                                                    "ring": "canary" if i < canaries else "stable"}}}
        if keys is not None:
            path = keys / dev
            key = device_keys.load(path) if path.exists() else device_keys.generate(path)
            doc["spec"] = {"statusKeys": [device_keys.public_line(key, dev)]}
        out[f"{dev}.yaml"] = yaml.safe_dump(doc, sort_keys=False)
    return out


def write_inventory(directory: Path, manifests: dict[str, str]) -> int:
    """Write ``manifests`` into ``directory`` (made if missing); files already holding the same text are left
    alone. Returns how many files were written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, text in manifests.items():
        path = directory / name
        try:
            if path.read_text() == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(path, text)
        written += 1
    return written
