"""A status push over smart HTTP(S) without a process: ``git-receive-pack`` with a pack of the new objects.

``git push`` over HTTP starts four processes (``git``, ``git-remote-http``, ``send-pack``, ``pack-objects``)
for what a status commit is: one commit, one tree and one blob on top of a parent the server already has.
A push in Git's smart HTTP protocol is two requests on one kept-alive connection:

1. ``GET <repo>/info/refs?service=git-receive-pack``: the server's refs and capabilities (is our parent the
   branch's tip there?);
2. ``POST <repo>/git-receive-pack``: the ref update ``old new ref`` and a pack holding the new objects;
   the ``report-status`` answer says whether the ref moved.

The first request is only needed to learn where the branch is, and the writer knows that already: its
branch is where its last push left it (the server moves a ref only if it is still at the ``old`` id the
update names, and answers ``ng`` otherwise), and a branch it never pushed is absent (``old`` = the zero id: the
server refuses to create a ref that exists). So every push starts with the ``POST`` alone: one request instead
of two, and the server does not advertise every ref of the repository (a status repository holds one branch
per device: 1,000 devices ≈ 70 KB per advertisement, and the ref walk behind it). Only a refused update falls
back to both requests, which tell a moved branch from a missing one. Every git since 2005 answers
``report-status``; a server whose advertisement says it does not is asked through ``git push`` from then on.

:class:`SmartPush` does exactly that and nothing more. When the server's tip is not the parent we built on
it raises :class:`PushRejected` (the caller fetches and rebases, as after a rejected ``git push``); anything
it does not expect — no ``report-status``, a 401 without configured credentials, a network error, an answer
that is not smart HTTP — raises :class:`PushUnsupported`, and the caller pushes with ``git push`` instead,
which reports the problem with its usual named reasons. A server that says it is busy or unavailable (HTTP 429,
502, 503, 504) raises :class:`PushUnavailable`: the writer backs off and pushes in-process again (``git push``
would only add four processes to a server that is already overloaded). HTTP 403 — the server took the
credentials but does not let them push (a read-only token, a protected branch) — raises :class:`PushDenied`:
``git push`` would get the same answer, and the writer reports ``PermissionDenied``.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Callable

import urllib3

from reconciler.core.credentials import Credentials
from reconciler.core.redact import redact_url
from reconciler.gitops.smarthttp import BUSY_STATUSES, PktLineError, pkt, pkt_lines
from reconciler.net import clientcert
from reconciler.net.pools import keepalive_pool

ZERO_ID = "0" * 40
MAX_ADVERTISEMENT_BYTES = 64 << 20  # every ref of the repository, e.g. 100,000 status branches ≈ 7 MB
MAX_REPORT_BYTES = 1 << 20
_TYPES = {"commit": 1, "tree": 2, "blob": 3}
_OID = re.compile(r"^[0-9a-f]{40}$")


class PushRejected(Exception):
    """The server's branch is not where we expected it (someone else moved it, or we lost our state);
    ``server_tip``: where it is, when an advertisement said so."""

    def __init__(self, message: str, server_tip: str | None = None) -> None:
        super().__init__(message)
        self.server_tip = server_tip


class PushUnavailable(Exception):
    """Not pushed: the server answered that it is busy or unavailable (HTTP 429, 502, 503, 504); try again later."""


class PushDenied(Exception):
    """Not pushed: the server answered HTTP 403 (the credentials lack write access); the message says so."""


class PushCertificateRefused(Exception):
    """Not pushed: the server requires a client certificate, or refused the one sent; the message says so."""


class PushUnsupported(Exception):
    """Not pushed; push with ``git push`` instead (which names the problem, if there is one)."""


def _lines(body: bytes) -> list[bytes]:
    """The pkt-lines of ``body`` without the flush packets; :class:`PushUnsupported` if it is not pkt-lines."""
    try:
        return [x for x in pkt_lines(body) if x is not None]
    except PktLineError as exc:
        raise PushUnsupported(str(exc)) from None


def encode_pack(objects: list[tuple[str, bytes]]) -> bytes:
    """A version 2 pack of whole (undeltified) objects: (type, body) pairs."""
    parts = [b"PACK", struct.pack(">II", 2, len(objects))]
    for kind, body in objects:
        size = len(body)
        byte = (_TYPES[kind] << 4) | (size & 0x0F)
        size >>= 4
        header = bytearray()
        while size:
            header.append(byte | 0x80)
            byte, size = size & 0x7F, size >> 7
        header.append(byte)
        parts += [bytes(header), zlib.compress(body)]
    data = b"".join(parts)
    return data + hashlib.sha1(data).digest()  # noqa: S324 - the pack format's checksum


def parse_advertisement(body: bytes) -> tuple[dict[str, str], set[str]]:
    """(ref → object id, capabilities) of a ``git-receive-pack`` ref advertisement."""
    lines = _lines(body)
    if not lines or not lines[0].startswith(b"# service=git-receive-pack"):
        raise PushUnsupported("not a git-receive-pack advertisement")
    refs: dict[str, str] = {}
    caps: set[str] = set()
    for i, raw in enumerate(lines[1:]):
        line = raw.rstrip(b"\n")
        if i == 0 and b"\0" in line:
            line, capabilities = line.split(b"\0", 1)
            caps = set(capabilities.decode(errors="replace").split())
        oid, _, name = line.decode(errors="replace").partition(" ")
        if _OID.match(oid) and name != "capabilities^{}":
            refs[name] = oid
    return refs, caps


def parse_report(body: bytes, ref: str) -> None:
    """Raise unless a ``report-status`` answer says the pack was unpacked and ``ref`` updated."""
    lines = [x.rstrip(b"\n").decode(errors="replace") for x in _lines(body)]
    if not lines or lines[0] != "unpack ok":
        raise PushUnsupported(f"server could not unpack: {lines[0] if lines else 'no report'}")
    for line in lines[1:]:
        if line == f"ok {ref}":
            return
        if line.startswith(f"ng {ref} "):
            raise PushRejected(line[len(ref) + 4:])
    raise PushUnsupported(f"no status for {ref} in the report")


class SmartPush:
    """Pushes of one repository over one kept-alive connection (one writer thread uses it)."""

    def __init__(self, url: str, *, authorization: Callable[[], str | None], credentials: Credentials | None = None,
                 timeout: float = 30.0, anonymous: bool = False) -> None:
        """``credentials``: the endpoint's TLS and proxy settings (the header comes from ``authorization``)."""
        self.pool, path = keepalive_pool(url, credentials=credentials, timeout=timeout, what="a smart HTTP push")
        self.cert_sent = credentials is not None and credentials.client_cert_file is not None
        self.display_url = redact_url(url)
        self.path = path
        self.authorization = authorization
        # Push without credentials when none are configured (a site gateway's status repository takes anonymous
        # pushes); otherwise `git push`, which may find some in a credential helper.
        self.anonymous = anonymous
        self._caps: set[str] | None = None  # capabilities of the last advertisement (None: none seen yet)
        self.advertisements = 0  # ref advertisements asked for (GET info/refs)

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str], limit: int,
                 content_type: str) -> bytes:
        auth = self.authorization()
        if auth is None and not self.anonymous:
            raise PushUnsupported("no configured credentials (a credential helper may have some)")
        headers = {**headers, "User-Agent": "git/modelfleet", **({"Authorization": auth} if auth else {})}
        try:
            resp = self.pool.urlopen(method, path, body=body, headers=headers, redirect=False, preload_content=False,
                                     retries=False, assert_same_host=False)
        except urllib3.exceptions.SSLError as exc:
            if clientcert.refused_alert(str(exc)):
                raise PushCertificateRefused(clientcert.refusal_message(
                    self.display_url, cert_sent=self.cert_sent, detail=type(exc).__name__)) from None
            raise PushUnsupported(f"cannot reach {self.display_url}: {type(exc).__name__}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PushUnsupported(f"cannot reach {self.display_url}: {type(exc).__name__}") from None
        try:
            data = resp.read(limit + 1)
            status, ctype = resp.status, resp.headers.get("Content-Type", "")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PushUnsupported(f"connection to {self.display_url} lost: {type(exc).__name__}") from None
        finally:
            resp.release_conn()
        if clientcert.refused_page(status, data):
            raise PushCertificateRefused(clientcert.refusal_message(self.display_url, cert_sent=self.cert_sent,
                                                                    detail=f"HTTP {status}"))
        if status in BUSY_STATUSES:
            raise PushUnavailable(f"{self.display_url} is unavailable (HTTP {status})")
        if status == 403:
            raise PushDenied(f"{self.display_url} denied the push (HTTP 403)")
        if status != 200 or ctype != content_type or len(data) > limit:
            raise PushUnsupported(f"HTTP {status} {ctype}")
        return data

    def push(self, ref: str, expected: str | None, new: str, objects: list[tuple[str, bytes]]) -> None:
        """Move ``ref`` from ``expected`` (None: absent) to ``new``; ``objects`` are every object ``new`` adds."""
        if self._caps is None or "report-status" in self._caps:
            try:  # the server checks that the branch is still at `expected` (absent): no advertisement needed
                self._update(ref, expected, new, objects)
                return
            except PushRejected:
                pass  # moved, created elsewhere, or our parent is gone: the advertisement says which
        self.advertisements += 1
        adv = self._request("GET", f"{self.path}/info/refs?service=git-receive-pack", None, {},
                            MAX_ADVERTISEMENT_BYTES, "application/x-git-receive-pack-advertisement")
        refs, self._caps = parse_advertisement(adv)
        if "report-status" not in self._caps:
            raise PushUnsupported("the server does not report the push status")
        old = refs.get(ref)
        if old != expected:
            if expected is not None and old is None:
                raise PushUnsupported(f"{ref} is gone from the server (git push sends the whole history)")
            raise PushRejected(f"{ref} is at {(old or 'nothing')[:12]} on the server, not {(expected or 'nothing')[:12]}",
                               old)
        self._update(ref, old, new, objects)

    def _update(self, ref: str, old: str | None, new: str, objects: list[tuple[str, bytes]]) -> None:
        command = f"{old or ZERO_ID} {new} {ref}\0report-status agent=modelfleet".encode()
        body = pkt(command) + b"0000" + encode_pack(objects)
        report = self._request("POST", f"{self.path}/git-receive-pack", body,
                               {"Content-Type": "application/x-git-receive-pack-request",
                                "Accept": "application/x-git-receive-pack-result"},
                               MAX_REPORT_BYTES, "application/x-git-receive-pack-result")
        parse_report(report, ref)

    def close(self) -> None:
        self.pool.close()
