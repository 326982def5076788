"""What a sealed batch holds when the records' layout changes: the writer appends records unchecked and checks
their layout once, when it seals; records of another layout (names, dtypes, ranks, shapes past the first axis)
still come out as batches of one layout each, every record once and in order, their metadata matching them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from nacl.public import PrivateKey, SealedBox

from reconciler.capture.batch import MAGIC, open_batch, seal_batch
from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from tests.capture._capture import Campaign


def _opened(svc: CaptureService, campaign: Campaign) -> list[Any]:
    batches = [open_batch(p.read_bytes(), campaign.private, name=p.name) for p, _ in svc.spool.list()]
    return sorted(batches, key=lambda b: b.meta["start"])


def test_records_of_changing_layouts_are_sealed_as_batches_of_one_layout_each_in_order(tmp_path: Path) -> None:
    ticks = iter(range(10**6))
    svc = CaptureService(tmp_path / "state", "dev-1", background=False, clock=lambda: 1_800_000_000 + next(ticks))
    campaign = Campaign()
    svc.configure({"mm": parse_policy(campaign.section(batch={"records": 100}))})
    obs = svc.observer_for("mm", "1")
    records = (  # (inputs, outputs) in the order served
        [({"x": np.full((1, 4), i, np.float32)}, {"y": np.full((1, 2), i, np.float32)}) for i in range(3)]
        + [({"x": np.full((1, 6), i, np.float32)}, {"y": np.full((1, 2), i, np.float32)}) for i in range(3, 5)]
        + [({"x": np.full((1, 4), i, np.float64)}, {"y": np.full((1, 2), i, np.float32)}) for i in range(5, 7)]
        + [({"x": np.full((3, 4), 7, np.float32)}, {"y": np.full((3, 2), 7, np.float32)})]  # 3 rows: same layout
        + [({"x": np.full((1, 4), 8, np.float32), "z": np.zeros(1, np.int64)}, {"y": np.full((1, 2), 8, np.float32)})]
        + [({"x": np.full((1, 4), i, np.float32)}, {"y": np.float32(i)}) for i in range(9, 11)]  # scalar outputs
    )
    for inputs, outputs in records:
        obs.observe(inputs, outputs, 0.0)
    svc.drain()
    svc.flush(force=True)

    batches = _opened(svc, campaign)
    assert [(b.meta["records"], b.meta["rows"]) for b in batches] == [(3, 3), (2, 2), (2, 2), (1, 3), (1, 1), (2, 2)]
    assert [b.arrays["x"].shape for b in batches] == [(3, 4), (2, 6), (2, 4), (3, 4), (1, 4), (2, 4)]
    assert [b.arrays["x"].dtype for b in batches] == [np.float32, np.float32, np.float64, np.float32, np.float32,
                                                      np.float32]
    assert [b.arrays["y"].shape for b in batches] == [(3, 2), (2, 2), (2, 2), (3, 2), (1, 2), (2,)]
    assert [float(v) for b in batches for v in b.arrays["x"][:, 0]] == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 8, 9, 10]
    assert [float(v) for v in batches[-1].arrays["y"]] == [9, 10] and batches[4].arrays["z"].tolist() == [0]
    for b in batches:  # each batch's metadata says what it holds
        index = b.meta["recordIndex"]
        assert len(index) == b.meta["records"] and sum(r["rows"] for r in index) == b.meta["rows"]
        assert (index[0]["time"], index[-1]["time"]) == (b.meta["start"], b.meta["end"])
        assert b.meta["triggers"] == {"sampled": b.meta["records"]}
    assert svc.counts["captured"] == len(records) and svc.counts["sealed"] == len(batches)


def test_the_sealed_arrays_are_a_npz_numpy_itself_reads(tmp_path: Path) -> None:
    """The writer builds the archive itself (no zipfile): numpy's own np.load reads what the owner decrypts."""
    campaign = Campaign()
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "name": np.array(["ab", "c", ""]),
              "big-endian": np.arange(3, dtype=">i4"), "ünïcode": np.array([True, False, True]),
              "strided": np.arange(12.0).reshape(3, 4)[:, 1]}
    meta = {"id": "cap-1", "device": "d", "endpoint": "e", "model": "m", "modelVersion": "1", "campaign": "c",
            "purpose": "p", "start": 1.0, "end": 2.0, "records": 3, "rows": 3}
    _, data = seal_batch(meta, arrays, campaign.public)
    inner = SealedBox(PrivateKey(campaign.private)).decrypt(data[data.index(b"\n", len(MAGIC)) + 1:])
    with np.load(io.BytesIO(inner[inner.index(b"\n") + 1:]), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(arrays)
        for k, v in arrays.items():
            assert npz[k].dtype == v.dtype and npz[k].tolist() == v.tolist()
    assert {k: v.tolist() for k, v in open_batch(data, campaign.private).arrays.items()} == \
        {k: v.tolist() for k, v in arrays.items()}
