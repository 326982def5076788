"""Git commit objects with an SSH signature: sign one in-process, split one into payload and signature.

Git keeps a commit's signature in a ``gpgsig`` header (continuation lines start with a space) and signs the
commit without that header. :func:`sign_commit` writes exactly what ``git commit-tree -S`` with
``gpg.format=ssh`` writes; :func:`split_signed_commit` undoes it and refuses anything ambiguous — several
signature headers, or ``gpgsig-sha256`` (the header of SHA-256 repositories) — since git and a reader
could then disagree on which signature counts. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.identity import sshsig

SIG_HEADERS = (b"gpgsig", b"gpgsig-sha256")
MAX_COMMIT_BYTES = 64 * 1024  # a status commit is ~700 bytes; larger ones are not read


class CommitFormatError(ValueError):
    """The commit cannot be judged: malformed, or more than one signature."""


@dataclass(frozen=True)
class SignedCommit:
    payload: bytes  # the commit without its signature header: what was signed
    signature: bytes | None  # the armored signature, None when unsigned
    header: bytes | None  # b"gpgsig" / b"gpgsig-sha256"


def split_signed_commit(raw: bytes) -> SignedCommit:
    """Payload and signature of a raw commit object (``git cat-file commit``)."""
    if len(raw) > MAX_COMMIT_BYTES:
        raise CommitFormatError(f"commit object is {len(raw)} bytes (limit {MAX_COMMIT_BYTES})")
    head, sep, body = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    kept: list[bytes] = []
    found: list[tuple[bytes, list[bytes]]] = []
    current: list[bytes] | None = None
    for line in lines:
        if line.startswith(b" ") and current is not None:
            current.append(line[1:])
            continue
        current = None
        name = line.split(b" ", 1)[0]
        if name in SIG_HEADERS:
            current = [line[len(name) + 1:]]
            found.append((name, current))
            continue
        kept.append(line)
    if len(found) > 1:
        raise CommitFormatError(f"commit has {len(found)} signature headers "
                                f"({', '.join(n.decode() for n, _ in found)}): only one is allowed")
    payload = b"\n".join(kept) + sep + body
    if not found:
        return SignedCommit(payload, None, None)
    name, sig_lines = found[0]
    if name != b"gpgsig":
        raise CommitFormatError("commit has a gpgsig-sha256 header: the status repositories use SHA-1 object ids")
    return SignedCommit(payload, b"\n".join(sig_lines) + b"\n", name)


def sign_commit(payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """``payload`` (an unsigned commit object) with a ``gpgsig`` header holding its SSH signature."""
    head, sep, body = payload.partition(b"\n\n")
    if not sep:
        raise CommitFormatError("commit object has no message separator")
    armored = sshsig.sign(payload, key, "git").rstrip("\n").encode()
    header = b"gpgsig " + armored.replace(b"\n", b"\n ")
    return head + b"\n" + header + sep + body
