"""Receive buffers are reused only once nothing refers to them, within the pool's bounds."""

from __future__ import annotations

import numpy as np

from reconciler.serving.http.bodypool import BodyPool


def address(buf: memoryview) -> int:
    return int(np.frombuffer(buf, np.uint8).ctypes.data)


def test_a_buffer_is_reused_once_its_request_and_every_view_are_gone() -> None:
    pool = BodyPool(max_bytes=1 << 20)
    first = pool.take(1000)
    first_at = address(first)
    tensor = np.frombuffer(first[8:], np.float32)  # what the decoder hands the runtime
    del first
    second = pool.take(1000)
    assert address(second) != first_at  # the tensor still holds the first buffer
    del tensor
    third = pool.take(1000)
    assert address(third) == first_at  # now nothing does: reused, no new pages
    second_at = address(second)
    del second
    fourth = pool.take(900)  # a free buffer of 900 to 1800 bytes fits
    assert len(fourth) == 900 and address(fourth) == second_at and pool.pooled_bytes == 2000


def test_the_pool_stays_within_its_bytes_and_buffers_and_drops_free_ones_for_new_sizes() -> None:
    pool = BodyPool(max_bytes=10_000, max_buffers=2)
    held = [pool.take(4000), pool.take(4000), pool.take(4000)]  # the third is not pooled: two buffers at most
    assert pool.pooled_bytes == 8000 and len(held[2]) == 4000
    del held
    big = pool.take(5000)  # one free 4000 is dropped to make room
    assert pool.pooled_bytes == 9000 and len(big) == 5000
    assert len(pool.take(5001)) == 5001 and pool.pooled_bytes == 9000  # over half the pool: a buffer of its own
