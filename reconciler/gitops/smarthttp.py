"""What the in-process smart-HTTP clients (:mod:`~reconciler.gitops.lsrefs` for polls, :mod:`~reconciler.gitops.smartpush`
for status pushes) share: pkt-line framing (their kept-alive connection comes from :func:`reconciler.net.pools.keepalive_pool`)."""

from __future__ import annotations

from collections.abc import Iterator

# Answers of a server (or the proxy in front of it) that is there but overloaded or restarting: the request
# is worth repeating later, with the same client. Anything else unexpected means the protocol is not what we
# speak, and the caller hands over to ``git`` for good.
BUSY_STATUSES = frozenset({429, 502, 503, 504})


def pkt(data: bytes) -> bytes:
    """``data`` as one pkt-line (four hex digits of length, then the bytes)."""
    return b"%04x" % (len(data) + 4) + data


class PktLineError(ValueError):
    """A body whose pkt-line framing breaks (each client says it in its own exception)."""


def pkt_lines(body: bytes) -> Iterator[bytes | None]:
    """The pkt-lines of ``body`` in order, None for a flush packet. Pure and lazy: a reader that is done at a
    flush packet stops there. :class:`PktLineError` where the framing breaks, bytes left over included."""
    pos = 0
    while pos + 4 <= len(body):
        try:
            n = int(body[pos:pos + 4], 16)
        except ValueError:
            raise PktLineError("not a pkt-line stream") from None
        if n == 0:
            yield None
            pos += 4
            continue
        if n < 4 or pos + n > len(body):
            raise PktLineError("truncated pkt-line")
        yield body[pos + 4:pos + n]
        pos += n
    if pos != len(body):
        raise PktLineError("truncated pkt-line")
