"""Codecs between typed frames and what crosses the relay.

`PlainCodec` speaks SPEC's frames exactly (one JSON object per text frame),
so the original interoperates. `SecureCodec` puts the same JSON inside the
secure channel's sealed binary frames. Both raise only ProtocolError (or its
subclass TamperedFrameError) on bad input.
"""

from __future__ import annotations

from typing import Any

from imprint.errors import ProtocolError
from imprint.messages.wire import decode_frame, encode_frame
from imprint.sync.channel import SecureChannel, TamperedFrameError


class PlainCodec:
    """SPEC's plaintext form: JSON text frames."""

    name = "plaintext"

    def encode(self, frame: Any) -> str:
        return encode_frame(frame).decode("utf-8")

    def decode(self, data: bytes | str) -> Any:
        return decode_frame(data)


class SecureCodec:
    """SPEC's frames sealed in the session's channel (binary frames only)."""

    name = "encrypted"

    def __init__(self, channel: SecureChannel) -> None:
        self.channel = channel

    def encode(self, frame: Any) -> bytes:
        return self.channel.seal(encode_frame(frame))

    def decode(self, data: bytes | str) -> Any:
        if isinstance(data, str):
            raise TamperedFrameError("a text frame arrived where a sealed frame was expected")
        return decode_frame(self.channel.open(data))


__all__ = ["PlainCodec", "SecureCodec", "ProtocolError"]
