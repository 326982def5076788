"""Receive buffers for large binary-tensor request bodies, reused request after request.

A camera pipeline sends a same-sized image (602 KB for 1×3×224×224 FP32) per request. A fresh buffer per body
costs the kernel a page fault per 4 KiB page, every request, whenever the C allocator hands out new pages
(measured: the largest share of the server's CPU per image for a light CNN); reusing buffers costs nothing.

A buffer handed out for one request may outlive it: its tensors are views of it, and data capture or a drift
monitor may queue them. So a buffer is reused only once nothing refers to it any more — its reference count
says so (every view, ``memoryview`` or ``np.frombuffer`` array, holds a reference). The pool is bounded in
bytes and in buffers, and keeps no buffer over half its bytes; past the bounds a body gets a buffer of its own,
as without the pool. Used from the
event-loop thread only.
"""

from __future__ import annotations

import sys

import numpy as np

#: References a pooled buffer has when nothing outside the pool holds it: the pool's list, the loop variable
#: and ``sys.getrefcount``'s own argument.
_FREE_REFS = 3


class BodyPool:
    def __init__(self, max_bytes: int = 64 << 20, max_buffers: int = 32) -> None:
        self.max_bytes = max_bytes
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._bytes = 0

    def take(self, n: int) -> memoryview:
        """A writable buffer of exactly ``n`` bytes (contents undefined): a free pooled one of ``n`` to ``2n``
        bytes, else a new one, kept in the pool if it fits (dropping free buffers of other sizes to make room)."""
        for arr in self._buffers:
            if n <= arr.size <= 2 * n and sys.getrefcount(arr) == _FREE_REFS:
                return memoryview(arr)[:n]
        arr = np.empty(n, np.uint8)
        if n <= self.max_bytes // 2:  # one rare huge body is not kept for the process's lifetime
            self._make_room(n)
            if self._bytes + n <= self.max_bytes and len(self._buffers) < self.max_buffers:
                self._buffers.append(arr)
                self._bytes += n
        return memoryview(arr)[:n]

    def _make_room(self, n: int) -> None:
        """Drop free buffers, oldest first, until ``n`` more bytes and one more buffer fit."""
        i = 0
        while i < len(self._buffers) and (self._bytes + n > self.max_bytes or len(self._buffers) >= self.max_buffers):
            arr = self._buffers[i]
            if sys.getrefcount(arr) == _FREE_REFS:  # the list, ``arr`` and the argument
                del self._buffers[i]
                self._bytes -= arr.size
            else:
                i += 1

    @property
    def pooled_bytes(self) -> int:
        return self._bytes
