"""Text from devices and servers made safe for a terminal: control characters shown, never obeyed.

A status branch is written by a device, and a device can be compromised: an ESC, OSC or BEL sequence in an
endpoint name or a reason would otherwise retitle the operator's terminal, move the cursor to overwrite another
device's row, or plant a link. :func:`escape` turns every C0 and C1 control character, DEL and the Unicode
bidirectional overrides into visible ``\\xNN`` / ``\\uNNNN`` escapes. Human output (table, markdown, history,
rollout, drift) passes every device-sourced string through it; JSON and YAML output keep the exact value.
"""

from __future__ import annotations

import re

# C0 (tab and newline included: a cell is one line), DEL, C1, and the bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _show(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(value: object) -> str:
    """``str(value)`` with every control character visible as an escape."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_show, text)
