"""pkt-line framing shared by the ls-refs poll and the status push."""

from __future__ import annotations

import pytest

from reconciler.gitops.lsrefs import NotV2, parse_ls_refs
from reconciler.gitops.smarthttp import PktLineError, pkt, pkt_lines
from reconciler.gitops.smartpush import PushUnsupported, parse_report


def test_pkt_lines_yields_lines_and_flushes_in_order() -> None:
    body = pkt(b"one\n") + b"0000" + pkt(b"two") + b"0000"
    assert list(pkt_lines(body)) == [b"one\n", None, b"two", None]
    assert list(pkt_lines(b"")) == []


@pytest.mark.parametrize("body, message", [
    (b"<html>", "not a pkt-line stream"),
    (b"0010short", "truncated pkt-line"),
    (b"0003", "truncated pkt-line"),
    (pkt(b"ok") + b"00", "truncated pkt-line"),  # left-over bytes are not ignored
])
def test_pkt_lines_names_a_broken_frame(body: bytes, message: str) -> None:
    with pytest.raises(PktLineError, match=message):
        list(pkt_lines(body))


def test_a_reader_done_at_a_flush_never_reads_what_follows() -> None:
    oid = "c" * 40
    body = pkt(f"{oid} refs/heads/main\n".encode()) + b"0000" + b"garbage after the flush"
    assert parse_ls_refs(body) == {"refs/heads/main": oid}


def test_each_client_reports_broken_framing_in_its_own_terms() -> None:
    with pytest.raises(NotV2, match="not pkt-line encoded: truncated pkt-line"):
        parse_ls_refs(b"00ff" + b"x" * 10)
    with pytest.raises(PushUnsupported, match="truncated pkt-line"):
        parse_report(pkt(b"unpack ok\n") + b"01", "refs/heads/status")
