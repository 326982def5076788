"""The top level of a protobuf message on the wire, for the one field that carries tensors: pure, no protobuf.

``raw_input_contents`` (field 7 of ``ModelInferRequest``) holds every input tensor's bytes; protobuf's parser
copies each of them into its arena, and reading the field copies it once more into a new ``bytes`` (upb makes a
fresh object per access). :func:`split_bytes_field` walks the message's top-level fields instead and returns that
field's payloads as views of the received bytes, and the other fields (names, shapes, parameters: small) for
protobuf to parse. :func:`bytes_field` writes the same field on the way out (``raw_output_contents``): a message
may carry its fields in any order, so a response is the protobuf-serialized rest followed by these.
"""

from __future__ import annotations

#: Wire types (https://protobuf.dev/programming-guides/encoding/): varint, 64-bit, length-delimited, 32-bit.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Not a well-formed protobuf message at the top level."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def split_bytes_field(data: bytes, field: int) -> tuple[bytes, list[memoryview]]:
    """(the message without ``field``, the payloads of ``field`` in order as views of ``data``).

    ``field`` must be a length-delimited field at the top level; anything else malformed (a truncated field, a
    group, an unknown wire type) raises :class:`WireError`. The rest is returned as bytes for protobuf to parse
    (and check) as usual."""
    buf = memoryview(data)
    end = len(buf)
    pos = 0
    views: list[memoryview] = []
    rest: list[memoryview] = []
    kept_from = 0  # start of the run of other fields not yet copied to ``rest``
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        elif wire_type == _LEN:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise WireError(f"field {number}: {size} bytes announced, {end - pos} left")
            if number == field:
                if kept_from < start:
                    rest.append(buf[kept_from:start])
                views.append(buf[pos : pos + size])
                kept_from = pos + size
            pos += size
        else:
            raise WireError(f"field {number}: wire type {wire_type} (groups are not used by this protocol)")
        if pos > end:
            raise WireError(f"field {number}: truncated")
    if not views:
        return data, views
    if kept_from < end:
        rest.append(buf[kept_from:end])
    return b"".join(rest), views


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bytes_field(field: int, payload_len: int) -> bytes:
    """The key and length that precede a ``payload_len``-byte payload of length-delimited ``field``."""
    return _varint_bytes(field << 3 | _LEN) + _varint_bytes(payload_len)
