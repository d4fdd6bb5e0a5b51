"""Codecs between typed frames and what crosses the relay.

`PlainCodec` speaks the frames of Imprint's own clients exactly (one JSON
object per text frame), so they interoperate. `SecureCodec` puts the same
frames inside the secure channel's sealed binary frames. Both raise only
ProtocolError (or its subclass TamperedFrameError) on bad input.
"""

from __future__ import annotations

from typing import Any, Protocol

from imprint.errors import TamperedFrameError
from imprint.messages.wire import (
    MAX_FRAME_BYTES,
    MAX_PLAINTEXT_FRAME_BYTES,
    EncodedBatch,
    MemoryBatch,
    Reconcile,
    decode_frame,
    encode_frame,
    pack_vector_batch,
    too_large,
    unpack_vector_batch,
)
from imprint.protocol.channel import SecureChannel
from imprint.protocol.reconcile import pack, unpack


class Codec(Protocol):
    """What the RelayConnection encodes outgoing and decodes incoming frames with."""

    name: str
    max_frame_bytes: int

    def encode(self, frame: Any) -> bytes | str: ...

    def decode(self, data: bytes | bytearray | str, *, text: bool = ...) -> Any: ...


class PlainCodec:
    """The plaintext form Imprint's own clients speak: JSON text frames, up to 256 MiB."""

    name = "plaintext"
    max_frame_bytes = MAX_PLAINTEXT_FRAME_BYTES

    def encode(self, frame: Any) -> str:
        return encode_frame(frame).decode("utf-8")

    def decode(self, data: bytes | bytearray | str, *, text: bool = True) -> Any:
        return decode_frame(data, max_bytes=self.max_frame_bytes)


#: First byte of a sealed payload that is a MessagePack frame (a JSON frame starts with "{").
#: Protocol 2's reconciliation frames are mostly raw bytes (bounds, fingerprints, items):
#: in JSON they would travel as base64, a third larger; they are packed by hand.
BINARY_FRAME = b"\x01"
#: First byte of a sealed payload that is a memory batch with its vectors raw
#: (:func:`imprint.messages.wire.pack_vector_batch`): 384 floats are 1,536 bytes, 2,050 in base64.
VECTOR_FRAME = b"\x02"


class SecureCodec:
    """The same frames sealed in the session's channel (binary frames only); a
    :class:`Reconcile` frame is packed by hand inside the seal
    (:func:`imprint.protocol.reconcile.pack`), a memory batch with vectors is
    its JSON then the raw vectors, every other frame JSON."""

    name = "encrypted"
    max_frame_bytes = MAX_FRAME_BYTES

    def __init__(self, channel: SecureChannel) -> None:
        self.channel = channel

    def encode(self, frame: Any) -> bytes:
        if isinstance(frame, Reconcile):
            return self.channel.seal(BINARY_FRAME + pack(frame.message))
        if isinstance(frame, (MemoryBatch, EncodedBatch)) and frame.vectors:
            return self.channel.seal(VECTOR_FRAME + pack_vector_batch(frame))
        return self.channel.seal(encode_frame(frame))

    def decode(self, data: bytes | bytearray | str, *, text: bool = False) -> Any:
        if text or isinstance(data, str):
            raise TamperedFrameError("a text frame arrived where a sealed frame was expected")
        payload = self.channel.open(data)
        if payload[:1] == BINARY_FRAME:
            if len(payload) > self.max_frame_bytes:
                raise too_large(len(payload), self.max_frame_bytes)
            return Reconcile(message=unpack(payload[1:]))
        if payload[:1] == VECTOR_FRAME:
            if len(payload) > self.max_frame_bytes:
                raise too_large(len(payload), self.max_frame_bytes)
            return unpack_vector_batch(memoryview(payload)[1:])
        return decode_frame(payload, max_bytes=self.max_frame_bytes)
