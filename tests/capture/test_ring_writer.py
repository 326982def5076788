"""The ring's two writers — Python (``RowRing.put``) and C (``_ringput.Writer``, built at install when a compiler
is there) — write the same bytes, refuse the same records, and keep every row whole under concurrent puts."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest

from reconciler.capture.sealer import ring as ring_mod
from reconciler.capture.sealer.ring import FULL, OTHER, PUT, RowRing
from reconciler.capture.sealer.rows import TRIGGER_CODE, layout_of
from tests.capture.test_sealer import LAYOUTS, records_of

WRITERS = ("python", "native")


def _native_built() -> None:
    """The C writer is part of what `make test` installs (install-deps.sh brings gcc and the Python headers): not
    built is a failure (as in tests/packaging/test_wheel.py), never a skip."""
    if ring_mod._ringput is None:
        pytest.fail("reconciler.capture.sealer._ringput is not built: reinstall with a C compiler and the Python "
                    "headers (pip's build log names what was missing)")


def _ring(layout: Any, writer: str, wake_fd: int | None = None) -> RowRing:
    if writer == "native":
        _native_built()
    ring, fd = RowRing.create(layout, wake_fd, native=writer == "native")
    os.close(fd)
    assert (ring._writer is not None) == (writer == "native")
    return ring


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_both_writers_write_the_same_bytes(name: str) -> None:
    records, layout = records_of(name, 9)
    rows: dict[str, bytes] = {}
    for writer in WRITERS:
        ring = _ring(layout, writer)
        for i, (inputs, outputs) in enumerate(records):
            code = TRIGGER_CODE["sampled" if i % 2 else "lowConfidence"]
            assert ring.put(1_800_000_000.25 + i, code, inputs, outputs) == PUT
        rows[writer] = bytes(ring.mm)  # (the shared file: take() copies fields, not the padding between them)
        assert len(ring.take()) == 9  # type: ignore[arg-type]
        assert ring.close() == 0
        ring.release()
    assert rows["python"] == rows["native"]


@pytest.mark.parametrize("writer", WRITERS)
def test_each_writer_refuses_what_the_layout_does_not_hold_and_a_full_ring_drops(writer: str) -> None:
    inputs, outputs = LAYOUTS["vector"](1)
    layout = layout_of(inputs, outputs)
    assert layout is not None
    ring = _ring(layout, writer)
    refused = [
        ({"x": np.zeros((1, 16), np.float64)}, outputs),  # dtype
        ({"x": np.zeros((2, 16), np.float32)}, outputs),  # shape
        ({"x": np.zeros((16,), np.float32)}, outputs),  # rank
        ({"z": np.zeros((1, 16), np.float32)}, outputs),  # name
        ({"x": np.zeros((1, 32), np.float32)[:, ::2]}, outputs),  # not contiguous
        ({"x": np.zeros((1, 16), np.float32), "extra": np.zeros(1)}, outputs),  # one input too many
        (inputs, {}),  # an output missing
    ]
    for ins, outs in refused:
        assert ring.put(1.0, 1, ins, outs) == OTHER
    assert ring.take() is None  # nothing was published
    for _ in range(ring.capacity):
        assert ring.put(1.0, 1, inputs, outputs) == PUT
    assert ring.put(1.0, 1, inputs, outputs) == FULL
    assert len(ring.take()) == ring.capacity  # type: ignore[arg-type]
    assert ring.put(2.0, 1, inputs, outputs) == PUT
    assert ring.close() == 1  # the row not taken yet
    assert ring.put(3.0, 1, inputs, outputs) == OTHER  # closed: the caller takes the agent's queue
    rows = ring.take()
    assert rows is not None and rows["t"].tolist() == [2.0]
    ring.release()
    assert ring.mm.closed


@pytest.mark.parametrize("writer", WRITERS)
def test_an_equal_dtype_that_is_another_object_is_taken(writer: str) -> None:
    """numpy has two int64 dtype objects on 64-bit Linux ('l' and 'q'): equal, not the same object."""
    layout = layout_of({"x": np.zeros((1, 3), np.dtype("l"))}, {})
    assert layout is not None and np.dtype("q") == np.dtype("l")
    ring = _ring(layout, writer)
    assert ring.put(1.0, 1, {"x": np.arange(3, dtype=np.dtype("q")).reshape(1, 3)}, {}) == PUT
    rows = ring.take()
    assert rows is not None and rows["i:x"].tolist() == [[[0, 1, 2]]]
    ring.release()


def test_a_c_writer_never_initialised_or_released_takes_nothing() -> None:
    _native_built()
    writer_type = ring_mod._ringput.Writer  # type: ignore[union-attr]
    bare = writer_type.__new__(writer_type)
    assert bare.put(1.0, 1, {}, {}) == OTHER and bare.close() == 0
    with pytest.raises(TypeError):
        bare.put(1.0, 1, {})
    inputs, outputs = LAYOUTS["vector"](1)
    ring = _ring(layout_of(inputs, outputs), "native")
    writer = ring._writer
    ring.release()
    assert writer.put(1.0, 1, inputs, outputs) == OTHER  # (the mapping is gone: nothing is written)
    with pytest.raises(ValueError):
        writer_type(bytearray(100), 64, 1000, 96, np.ndarray, [], [], -1, 0)  # smaller than its geometry
    with pytest.raises(ValueError):
        writer_type(bytearray(64 + 96), 64, 1, 96, np.ndarray, [("x", np.dtype("f4"), (1, 30), 16, 120)], [], -1, 0)


@pytest.mark.parametrize("writer", WRITERS)
def test_the_sealer_is_woken_every_quarter_of_the_ring(writer: str) -> None:
    inputs, outputs = LAYOUTS["vector"](1)
    layout = layout_of(inputs, outputs)
    assert layout is not None
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        ring = _ring(layout, writer, wake_fd=w)
        quarter = ring._wake_mask + 1
        for _ in range(quarter - 1):
            ring.put(1.0, 1, inputs, outputs)
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
        ring.put(1.0, 1, inputs, outputs)
        assert os.read(r, 16) == b"w"
        ring.close()
        ring.release()
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("writer", WRITERS)
def test_concurrent_puts_and_takes_keep_every_row_whole(writer: str) -> None:
    """Four request threads put while the sealer's end takes: every row taken is one thread's record, whole
    (its input, its output and its head agree), and every record put is taken once."""
    layout = layout_of({"x": np.zeros((1, 64), np.float32)}, {"y": np.zeros((1, 8), np.int64)})
    assert layout is not None
    ring = _ring(layout, writer)
    per_thread, done = 3000, threading.Event()
    put: list[int] = []

    def producer(k: int) -> None:
        n = 0
        for i in range(per_thread):
            v = k * per_thread + i
            if ring.put(float(v), 1 + k, {"x": np.full((1, 64), v, np.float32)},
                        {"y": np.full((1, 8), v, np.int64)}) == PUT:
                n += 1
        put.append(n)

    taken: list[np.ndarray] = []

    def consumer() -> None:
        while not done.is_set() or ring.ctrl[0] != ring.ctrl[1]:
            rows = ring.take(limit=50)
            if rows is not None:
                taken.append(rows)

    c = threading.Thread(target=consumer)
    c.start()
    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    c.join(30)
    rows = np.concatenate(taken)
    assert len(rows) == sum(put) > 0
    values = rows["t"].astype(np.int64)
    assert (rows["trig"] == 1 + values // per_thread).all()
    assert (rows["i:x"].reshape(len(rows), 64) == values[:, None]).all()
    assert (rows["o:y"].reshape(len(rows), 8) == values[:, None]).all()
    assert len(set(values.tolist())) == len(rows)
    ring.close()
    ring.release()


def test_the_sealers_count_words_are_read_and_written_through_the_c_module() -> None:
    """take() reads the rows-written count with acquire and writes the rows-taken one with release semantics (what
    keeps a weakly ordered CPU from reading a row before its count): the same values as plain reads."""
    _native_built()
    ringput = ring_mod._ringput
    assert ringput is not None
    inputs, outputs = LAYOUTS["vector"](1)
    ring = _ring(layout_of(inputs, outputs), "native")
    for _ in range(5):
        ring.put(1.0, 1, inputs, outputs)
    assert ringput.load_acquire(ring.mm, 0) == 5 == ring.ctrl[0]
    assert len(ring.take(limit=3)) == 3  # type: ignore[arg-type]
    assert ringput.load_acquire(ring.mm, 1) == 3 == ring.ctrl[1]
    ringput.store_release(ring.mm, 1, 4)
    assert ring.ctrl[1] == 4 and len(ring.take()) == 1  # type: ignore[arg-type]
    for bad in (-1, 2):
        with pytest.raises(ValueError):
            ringput.load_acquire(ring.mm, bad)
    with pytest.raises(ValueError):
        ringput.load_acquire(bytearray(8), 0)  # too short for the two words
    with pytest.raises(BufferError):
        ringput.store_release(bytes(16), 0, 1)  # read-only
    ring.release()
