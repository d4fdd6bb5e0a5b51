"""Messages between the sync actors and up to the session that wires them.

Down (asked or told by the session or a stage): `SendFrame`, `UseCodec`,
`FrameHandled`, `CloseConnection`, `StartHandshake`, `Approve`, `StartPull`,
`StartPush`, `StreamFrame`.
Up (told to the session's listener, never asked): `Connected`,
`RawFrameReceived`, `FrameReceived`, `ConnectionLost`, `HandshakeSucceeded`,
`HandshakeFailed`, `ApprovalRequired`, `AutoAccepted`, `Decision`,
`Progress`, `TransferFinished`, `TransferFailed`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["provider", "consumer"]
DecisionKind = Literal["accept", "trust", "reject"]


class PeerInfo(msgspec.Struct, frozen=True):
    """Who the other side says it is (from its HELLO)."""

    hostname: str
    user: str
    os: str
    fingerprint: str
    public_key: str = ""  # hex Ed25519 key; empty in plaintext mode


# RelayConnection ----------------------------------------------------------------


class SendFrame(msgspec.Struct, frozen=True):
    """Encode (and seal, once a channel is installed) and send one frame. Ask it: the
    reply comes once the socket took the bytes, which is the sender's backpressure."""

    frame: Any


class SendRaw(msgspec.Struct, frozen=True):
    """Send bytes or text as they are (handshake frames before any codec)."""

    data: bytes | str


class UseCodec(msgspec.Struct, frozen=True):
    """From now on decode incoming frames with `codec` (plain or sealed) and
    deliver `FrameReceived` instead of `RawFrameReceived`."""

    codec: Any


class FrameHandled(msgspec.Struct, frozen=True):
    """A delivered batch frame has been stored: the reader may take another."""


class CloseConnection(msgspec.Struct, frozen=True):
    reason: str = "done"


class Connected(msgspec.Struct, frozen=True):
    url: str


class RawFrameReceived(msgspec.Struct, frozen=True):
    data: bytes | str


class FrameReceived(msgspec.Struct, frozen=True):
    frame: Any


class ConnectionLost(msgspec.Struct, frozen=True):
    """The relay connection ended. `expected` is True after our own close."""

    reason: str
    expected: bool = False


class BadFrame(msgspec.Struct, frozen=True):
    """An incoming frame could not be opened or decoded; the session must end."""

    message: str


# Handshake and TrustGate ------------------------------------------------------------


class StartHandshake(msgspec.Struct, frozen=True):
    pass


class HandshakeSucceeded(msgspec.Struct, frozen=True):
    peer: PeerInfo | None
    verification: str = ""
    decision: str = "accept"


class HandshakeFailed(msgspec.Struct, frozen=True):
    """`kind` selects the error class: auth, rejected, protocol."""

    message: str
    kind: Literal["auth", "rejected", "protocol"] = "protocol"


class Approve(msgspec.Struct, frozen=True):
    """Decide on a peer whose PIN was right. The decision is told to `reply_to`."""

    peer: PeerInfo
    reply_to: Any


class ApprovalRequired(msgspec.Struct, frozen=True):
    peer: PeerInfo
    warning: str = ""


class AutoAccepted(msgspec.Struct, frozen=True):
    peer: PeerInfo


class Decision(msgspec.Struct, frozen=True):
    decision: DecisionKind
    auto: bool = False


# Puller and Pusher ----------------------------------------------------------------------


class StartPull(msgspec.Struct, frozen=True):
    """Consume one meta → batch… → done stream. With `request`, first ask the
    peer for it (the consumer's `GET /sync/pull`)."""

    batch_size: int = 500
    request: bool = False


class StreamFrame(msgspec.Struct, frozen=True):
    frame: Any


class StartPush(msgspec.Struct, frozen=True):
    """Stream our records. With `request`, first send `POST /sync/push` (consumer)."""

    batch_size: int = 500
    request: bool = False


class Progress(msgspec.Struct, frozen=True):
    phase: Literal["pull", "push", "embed"]
    dataset: str
    done: int
    total: int


class TransferFinished(msgspec.Struct, frozen=True):
    """`stats` maps dataset → {"inserted","skipped"[,"ended"]} (pull) or {"sent"} (push)."""

    phase: Literal["pull", "push"]
    stats: dict[str, dict[str, int]]


class TransferFailed(msgspec.Struct, frozen=True):
    phase: Literal["pull", "push"]
    message: str
