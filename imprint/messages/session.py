"""Messages between the sync stages (actors) and up to the session, their boss.

Down (asked or told by the session or a stage): `SendFrame`, `SendRaw`,
`DeliverRawTo`, `UseCodec`, `FrameHandled`, `CloseConnection`,
`StartHandshake`, `Approve`, `Decision`, `StartPull`, `StreamFrame`,
`StartPush`, `Watch`, `Unwatch`, `Wake`.

Up (told to a listener, never asked): `RawFrameReceived` (to the handshake),
`FrameReceived`, `ConnectionLost`, `BadFrame`, `PeerArrived`, `HelloSent`,
`HandshakeSucceeded`, `HandshakeFailed`, `ApprovalRequired`, `AutoAccepted`,
`JoinDecision`, `Progress` (the event :class:`imprint.messages.events.Progress`),
`BatchSpooled`, `StreamSpooled`, `BatchStored`, `StreamStored`, `StoreFailed`,
`SpoolIdle`, `TransferFinished`, `TransferFailed`, `StageFailed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from imprint.errors import ImprintError
from imprint.messages.store import FactIdentity, StoreResult
from imprint.messages.wire import Frame
from imprint.messages.wire import StreamFrame as WireStreamFrame

if TYPE_CHECKING:
    from imprint.protocol.codec import Codec

DecisionKind = Literal["accept", "trust", "reject"]


class Listener(Protocol):
    """Anything messages are told to: an ActorRef, or a QueueListener."""

    def tell(self, message: Any) -> None: ...


class PeerInfo(msgspec.Struct, frozen=True):
    """Who the other side says it is (and, in the encrypted mode, proved with its key)."""

    hostname: str
    user: str
    os: str
    fingerprint: str
    public_key: str = ""  # hex Ed25519 key; empty in plaintext mode
    #: The sync protocol it speaks (wire.PROTOCOL_VERSION; 0: it did not say, the full transfer of version 1).
    protocol: int = 0
    #: The fingerprint of the model its vectors come from (protocol 2; "" if it did not say).
    model: str = ""
    #: Its model's vectors of the canary sentences (protocol 2; b"" if it did not say).
    canaries: bytes = b""
    #: How many reconciliation items it says it holds, rounded up (protocol 2; 0 if it did not say).
    items: int = 0
    #: This session's verification code (encrypted mode): both machines show the same one, or someone
    #: is in the middle. Derived from the session's keys, not said by the peer.
    verification: str = ""


class StageFailed(msgspec.Struct, frozen=True):
    """An actor crashed on a told message (a bug): the boss ends the session now."""

    stage: str
    message: str


# RelayConnection ----------------------------------------------------------------


class SendFrame(msgspec.Struct, frozen=True):
    """Encode (and seal, once a channel is installed) and send one frame. Ask it: the
    reply comes once the socket took the bytes, which is the sender's backpressure.
    Told with `quiet=True` (acks), a failure is logged, not raised: the lost
    connection is reported on its own."""

    frame: Frame
    quiet: bool = False


class SendRaw(msgspec.Struct, frozen=True):
    """Send bytes or text as they are (handshake frames before any codec)."""

    data: bytes | str


class DeliverRawTo(msgspec.Struct, frozen=True):
    """Hand raw frames (and a lost connection) to `target` until a codec is installed:
    the handshake judges them before the session hears anything."""

    target: Listener


class UseCodec(msgspec.Struct, frozen=True):
    """From now on decode incoming frames with `codec` (plain or sealed) and deliver
    `FrameReceived` to the session, instead of raw frames to the handshake."""

    codec: Codec


class FrameHandled(msgspec.Struct, frozen=True):
    """A delivered batch frame is in the spool: the reader may take another."""


class CloseConnection(msgspec.Struct, frozen=True):
    reason: str = "done"


class RawFrameReceived(msgspec.Struct, frozen=True):
    data: bytes | str


class FrameReceived(msgspec.Struct, frozen=True):
    frame: Frame


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


class PeerArrived(msgspec.Struct, frozen=True):
    """The first frame from the other side: someone is there (silence counts from now)."""


class HelloSent(msgspec.Struct, frozen=True):
    """Consumer's Handshake → session: our HELLO is on its way (keys confirmed,
    in the encrypted mode); the provider's user may now be asked to approve."""

    verification: str = ""


class HandshakeSucceeded(msgspec.Struct, frozen=True):
    peer: PeerInfo | None
    verification: str = ""


class HandshakeFailed(msgspec.Struct, frozen=True):
    """The handshake ended without a peer; `error` says why (AuthError, RejectedError, ProtocolError…)."""

    error: ImprintError


class Approve(msgspec.Struct, frozen=True):
    """Decide on a peer whose PIN was right. The decision is told to `reply_to`."""

    peer: PeerInfo
    reply_to: Listener


class Decision(msgspec.Struct, frozen=True):
    decision: DecisionKind
    auto: bool = False


class ApprovalRequired(msgspec.Struct, frozen=True):
    peer: PeerInfo
    warning: str = ""


class AutoAccepted(msgspec.Struct, frozen=True):
    peer: PeerInfo


class JoinDecision(msgspec.Struct, frozen=True):
    """The joining side's user (the dashboard) said whether to go on with a provider."""

    decision: DecisionKind


class ForgetDecision(msgspec.Struct, frozen=True):
    """This side's user said whether to apply a forget beyond the limit (`--max-forget`)."""

    accept: bool


# Puller, Storer and Pusher ------------------------------------------------------------


class StartPull(msgspec.Struct, frozen=True):
    """Receive one meta → batch… → done stream into the spool, as `stream`. With
    `request`, first ask the peer for it (the consumer's `GET /sync/pull`)."""

    stream: str
    batch_size: int = 500
    request: bool = False
    #: The peer's fingerprint, kept with the stream (whose vectors these are).
    peer: str = ""
    #: Count, per batch, the records this machine already holds (by id): what an early
    #: answer to a push can tell before everything is stored (see BatchSpooled.already).
    count_known: bool = False


class StreamFrame(msgspec.Struct, frozen=True):
    frame: WireStreamFrame


class StartPush(msgspec.Struct, frozen=True):
    """Stream our records. With `request`, first send `POST /sync/push` (consumer).

    `skip_ids` / `skip_facts` are records the peer just sent us and we hold
    exactly as it does: sending them back would only echo them.
    """

    batch_size: int = 500
    request: bool = False
    skip_ids: frozenset[str] = frozenset()
    skip_facts: frozenset[FactIdentity] = frozenset()
    #: Protocol 2: send exactly these memory ids and fact keys (what reconciling
    #: found the peer lacks) instead of every record.
    only_memories: tuple[str, ...] | None = None
    only_facts: tuple[str, ...] | None = None
    #: Protocol 2, same model: send each memory's vector, made by this model fingerprint
    #: (a vector of any other model is not sent: its memory goes without).
    vectors: str = ""


class TombstonesStored(msgspec.Struct, frozen=True):
    """Session → flow: the peer's tombstones are recorded; `forgotten` copies removed here."""

    forgotten: int


class SummaryLoaded(msgspec.Struct, frozen=True):
    """Session → flow: the summary of this side's reconciliation items (imprint.summaries)."""

    count: int
    total: int


class ItemsLoaded(msgspec.Struct, frozen=True):
    """Session → flow: this side's reconciliation items (see imprint.protocol.items)."""

    items: tuple[bytes, ...]


class BatchSpooled(msgspec.Struct, frozen=True):
    """Puller → session: one batch of `stream` is safe in the spool.

    `received` counts what the peer sent in it, `refused` of those our schema
    refused (never spooled), with the first `refusals` reasons.
    """

    stream: str
    dataset: str
    received: int
    refused: int = 0
    refusals: tuple[str, ...] = ()
    #: Of the records spooled, how many this machine already holds (a memory's id, a
    #: fact's key), when the pull was started with ``count_known``.
    already: int = 0


class StreamSpooled(msgspec.Struct, frozen=True):
    """Puller → session: the peer sent `done`; every batch of `stream` is in the spool."""

    stream: str


class VectorsRefused(msgspec.Struct, frozen=True):
    """Storer → the stream's watcher: the peer's vectors failed the check; from now on
    everything of `stream` is embedded here. `message` is for the user."""

    stream: str
    message: str


class BatchStored(msgspec.Struct, frozen=True):
    """Storer → whoever watches the batch's stream: one spooled batch is stored.

    `same_ids` / `same_facts`: records whose stored copy is now exactly the
    one received (so the peer already has them as we do).
    """

    stream: str
    dataset: str
    count: int
    result: StoreResult
    same_ids: tuple[str, ...] = ()
    same_facts: tuple[FactIdentity, ...] = ()


class StreamStored(msgspec.Struct, frozen=True):
    """Storer → watcher: `stream` is complete and every batch of it stored."""

    stream: str


class StoreFailed(msgspec.Struct, frozen=True):
    """Storer → watchers: storing failed; the batch stays in the spool for the next run."""

    message: str


class SpoolIdle(msgspec.Struct, frozen=True):
    """Storer → watchers of every stream: nothing waits in the spool any more."""


class Watch(msgspec.Struct, frozen=True):
    """Tell `listener` what the Storer does with `stream` (every stream if empty)."""

    stream: str
    listener: Listener


class Unwatch(msgspec.Struct, frozen=True):
    stream: str


class Wake(msgspec.Struct, frozen=True):
    """Something new is in the spool: store it."""


class TransferFinished(msgspec.Struct, frozen=True):
    """The Pusher sent its whole stream; `sent` per dataset."""

    sent: dict[str, int]


class TransferFailed(msgspec.Struct, frozen=True):
    message: str
