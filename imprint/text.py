"""Text from elsewhere (the wire, a peer, a file), made safe to print on a terminal.

A peer that knows the PIN chooses its hostname, user and OS; a hostile relay
can forge an unauthenticated frame. Printed raw, an escape sequence in such a
string can clear the screen, move the cursor, or overwrite a warning line with
something reassuring. So every control character (C0, DEL, C1, and the
bidirectional overrides that reorder what is shown) is made visible as an
escape (`\\x1b`, `\\u202e`), and peer text is cut to a length.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character shown as an escape; newlines kept (for our own multi-line output)."""
    return _CONTROL.sub(_escape, text)


def clip(text: object, limit: int = 200) -> str:
    """A peer's text as one safe line: controls (newlines too) escaped, at most `limit` characters."""
    line = _CONTROL_OR_NEWLINE.sub(_escape, str(text))
    return line if len(line) <= limit else line[: limit - 1] + "…"
