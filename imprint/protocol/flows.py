"""The two roles of a sync after the handshake, as machines without I/O.

Provider (serve)::

    HandshakeSucceeded ─▶ [GET /sync/pull ─▶ push our stream]
                          [POST /sync/push ─▶ receive its stream ─▶ stored ─▶ 200 STATS] ─▶ finish

Consumer (join)::

    HandshakeSucceeded ─▶ (confirm with the user?) ─▶ pull: receive the provider's
    stream ─▶ stored ─▶ push ours (minus what we just got) ─▶ 200 STATS ─▶ finish

Receiving is two stages (see :mod:`imprint.spool`): batches are in the spool
as they arrive (`BatchSpooled`) and stored later (`BatchStored`); the receiver
answers a stream only once the Storer says it is all stored
(`StreamStored`). In the encrypted mode the receiver acks as it goes, so the
sender's progress counts what the peer confirmed, and the consumer's last ack
tells the provider what became of the records it sent.

A flow is fed every event the session's stages report (:meth:`Flow.handle`)
and returns what to do, in order (the commands below), ending with
:class:`Fail` when the sync cannot go on. The session
(:mod:`imprint.sync.session`) carries the commands out; tests feed events and
compare command lists.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import msgspec

from imprint.errors import INTERRUPTED, ProtocolError, RejectedError, SyncError
from imprint.fingerprint import CANARY_MIN_COSINE, canary_agreement
from imprint.messages import events
from imprint.messages.records import Tombstone
from imprint.messages.session import (
    ApprovalRequired,
    AutoAccepted,
    BatchSpooled,
    BatchStored,
    ForgetDecision,
    FrameReceived,
    HandshakeSucceeded,
    HelloSent,
    ItemsLoaded,
    JoinDecision,
    PeerArrived,
    PeerInfo,
    StartPush,
    StreamSpooled,
    StreamStored,
    SummaryLoaded,
    TombstonesStored,
    TransferFinished,
    VectorsRefused,
)
from imprint.messages.store import FactIdentity
from imprint.messages.wire import (
    DATASETS,
    MAX_BATCH_SIZE,
    PROTOCOL_VERSION,
    Ack,
    DatasetCounts,
    Done,
    FactBatch,
    FactStats,
    Forgets,
    Frame,
    MemoryBatch,
    MemoryStats,
    Meta,
    Mode,
    Reconcile,
    ReconcileMessage,
    Request,
    Response,
    StreamError,
    StreamFrame,
    SyncStats,
)
from imprint.protocol.forgets import Entitlement, ForgetLimit, would_forget
from imprint.protocol.items import FORGOTTEN_FACT, Selection, select
from imprint.protocol.reconcile import (
    AGREED,
    Reconciler,
    agrees,
    claim_bound,
    is_summary,
    summary_message,
)
from imprint.text import clip

#: What a side waits for, which sets how long it may wait: a provider's peer
#: (as long as the room lives), a consumer's provider ("room", --timeout), a
#: human ("approval"), or the transfer ("": the idle timeout).
Wait = Literal["peer", "room", "approval", ""]
#: Seconds between two acks of a stream (the last one always goes).
ACK_INTERVAL = 0.25
#: Seconds a whole reconciliation may take, however the peer paces its messages.
RECONCILE_DEADLINE = 600.0
#: What the provider is told when the joining side's user declines to go on.
DECLINED = "the other machine's user chose not to sync"
_STREAM_FRAMES = (Meta, MemoryBatch, FactBatch, Done, StreamError)


# ---------------------------------------------------------------- commands


class Report(msgspec.Struct, frozen=True):
    """Tell the user (terminal, --json, dashboard)."""

    event: events.Event


class Send(msgspec.Struct, frozen=True):
    """Send a frame to the peer; `quiet` ones (acks) may fail silently: a lost connection is reported on its own."""

    frame: Frame
    quiet: bool = False


class Receive(msgspec.Struct, frozen=True):
    """Receive the peer's stream as `stream`: watch it in the spool, start the Puller
    (which first asks for it with `GET /sync/pull` when `request`)."""

    stream: str
    batch_size: int
    request: bool = False
    #: Count what is already here as it is spooled (for an answer before it is all stored).
    count_known: bool = False


class ToPuller(msgspec.Struct, frozen=True):
    frame: StreamFrame


class Push(msgspec.Struct, frozen=True):
    start: StartPush


class AskToJoin(msgspec.Struct, frozen=True):
    """Show the provider to the joining side's user and wait for a JoinDecision."""

    peer: PeerInfo | None
    verification: str


class LoadSummary(msgspec.Struct, frozen=True):
    """Protocol 2: read the summary of this side's items (count and total, see
    imprint.summaries); answer with SummaryLoaded."""


class LoadItems(msgspec.Struct, frozen=True):
    """Protocol 2: read this side's reconciliation items from the stores; answer with ItemsLoaded."""


class ApplyTombstones(msgspec.Struct, frozen=True):
    """Protocol 2: record the peer's tombstones (what they remove goes to the trash,
    marked with `peer`, the peer's fingerprint); answer with TombstonesStored."""

    tombstones: tuple[Tombstone, ...]
    peer: str = ""


class AskToForget(msgspec.Struct, frozen=True):
    """The peer's tombstones would forget more than the limit: ask this side's user; answer with ForgetDecision."""

    count: int
    total: int
    peer: PeerInfo | None


class Finish(msgspec.Struct, frozen=True):
    """The sync is complete. The provider lets the consumer hang up first (`linger`)."""

    stats: events.Stats
    linger: bool = False


class Fail(msgspec.Struct, frozen=True):
    """The sync cannot go on; always the last command (what came before it is still carried out)."""

    error: SyncError


Command: TypeAlias = (Report | Send | Receive | ToPuller | Push | AskToJoin | AskToForget | LoadSummary | LoadItems
                      | ApplyTombstones | Finish | Fail)


# ---------------------------------------------------------------- tallies


def _counts(values: dict[str, int]) -> DatasetCounts:
    return DatasetCounts(memories=values.get("memories", 0), facts=values.get("facts", 0))


@dataclass
class Incoming:
    """The receiving side's tally of one stream: received, refused, stored."""

    stream: str
    announced: DatasetCounts | None = None
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    processed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    updated: int = 0
    ended: int = 0
    vectors_reused: int = 0
    same_ids: set[str] = field(default_factory=set)
    same_facts: set[FactIdentity] = field(default_factory=set)
    spooled: bool = False
    #: Of what was spooled, the records already here by id (counted only when asked).
    already: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    #: The answer sent once it was all spooled, before it was all stored (plaintext push).
    answered_early: SyncStats | None = None

    def total(self, dataset: str) -> int:
        return self.announced[dataset] if self.announced is not None else 0

    def stats(self) -> SyncStats:
        return SyncStats(
            memories=MemoryStats(inserted=self.inserted["memories"], skipped=self.skipped["memories"],
                                  rejected=self.refused["memories"], updated=self.updated),
            facts=FactStats(inserted=self.inserted["facts"], skipped=self.skipped["facts"],
                            rejected=self.refused["facts"], ended=self.ended),
        )

    def foreseen(self) -> SyncStats:
        """What can be told once all is spooled, before it is stored: new vs already here, by id."""
        def new(dataset: str) -> int:
            return max(0, self.received[dataset] - self.refused[dataset] - self.already[dataset])

        return SyncStats(
            memories=MemoryStats(inserted=new("memories"), skipped=self.already["memories"],
                                 rejected=self.refused["memories"]),
            facts=FactStats(inserted=new("facts"), skipped=self.already["facts"], rejected=self.refused["facts"]),
        )


@dataclass
class Outgoing:
    """The sending side's tally: sent, and what the peer confirmed."""

    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    peer_stats: SyncStats | None = None


def peer_failed(message: str) -> str:
    """What to say when the other side sent an error frame."""
    if message == INTERRUPTED:
        return f"{INTERRUPTED}; what was received is kept, run the sync again to complete it"
    return f"the other machine failed: {clip(message)}"


# ---------------------------------------------------------------- the flows


class Flow:
    """What both roles share: the tallies, acks, progress and the stats."""

    role: Literal["provider", "consumer"]

    def __init__(self, *, mode: Mode, batch_size: int = 500, clock: Callable[[], float] = time.monotonic,
                 model: str = "", canaries: bytes = b"", forget_limit: ForgetLimit = ForgetLimit()) -> None:
        self.mode = mode
        #: Forgetting more than this asks this side's user first (--max-forget).
        self.forget_limit = forget_limit
        #: Our store's model fingerprint; "" sends no vectors.
        self.model = model
        #: Our model's vectors of the canary sentences: a same-fingerprint peer's must agree.
        self.canaries = canaries
        #: Protocol 2, same model on both sides: memories travel with their vectors.
        self.vectors = False
        self.batch_size = batch_size
        self.clock = clock
        self.wait: Wait = ""
        #: Records we sent that the peer has not acknowledged (the plaintext mode
        #: sends no acks): they may still sit in buffers while it stores them.
        self.unacknowledged = 0
        self.connected = False
        self.incoming: Incoming | None = None
        self.outgoing = Outgoing()
        self._last_ack = float("-inf")
        self._out: list[Command] = []
        #: Protocol 2 (both sides speak it, encrypted mode): reconcile, send only the difference.
        self.v2 = False
        self.reconciler: Reconciler | None = None
        self.selection: Selection | None = None
        self.round_trips = 0
        self._compare_started: float | None = None
        self.forgotten_here = 0
        self.peer: PeerInfo | None = None
        #: The peer's tombstones we take (see imprint.protocol.forgets), until they are applied.
        self._entitled: Entitlement | None = None
        self._forgets: list[Tombstone] = []
        #: "asking": the user decides about a forget over the limit; "applying": the stores are at it.
        self._forget_state: Literal["", "asking", "applying"] = ""
        self.forgets_kept = 0
        self._forgets_closed = False
        #: The sync is over but for our own forgetting: how to finish once that is done.
        self._ending: tuple[SyncStats | None, SyncStats | None, bool] | None = None

    @property
    def holding(self) -> bool:
        """Everything was exchanged; only this side's forgetting (or its user's answer about it) is left."""
        return self._ending is not None or (self.incoming is not None and self.incoming.answered_early is not None)

    @property
    def encrypted(self) -> bool:
        return self.mode == "encrypted"

    @property
    def receiving(self) -> bool:
        """A stream from the peer is coming in (its error frame is the Puller's to judge)."""
        return self.incoming is not None and not self.incoming.spooled

    def handle(self, event: object) -> list[Command]:
        self._out = []
        try:
            if not self._common(event):
                self._role(event)
        except SyncError as exc:
            self._out.append(Fail(error=exc))
        return self._out

    def _role(self, event: object) -> None:
        raise NotImplementedError

    def _do(self, command: Command) -> None:
        self._out.append(command)

    def _report(self, event: events.Event) -> None:
        self._out.append(Report(event=event))

    # ---------------------------------------------------------------- shared events

    def _common(self, event: object) -> bool:
        match event:
            case VectorsRefused(message=message) if self._for_incoming(event):
                self._report(events.Notice(message=message))
            case PeerArrived():
                if self.wait in ("peer", "room"):
                    self.wait = ""  # someone is here: from now on silence counts
            case events.Progress(direction="send", dataset=dataset, done=done, total=total):
                self.outgoing.sent[dataset] = done
                self.outgoing.total[dataset] = total
                if not self.encrypted:  # no acks: what left the socket is all we know
                    self._progress("send", dataset, done, total, confirmed=False)
            case FrameReceived(frame=Ack() as ack):
                self._on_ack(ack)
            case FrameReceived(frame=StreamError(message=message)) if not self.receiving:
                raise SyncError(peer_failed(message))
            case FrameReceived(frame=Forgets(tombstones=tombstones)) if self.v2:
                self._take_forgets(tombstones)
            case FrameReceived() if self._entitled is not None and not self._forgets_closed:
                self._decide_forgets()  # the peer moved on: every tombstone it had for us is here
                return False
            case TombstonesStored(forgotten=forgotten):
                self.forgotten_here += forgotten
                self._forget_state = ""
                self._release()
            case ForgetDecision(accept=accept) if self._forget_state == "asking":
                self._forget_state = ""
                if accept:
                    self._apply_forgets()
                else:
                    self.forgets_kept = len(self._forgets)
                    self._forgets = []
                    self._report(events.Notice(message=(
                        f"kept the {self.forgets_kept:,} records the other machine has forgotten: nothing was "
                        "forgotten here. The next sync asks again; to accept, sync with --yes (or a higher "
                        "--max-forget)")))
                self._release()
            case BatchSpooled() | StreamSpooled() | BatchStored() if self._for_incoming(event):
                self._on_incoming(event)
            case _:
                return False
        return True

    def _connected(self, event: HandshakeSucceeded) -> None:
        self.wait = ""
        self.connected = True
        self.peer = event.peer
        self.v2 = self.encrypted and event.peer is not None and event.peer.protocol >= PROTOCOL_VERSION
        self._report(events.PeerConnected(mode=self.mode, verification=event.verification, **_peer_fields(event.peer)))
        self.vectors = self.v2 and bool(self.model) and event.peer.model == self.model
        if self.vectors:
            agreement = canary_agreement(self.canaries, event.peer.canaries)
            if agreement < CANARY_MIN_COSINE:
                self.vectors = False
                how = f"(cosine {agreement:.4f})" if agreement > -1 else "(it sent none)"
                self._report(events.Notice(message=(
                    "the other machine runs the same model files but its vectors of the canary sentences differ "
                    f"from this machine's {how}; no vectors are exchanged, everything is embedded where it "
                    "arrives (slower, same result)")))

    def _for_incoming(self, event: object) -> bool:
        return self.incoming is not None and getattr(event, "stream", None) == self.incoming.stream

    def _receive(self, *, request: bool, batch_size: int, count_known: bool = False) -> None:
        self.incoming = Incoming(stream=uuid.uuid4().hex)
        self._do(Receive(stream=self.incoming.stream, batch_size=batch_size, request=request,
                         count_known=count_known))

    def _incoming_frame(self, frame: StreamFrame) -> None:
        if isinstance(frame, Meta):
            self.incoming.announced = frame.datasets
            for dataset in DATASETS:
                self._progress("receive", dataset, 0, self.incoming.total(dataset))
        self._do(ToPuller(frame=frame))

    def _on_incoming(self, event: BatchSpooled | StreamSpooled | BatchStored) -> None:
        tally = self.incoming
        match event:
            case BatchSpooled(dataset=dataset, received=received, refused=refused, already=already):
                tally.received[dataset] += received
                tally.refused[dataset] += refused
                tally.already[dataset] += already
                tally.processed[dataset] += refused  # refused records need no storing
                self._progress("receive", dataset, tally.received[dataset], tally.total(dataset))
                if refused:
                    self._progress("store", dataset, tally.processed[dataset], tally.total(dataset))
            case StreamSpooled():
                tally.spooled = True
                self._spooled()
            case BatchStored(dataset=dataset, count=count, result=result, same_ids=same_ids, same_facts=same_facts):
                tally.processed[dataset] += count
                tally.inserted[dataset] += result.inserted
                tally.skipped[dataset] += result.skipped
                tally.ended += result.ended
                tally.updated += result.updated if dataset == "memories" else 0
                tally.vectors_reused += result.vectors_reused
                tally.same_ids.update(same_ids)
                tally.same_facts.update(same_facts)
                self._progress("store", dataset, tally.processed[dataset], tally.total(dataset))
        self._ack()

    def _spooled(self) -> None:
        """The peer's whole stream is safe in the spool (storing goes on)."""

    def _ack(self, *, final: bool = False) -> None:
        """Tell the sender how far we got (encrypted mode; at most every ACK_INTERVAL, and always the last)."""
        tally = self.incoming
        if not self.encrypted or tally is None:
            return
        now = self.clock()
        if not final and now - self._last_ack < ACK_INTERVAL:
            return
        self._last_ack = now
        ack = Ack(received=_counts(tally.received), stored=_counts(tally.processed),
                  stats=tally.stats() if final else None)
        self._do(Send(frame=ack, quiet=True))

    def _on_ack(self, ack: Ack) -> None:
        if not self.encrypted:
            raise ProtocolError("the peer sent an ack frame, which the plaintext protocol does not have")
        out = self.outgoing
        for dataset in DATASETS:
            total = out.total[dataset]
            self._progress("send", dataset, min(ack.received[dataset], total), total)
            self._progress("peer_store", dataset, min(ack.stored[dataset], total), total)
        if ack.stats is not None:
            out.peer_stats = ack.stats

    def _reconciled(self) -> None:
        """The conversation is over: report it, send the peer the tombstones it lacks."""
        r = self.reconciler
        self.selection = select(r.have, r.need)
        # What will move, not what differs: a copy that loses to the other side's is sent by neither (the
        # merge rules decide alike on both sides), and a record the other side forgot is not sent to it.
        theirs = select(r.need, r.have)
        self._report(events.Reconciled(send=_moving(self.selection, r.need), receive=_moving(theirs, r.have),
                                       round_trips=self.round_trips))
        tombstones = self.selection.tombstones
        for start in range(0, len(tombstones), MAX_BATCH_SIZE):
            self._do(Send(frame=Forgets(tombstones=tuple(tombstones[start:start + MAX_BATCH_SIZE]))))

    def _reconciler(self, items: tuple[bytes, ...], *, initiator: bool) -> Reconciler:
        """Ours, bounded: the peer may claim what its and our counts allow (:func:`claim_bound`)."""
        announced = self.peer.items if self.peer is not None else 0
        return Reconciler(items, initiator=initiator, max_claimed=claim_bound(len(items), announced))

    def _comparing(self) -> None:
        """One more reconciliation message from the peer: within the whole-conversation deadline?"""
        now = self.clock()
        if self._compare_started is None:
            self._compare_started = now
        elif now - self._compare_started > RECONCILE_DEADLINE:
            raise ProtocolError(f"comparing with the other machine took more than {RECONCILE_DEADLINE:.0f} s; "
                                "nothing learnt from it is kept")

    # ---------------------------------------------------------------- the peer's tombstones

    @property
    def approved(self) -> bool:
        """This side's user (or trust list) has let the sync go on."""
        return self.connected

    @property
    def compared(self) -> bool:
        """Reconciling is over on the peer's side, so its tombstones may come."""
        return self.reconciler is not None

    def _take_forgets(self, tombstones: tuple[Tombstone, ...]) -> None:
        """Keep the tombstones reconciling entitles the peer to; nothing is applied yet."""
        if not self.approved:
            raise ProtocolError("the other machine sent tombstones before this side agreed to sync; nothing was "
                                "changed here")
        if not self.compared or self._forgets_closed:
            raise ProtocolError("the other machine sent tombstones outside their place in the sync (after "
                                "comparing, before the records); nothing was forgotten")
        if self._entitled is None:
            self._entitled = Entitlement(self.reconciler.need)
        self._forgets.extend(self._entitled.take(tombstones))

    def _decide_forgets(self) -> None:
        """Apply the peer's tombstones, or ask first when they would forget more than the limit."""
        self._forgets_closed = True
        if self._entitled is not None and self._entitled.refused:
            self._report(events.Notice(message=(
                f"refused {self._entitled.refused:,} tombstones from the other machine (e.g. "
                f"{self._entitled.reasons[0]}); nothing they name was forgotten")))
        count, total = would_forget(self.reconciler.items, self._forgets)
        if self.forget_limit.exceeded(count, total):
            self._forget_state = "asking"
            peer = self.peer
            self._report(events.ForgetConfirmRequired(count=count, total=total,
                                                      hostname=peer.hostname if peer else "",
                                                      fingerprint=peer.fingerprint if peer else ""))
            self._do(AskToForget(count=count, total=total, peer=peer))
        else:  # (tombstones of what we never held are recorded too: they stop old copies arriving)
            self._apply_forgets()

    def _apply_forgets(self) -> None:
        tombstones, self._forgets = self._forgets, []
        if tombstones:
            self._forget_state = "applying"
            self._do(ApplyTombstones(tombstones=tuple(tombstones), peer=self.peer.fingerprint if self.peer else ""))

    def _end(self, *, received: SyncStats | None, sent_stats: SyncStats | None, linger: bool = False) -> None:
        """Everything was exchanged: finish, once our own forgetting is done (or decided)."""
        if self._entitled is not None and not self._forgets_closed:
            self._decide_forgets()
        self._ending = (received, sent_stats, linger)
        self._release()

    def _release(self) -> None:
        if self._ending is None or self._forget_state:
            if self._forget_state == "asking" and self._ending is not None:
                self.wait = "approval"
            return
        received, sent_stats, linger = self._ending
        stats = self._stats(received=received, sent_stats=sent_stats)
        self._report(stats)
        self._do(Finish(stats=stats, linger=linger))

    def _only(self, start: StartPush) -> StartPush:
        """Protocol 2: push exactly what reconciling selected (with vectors to a same-model peer)."""
        if self.selection is None:
            return start
        return msgspec.structs.replace(start, only_memories=tuple(self.selection.memories),
                                       only_facts=tuple(self.selection.facts),
                                       vectors=self.model if self.vectors else "")

    def _sent(self, event: TransferFinished) -> None:
        self.outgoing.sent.update(event.sent)
        if not self.encrypted:
            self.unacknowledged = sum(event.sent.values())

    def _progress(self, direction: events.Direction, dataset: str, done: int, total: int, *,
                  confirmed: bool = True) -> None:
        self._report(events.Progress(direction=direction, dataset=dataset, done=done, total=total, confirmed=confirmed))

    def _stats(self, *, received: SyncStats | None, sent_stats: SyncStats | None) -> events.Stats:
        return events.Stats(role=self.role, mode=self.mode, received=received or SyncStats(),
                            sent=events.SentStats.of(self.outgoing.sent, sent_stats), forgotten=self.forgotten_here,
                            vectors_reused=self.incoming.vectors_reused if self.incoming is not None else 0,
                            forgets_refused=self._entitled.refused if self._entitled is not None else 0,
                            forgets_kept=self.forgets_kept)


class ProviderFlow(Flow):
    """`serve`: wait for one peer, answer its pull, store its push, answer with STATS."""

    role = "provider"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.wait = "peer"  # before a peer arrives nobody is late: wait as long as the room lives
        self._pull_started = False
        self._queued: list[ReconcileMessage] = []

    def _role(self, event: object) -> None:
        match event:
            case ApprovalRequired(peer=peer, warning=warning):
                self.wait = "approval"
                self._report(events.ApprovalRequired(hostname=peer.hostname, user=peer.user, os=peer.os,
                                                     fingerprint=peer.fingerprint, warning=warning,
                                                     verification=peer.verification))
            case AutoAccepted(peer=peer):
                self._report(events.AutoAccepted(hostname=peer.hostname, fingerprint=peer.fingerprint))
            case HandshakeSucceeded():
                self._connected(event)
            case FrameReceived(frame=Request() as request) if self.connected:
                self._on_request(request)
            case FrameReceived(frame=Reconcile(message=message)) if self.v2 and not self._pull_started:
                self._comparing()
                self.round_trips += 1
                if self.reconciler is None:
                    if not self._queued:  # a summary first: if it agrees, no item is read
                        self._do(LoadSummary() if is_summary(message) else LoadItems())
                    self._queued.append(message)
                else:
                    self._answer(message)
            case SummaryLoaded(total=total) if self.v2 and self.reconciler is None and self._queued:
                if len(self._queued) == 1 and agrees(self._queued[0], total):
                    self._queued = []
                    self.reconciler = Reconciler.agreed(initiator=False)
                    self._do(Send(frame=Reconcile(message=AGREED)))
                else:
                    self._do(LoadItems())
            case ItemsLoaded(items=items) if self.v2 and self.reconciler is None:
                self.reconciler = self._reconciler(items, initiator=False)
                queued, self._queued = self._queued, []
                for message in queued:
                    self._answer(message)
            case FrameReceived(frame=frame) if self.connected and self.incoming is not None:
                if not isinstance(frame, _STREAM_FRAMES):
                    raise ProtocolError(f"the peer sent an unexpected {type(frame).__name__} frame")
                self._incoming_frame(frame)
            case FrameReceived(frame=frame):
                raise ProtocolError(f"the peer sent an unexpected {type(frame).__name__} frame")
            case TransferFinished():
                self._sent(event)
                if self.incoming is not None:
                    self.unacknowledged = 0
            case StreamStored(stream=stream) if self.incoming is not None and stream == self.incoming.stream:
                received = self.incoming.stats()
                if self.incoming.answered_early is not None:  # the peer has its answer (and may be gone)
                    self._end(received=received, sent_stats=self.outgoing.peer_stats)
                    return
                self._ack(final=True)  # so the peer's "stored there" ends where its summary will
                self._do(Send(frame=Response.with_stats(received)))
                self._end(received=received, sent_stats=self.outgoing.peer_stats, linger=True)

    def _spooled(self) -> None:
        """Imprint's own clients wait 300 s for the answer to a push, then give up: answer a
        plaintext push once it is safe in the spool, with what can be told by id, and
        store the rest after (a push that is already stored gets the exact answer)."""
        tally = self.incoming
        if self.encrypted or tally is None or sum(tally.processed.values()) >= sum(tally.received.values()):
            return
        tally.answered_early = tally.foreseen()
        self._do(Send(frame=Response.with_stats(tally.answered_early)))
        waiting = sum(tally.received.values()) - sum(tally.processed.values())
        self._report(events.Notice(message=(
            f"everything the other machine sent is safe here; it has its answer, {waiting:,} records are still "
            "being stored")))

    def _answer(self, message: ReconcileMessage) -> None:
        answer = self.reconciler.receive(message)
        self._do(Send(frame=Reconcile(message=answer)))

    def _on_request(self, request: Request) -> None:
        batch_size = request.body.batch_size
        if request.method == "GET" and request.path == "/sync/pull" and not self._pull_started:
            self._pull_started = True
            if self.reconciler is not None:
                self.reconciler.finish()
                self._reconciled()
            elif self.v2:
                raise ProtocolError("the peer asked for our records before comparing what we hold")
            self._do(Push(start=self._only(StartPush(batch_size=batch_size))))
        elif request.method == "POST" and request.path == "/sync/push" and self.incoming is None:
            self.unacknowledged = 0
            self._receive(request=False, batch_size=batch_size, count_known=not self.encrypted)
        else:
            self._do(Send(frame=Response.not_found()))


class ConsumerFlow(Flow):
    """`join`: pull the provider's records, push ours (but what we just got), read its STATS.

    With `confirm` (the dashboard), nothing moves until its user has seen the
    provider (hostname, fingerprint, verification code) and said "accept".
    """

    role = "consumer"

    def __init__(self, *, confirm: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.confirm = confirm
        self.phase: Literal["handshake", "confirm", "reconcile", "pull", "push", "await-stats"] = "handshake"
        self._received: SyncStats | None = None
        self._summary_sent = False
        #: The provider's answer to our summary, while our items load.
        self._pending: ReconcileMessage | None = None

    def _role(self, event: object) -> None:
        match event:
            case HelloSent(verification=verification):
                self.wait = "approval"
                code = f" Verification code {verification}: the other machine shows the same." if verification else ""
                how = ("waiting for the other machine to approve this device…" if self.encrypted else
                       "waiting for the provider to answer (its user may have to approve this device)…")
                self._report(events.Waiting(for_="approval", message=how + code))
            case HandshakeSucceeded(peer=peer, verification=verification):
                self._connected(event)
                if self.confirm:
                    self.phase = "confirm"
                    self.wait = "approval"
                    self._report(events.ConfirmRequired(mode=self.mode, verification=verification,
                                                        **_peer_fields(peer)))
                    self._do(AskToJoin(peer=peer, verification=verification))
                else:
                    self._begin()
            case JoinDecision(decision=decision) if self.phase == "confirm":
                if decision != "accept":
                    self._do(Send(frame=StreamError(message=DECLINED), quiet=True))
                    raise RejectedError("you did not join: nothing was sent or received")
                self.wait = ""
                self._begin()
            case SummaryLoaded(total=total) if self.phase == "reconcile" and not self._summary_sent:
                self._summary_sent = True
                self._do(Send(frame=Reconcile(message=summary_message(total))))
            case FrameReceived(frame=Reconcile(message=message)) if (
                    self.phase == "reconcile" and self._summary_sent and self.reconciler is None
                    and self._pending is None):
                self._comparing()
                self.round_trips += 1
                if message == AGREED:  # nothing differs: no item is read
                    self.reconciler = Reconciler.agreed(initiator=True)
                    self._reconciled()
                    self._pull()
                else:
                    self._pending = message
                    self._do(LoadItems())
            case ItemsLoaded(items=items) if self.phase == "reconcile" and self.reconciler is None and self._pending:
                self.reconciler = self._reconciler(items, initiator=True)
                self.reconciler.resume()
                message, self._pending = self._pending, None
                self._converse(message)
            case FrameReceived(frame=Reconcile(message=message)) if self.phase == "reconcile" and self.reconciler:
                self._comparing()
                self.round_trips += 1
                self._converse(message)
            case FrameReceived(frame=frame) if self.phase == "pull":
                if isinstance(frame, Response):
                    raise ProtocolError(f"the provider answered the pull with {frame.status}: {clip(frame.body)}")
                if not isinstance(frame, _STREAM_FRAMES):
                    raise ProtocolError(f"the provider sent an unexpected {type(frame).__name__} frame")
                self._incoming_frame(frame)
            case StreamStored(stream=stream) if self.phase == "pull" and stream == self.incoming.stream:
                self._received = self.incoming.stats()
                self._ack(final=True)
                self.phase = "push"
                self._do(Push(start=self._only(StartPush(batch_size=self.batch_size, request=True,
                                                         skip_ids=frozenset(self.incoming.same_ids),
                                                         skip_facts=frozenset(self.incoming.same_facts)))))
            case TransferFinished():
                self.phase = "await-stats"
                self._sent(event)
                self._report(events.Waiting(for_="peer",
                                            message="sent; waiting for the other machine to store our records…"))
            case FrameReceived(frame=Response() as response) if self.phase in ("push", "await-stats"):
                if response.status != 200:
                    raise SyncError(f"the provider refused our records ({response.status}: {clip(response.body)})")
                self._end(received=self._received, sent_stats=response.stats())
            case FrameReceived(frame=frame):
                raise ProtocolError(f"unexpected {type(frame).__name__} frame during {self.phase}")

    @property
    def approved(self) -> bool:
        return self.connected and self.phase not in ("handshake", "confirm")

    @property
    def compared(self) -> bool:
        return self.reconciler is not None and self.reconciler.done

    def _begin(self) -> None:
        """After the handshake (and the user's yes): compare first (protocol 2), else pull everything."""
        if self.v2:
            self.phase = "reconcile"
            self._do(LoadSummary())
        else:
            self._pull()

    def _converse(self, message: ReconcileMessage) -> None:
        answer = self.reconciler.receive(message)
        if answer is not None:
            self._do(Send(frame=Reconcile(message=answer)))
        else:
            self._reconciled()
            self._pull()

    def _pull(self) -> None:
        self.phase = "pull"
        self._receive(request=True, batch_size=self.batch_size)


def _moving(selection: Selection, other: list[bytes]) -> dict[str, int]:
    """What a selection will deliver: a fact the other side has forgotten is not counted (its tombstone
    removes it here before it is read, or there when it arrives)."""
    forgotten = {raw[1:9].hex() for raw in other if raw[:1] == FORGOTTEN_FACT}
    facts = sum(1 for key in selection.facts if key not in forgotten)
    return {"memories": len(selection.memories), "facts": facts, "forgotten": len(selection.tombstones)}


def _peer_fields(peer: PeerInfo | None) -> dict[str, str]:
    if peer is None:
        return {}
    return {"hostname": peer.hostname, "user": peer.user, "os": peer.os, "fingerprint": peer.fingerprint}

