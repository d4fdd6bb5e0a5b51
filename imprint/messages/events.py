"""What a sync (and the commands around it) tells its user: one tagged union.

These Structs are the contract of `--json` (one per line on stdout) and of the
dashboard's SSE streams (one per `data:` line): both encode them once, with
:func:`encode_event`. The terminal renders the same objects
(:mod:`imprint.commands.render`). The tag field is ``event``; fields left at
their default are omitted, so an event carries only what it knows.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from imprint.messages.wire import Mode, Role, SyncStats

Direction = Literal["send", "peer_store", "receive", "store"]


class Room(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="event", tag="room"):
    """serve is ready: what the other machine types (target, pin), and who we are."""

    target: str
    pin: str
    room: str
    relay: str
    fingerprint: str
    hostname: str
    mode: Mode
    session_id: str = ""  # the dashboard's session, for its page


class Waiting(msgspec.Struct, frozen=True, tag_field="event", tag="waiting"):
    """What this side waits for, said as soon as it starts waiting."""

    for_: Literal["relay", "room", "approval", "peer"] = msgspec.field(name="for")
    message: str


class ApprovalRequired(msgspec.Struct, frozen=True, tag_field="event", tag="approval_required"):
    """A device with the right PIN wants in; the provider's user decides."""

    hostname: str
    user: str
    os: str
    fingerprint: str
    warning: str = ""
    #: The code the other machine shows too (encrypted mode; "" in plaintext): compare before deciding.
    verification: str = ""


class ConfirmRequired(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="event", tag="confirm_required"):
    """The joining side (dashboard) sees the provider and decides whether to go on."""

    mode: Mode
    verification: str = ""
    hostname: str = ""
    user: str = ""
    os: str = ""
    fingerprint: str = ""


class ForgetConfirmRequired(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="event",
                            tag="forget_confirm_required"):
    """The other machine would make this one forget more than the limit allows
    (`--max-forget`): nothing is forgotten until this side's user says so."""

    count: int
    total: int
    hostname: str = ""
    fingerprint: str = ""


class AutoAccepted(msgspec.Struct, frozen=True, tag_field="event", tag="auto_accepted"):
    hostname: str
    fingerprint: str


class PeerConnected(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="event", tag="peer_connected"):
    """The handshake is done; the other side's identity when it gave one."""

    mode: Mode
    hostname: str = ""
    user: str = ""
    os: str = ""
    fingerprint: str = ""
    verification: str = ""


class Reconciled(msgspec.Struct, frozen=True, tag_field="event", tag="reconciled"):
    """Protocol 2: both sides compared what they hold; only the difference moves.
    ``send`` and ``receive`` count memories, facts and forgotten records (tombstones)."""

    send: dict[str, int]
    receive: dict[str, int]
    round_trips: int


class Progress(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="event", tag="progress"):
    """How far one dataset got in one direction (see :class:`imprint.messages.session.Progress`)."""

    direction: Direction
    dataset: str
    done: int
    total: int
    confirmed: bool = True


class SentFigures(msgspec.Struct, frozen=True, omit_defaults=True):
    """Records of one dataset we sent, and what the receiver made of them (when it said).

    ``sent`` is always written, even when 0; the receiver's figures only when it reported them."""

    sent: int
    inserted: int | None = None
    skipped: int | None = None
    rejected: int | None = None
    updated: int | None = None
    ended: int | None = None


class SentStats(msgspec.Struct, frozen=True):
    memories: SentFigures = SentFigures(sent=0)
    facts: SentFigures = SentFigures(sent=0)

    @classmethod
    def of(cls, sent: dict[str, int], stats: SyncStats | None) -> SentStats:
        figures = {}
        for dataset in ("memories", "facts"):
            known = msgspec.to_builtins(getattr(stats, dataset)) if stats is not None else {}
            figures[dataset] = SentFigures(sent=sent.get(dataset, 0), **known)
        return cls(**figures)


class Stats(msgspec.Struct, frozen=True, tag_field="event", tag="stats"):
    """The sync is complete: what came in (new / already here / refused) and what went out."""

    role: Role
    mode: Mode
    received: SyncStats
    sent: SentStats
    #: Records removed here by the other machine's tombstones (protocol 2).
    forgotten: int = 0
    #: Memories stored with the vector the other machine sent (same model; checked), not embedded here.
    vectors_reused: int = 0
    #: The other machine's tombstones refused: for records it was not shown to hold, or dated ahead of our clock.
    forgets_refused: int = 0
    #: Records the other machine forgot that this side's user chose to keep (over `--max-forget`).
    forgets_kept: int = 0


class Notice(msgspec.Struct, frozen=True, tag_field="event", tag="notice"):
    """Something the user should know that does not stop the sync (one line)."""

    message: str


class Error(msgspec.Struct, frozen=True, tag_field="event", tag="error"):
    message: str


class UiReady(msgspec.Struct, frozen=True, tag_field="event", tag="ui"):
    url: str


class DemoResult(msgspec.Struct, frozen=True, tag_field="event", tag="demo"):
    identical: bool
    memories: int
    facts: int


Event: TypeAlias = (
    Room | Waiting | ApprovalRequired | ConfirmRequired | ForgetConfirmRequired | AutoAccepted | PeerConnected | Reconciled | Progress | Stats
    | Notice | Error
    | UiReady | DemoResult
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """The one JSON form of an event, for `--json` and SSE alike."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    return _decoder.decode(data)
