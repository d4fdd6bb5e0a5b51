"""What commands print: human lines, or one JSON object per line with `--json`."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import msgspec

from imprint.text import visible

_encoder = msgspec.json.Encoder()


class Output:
    """Prints results on stdout; with `json_mode`, JSON lines and nothing else."""

    def __init__(self, *, json_mode: bool, stream: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout

    def result(self, obj: Any, human: str | None = None) -> None:
        """One result: `obj` as a JSON line in json mode, else the `human` line (if any)."""
        if self.json_mode:
            self.stream.write(_encoder.encode(obj).decode() + "\n")  # JSON escapes control characters
        elif human is not None:
            self.stream.write(visible(human) + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """Human-only text (suppressed in json mode)."""
        if not self.json_mode:
            self.stream.write(visible(text) + "\n")
            self.stream.flush()


def note(text: str) -> None:
    """A remark for the human at the terminal, on stderr (never pollutes stdout). Control
    characters (from a peer's hostname, a forged frame…) are shown as escapes, never obeyed."""
    sys.stderr.write(visible(text) + "\n")
    sys.stderr.flush()


def say(text: str) -> None:
    """A line for the human on stdout, made safe the same way."""
    sys.stdout.write(visible(text) + "\n")
    sys.stdout.flush()
