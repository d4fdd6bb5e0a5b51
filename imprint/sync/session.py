"""One sync session per role: the boss that starts the actors, wires them,
routes what they report, and stops them all.

Actors tell events up to a `QueueListener`; the session's loop (on the
calling thread) takes them one at a time, so routing is sequential and no
actor ever asks upward. Every wait has a deadline: a silent peer ends the
session with PeerTimeoutError.

Receiving is two stages (see :mod:`imprint.spool`): the Puller puts each
batch in the spool as it arrives, the Storer stores from there. The
receiving side answers a stream only once the Storer says it is stored.

Provider (serve):  handshake → [GET /sync/pull → Pusher] → [POST /sync/push → Puller → Storer] → 200 STATS
Consumer (join):   handshake → Puller (GET) → Storer → Pusher (POST) → await 200 STATS

In the encrypted mode the receiver acks as it goes (:class:`Ack`), so the
sender's bars count what the peer confirmed, and the consumer's last ack
tells the provider what became of the records it sent.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import msgspec
import pykka
from loguru import logger

from imprint.actors.base import QueueListener, ask
from imprint.actors.handshake import Handshake, Mode
from imprint.actors.puller import Puller
from imprint.actors.pusher import Pusher
from imprint.actors.relay_connection import MAX_INCOMING_BYTES, Hangup, RelayConnection
from imprint.actors.trust_gate import TrustGate
from imprint.errors import (
    AuthError,
    PeerTimeoutError,
    ProtocolError,
    RejectedError,
    RelayError,
    SyncError,
)
from imprint.identity import DeviceIdentity, HostInfo
from imprint.local import LocalActors
from imprint.messages.session import (
    ApprovalRequired,
    AutoAccepted,
    BadFrame,
    BatchSpooled,
    BatchStored,
    CloseConnection,
    ConnectionLost,
    FrameReceived,
    HandshakeFailed,
    HandshakeSucceeded,
    HelloSent,
    JoinDecision,
    PeerInfo,
    Progress,
    RawFrameReceived,
    SendFrame,
    StartHandshake,
    StartPull,
    StartPush,
    StoreFailed,
    StreamFrame,
    StreamSpooled,
    StreamStored,
    TransferFailed,
    TransferFinished,
    Unwatch,
    Watch,
)
from imprint.messages.store import Ping
from imprint.messages.wire import (
    DATASETS,
    MAX_PLAINTEXT_FRAME_BYTES,
    Ack,
    DatasetCounts,
    INTERRUPTED,
    DatasetStats,
    FactStats,
    Meta,
    Request,
    Response,
    StreamError,
    SyncStats,
)
from imprint.spool import DEFAULT_MAX_BYTES

#: What the provider is told when the joining side's user declines to go on.
DECLINED = "the other machine's user chose not to sync"
from imprint.text import clip
from imprint.trust import TrustList

#: Slowest rate (records/s) at which we assume a peer stores what we sent,
#: when it cannot tell us (the plaintext mode sends no acks).
MIN_PEER_STORE_RATE = 5.0
#: Seconds between two acks of a stream (the last one always goes).
ACK_INTERVAL = 0.25

Reporter = Callable[[dict[str, Any]], None]


class Cancelled(msgspec.Struct, frozen=True):
    """Told by whoever runs the session (the dashboard) to end it now."""

    reason: str = "cancelled"


@dataclass(kw_only=True)
class SessionConfig:
    """What both roles need.

    Attributes:
        url: full websocket URL (relay, room, role).
        room: room id (bound into the key exchange).
        pin: the session PIN.
        mode: "encrypted" (default) or "plaintext".
        batch_size: records per batch frame.
        idle_timeout: seconds the peer may stay silent mid-transfer; also how
            long a consumer waits for a room to be served.
        approval_timeout: seconds to wait for a human decision.
        spool_path: the workspace's receive spool.
        spool_max_bytes: how much may wait in it.
    """

    url: str
    room: str
    pin: str
    mode: Mode = "encrypted"
    batch_size: int = 500
    idle_timeout: float = 120.0
    approval_timeout: float = 600.0
    peer_wait_timeout: float = 3600.0
    connect_attempts: int = 5
    spool_path: Path | None = None
    spool_max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def relay_label(self) -> str:
        return self.url.split("?", 1)[0].rsplit("/", 1)[0]


@dataclass
class _Run:
    """The actors of one session, stopped in reverse order."""

    refs: list[pykka.ActorRef[Any]] = field(default_factory=list)

    def start(self, cls: Any, **kw: Any) -> pykka.ActorRef[Any]:
        ref = cls.start(**kw)
        self.refs.append(ref)
        ask(ref, Ping(), timeout=120)
        return ref

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop in reverse order; after an interrupt, within about a second in all."""
        deadline = time.monotonic() + (1.0 if interrupted else 30.0 * max(1, len(self.refs)))
        for ref in reversed(self.refs):
            try:
                ref.stop(timeout=max(0.1, min(30.0, deadline - time.monotonic())))
            except (pykka.ActorDeadError, pykka.Timeout):
                logger.debug("actor {} did not stop cleanly", ref.actor_class.__name__)
        self.refs.clear()


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
    ended: int = 0
    same_ids: set[str] = field(default_factory=set)
    same_facts: set[tuple[str, str, str, float]] = field(default_factory=set)
    spooled: bool = False
    stored: bool = False

    def total(self, dataset: str) -> int:
        return self.announced[dataset] if self.announced is not None else 0

    def stats(self) -> SyncStats:
        return SyncStats(
            memories=DatasetStats(inserted=self.inserted["memories"], skipped=self.skipped["memories"],
                                  rejected=self.refused["memories"]),
            facts=FactStats(inserted=self.inserted["facts"], skipped=self.skipped["facts"],
                            rejected=self.refused["facts"], ended=self.ended),
        )


@dataclass
class Outgoing:
    """The sending side's tally: sent, and what the peer confirmed."""

    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    finished: bool = False
    peer_stats: SyncStats | None = None


def _peer_failed(message: str) -> str:
    if message == INTERRUPTED:
        return f"{INTERRUPTED}; what was received is kept, run the sync again to complete it"
    return f"the other machine failed: {clip(message)}"


def stats_dict(stats: SyncStats | None, sent: dict[str, int] | None = None) -> dict[str, dict[str, int]]:
    """The `stats` event's per-dataset figures: what was sent, and what the receiver made of it."""
    result: dict[str, dict[str, int]] = {}
    for dataset in DATASETS:
        figures: dict[str, int] = {}
        if sent is not None:
            figures["sent"] = sent.get(dataset, 0)
        if stats is not None:
            figures.update(msgspec.to_builtins(getattr(stats, dataset)))
        result[dataset] = figures
    return result


class _Session:
    role: Literal["provider", "consumer"]

    def __init__(
        self,
        *,
        config: SessionConfig,
        local: LocalActors,
        identity: DeviceIdentity,
        host: HostInfo,
        report: Reporter,
    ) -> None:
        self.config = config
        self.local = local
        self.identity = identity
        self.host = host
        self.report = report
        self.listener = QueueListener()
        self.run_ = _Run()
        self.relay: Any = None
        self.handshake: Any = None
        self.puller: Any = None
        self.pusher: Any = None
        self.done = False
        self.connected = False
        #: What we wait for, which sets how long: "peer" (a provider's room), "room"
        #: (a consumer's provider), "approval" (a human), or "" (the transfer).
        self.waiting = ""
        self.unacknowledged = 0
        self.incoming: Incoming | None = None
        self.outgoing = Outgoing()
        self._watched: list[str] = []
        self._hangup = Hangup()
        self._last_ack = 0.0
        self._lost_settled = False

    @property
    def storer(self) -> Any:
        return self.local["storer"]

    @property
    def encrypted(self) -> bool:
        return self.config.mode == "encrypted"

    def connect(self) -> None:
        """Connect to the relay (with retries); RelayError if it does not answer."""
        if self.relay is None:
            c = self.config
            # The plaintext mode may meet Imprint's own clients, whose frames reach 10-80 MB.
            limit = MAX_PLAINTEXT_FRAME_BYTES + 1024 if c.mode == "plaintext" else MAX_INCOMING_BYTES
            self.relay = self.run_.start(RelayConnection, url=c.url, listener=self.listener,
                                         attempts=c.connect_attempts, max_frame_bytes=limit, hangup=self._hangup)

    def _start_common(self, trust_gate: Any = None) -> None:
        c = self.config
        self.connect()
        self.handshake = self.run_.start(
            Handshake,
            role=self.role,
            mode=c.mode,
            relay=self.relay,
            listener=self.listener,
            pin=c.pin,
            room=c.room,
            identity=self.identity,
            host=self.host,
            trust_gate=trust_gate,
        )
        self.puller = self.run_.start(
            Puller,
            relay=self.relay,
            listener=self.listener,
            storer=self.storer,
            spool_path=c.spool_path,
            spool_max_bytes=c.spool_max_bytes,
        )
        self.pusher = self.run_.start(
            Pusher,
            relay=self.relay,
            listener=self.listener,
            memory_store=self.local["memory_store"],
            fact_store=self.local["fact_store"],
        )

    # ---------------------------------------------------------------- waiting

    def _next_event(self) -> Any:
        c = self.config
        where = f"room {c.room} on {c.relay_label}"
        if self.waiting == "peer":
            timeout, what = c.peer_wait_timeout, "no peer joined; the room has expired"
        elif self.waiting == "room":
            timeout = c.idle_timeout
            what = f"nobody served {where}: check the room (type what serve printed) or run serve again"
        elif self.waiting == "approval":
            timeout = c.approval_timeout
            what = "the other machine did not answer: its user did not approve this device"
        else:
            # Records we sent that the peer has not acknowledged yet may still sit
            # in socket and relay buffers while it stores them: allow for that.
            timeout = c.idle_timeout + self.unacknowledged / MIN_PEER_STORE_RATE
            what = "the peer sent nothing"
        try:
            return self.listener.get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeoutError(f"timed out after {timeout:.0f}s ({what})") from None

    def _wait(self, state: str, what: str, message: str) -> None:
        self.waiting = state
        self.report({"event": "waiting", "for": what, "message": message})

    # ---------------------------------------------------------------- shared events

    def _common_event(self, event: Any) -> bool:
        """Handle events both roles treat alike; True if handled."""
        match event:
            case Cancelled(reason=reason):
                if self.connected:
                    self._tell_peer_error(reason)
                raise SyncError(reason)
            case RawFrameReceived():
                if self.waiting in ("peer", "room"):
                    self.waiting = ""  # someone is here: from now on silence counts
                self.handshake.tell(event)
            case HandshakeFailed(message=message, kind=kind):
                error = {"auth": AuthError, "rejected": RejectedError}.get(kind, ProtocolError)
                raise error(message)
            case BadFrame(message=message):
                self._tell_peer_error(message)
                raise ProtocolError(message)
            case Progress(direction="send", dataset=dataset, done=done, total=total):
                self.outgoing.sent[dataset] = done
                self.outgoing.total[dataset] = total
                if not self.encrypted:  # no acks: what left the socket is all we know
                    self._progress("send", dataset, done, total, confirmed=False)
            case FrameReceived(frame=Ack() as ack):
                self._on_ack(ack)
            case FrameReceived(frame=StreamError(message=message)) if not self._receiving():
                raise SyncError(_peer_failed(message))
            case BatchSpooled() | StreamSpooled() | BatchStored() if self._for_incoming(event):
                self._on_incoming(event)
            case StoreFailed(message=message):
                self._tell_peer_error("the other machine could not store the records")
                raise SyncError(f"storing received records failed: {message}; they are kept and stored by the next "
                                "imprint command")
            case TransferFailed(message=message):
                lost = self._pending_connection_loss()
                if lost is not None:
                    # A send failed because the relay hung up: its reason says more.
                    raise RelayError(f"{lost} before the sync finished; what was received is kept, run it again to complete")
                self._tell_peer_error(message)
                raise SyncError(message)
            case ConnectionLost(reason=reason):
                if self.done:
                    return True
                if not self._lost_settled:
                    # The frames read before the close were handed to Handshake or
                    # Puller, whose verdict (a rejection, the peer's error) travels a
                    # longer path than this event. Let them finish, then look again.
                    self._lost_settled = True
                    self._settle()
                    self.listener.tell(event)
                    return True
                raise RelayError(f"{reason} before the sync finished; what was received is kept, run it again to complete")
            case _:
                return False
        return True

    def _receiving(self) -> bool:
        """True while a stream from the peer is coming in (its error frame is the Puller's to judge)."""
        return self.incoming is not None and not self.incoming.spooled

    def _for_incoming(self, event: Any) -> bool:
        return self.incoming is not None and getattr(event, "stream", None) == self.incoming.stream

    def _begin_incoming(self) -> str:
        stream = uuid.uuid4().hex
        self.incoming = Incoming(stream=stream)
        self._watched.append(stream)
        self.storer.tell(Watch(stream=stream, listener=self.listener))
        return stream

    def _on_incoming_meta(self, meta: Meta) -> None:
        tally = self.incoming
        tally.announced = meta.datasets
        for dataset in DATASETS:
            self._progress("receive", dataset, 0, tally.total(dataset))

    def _on_incoming(self, event: Any) -> None:
        tally = self.incoming
        match event:
            case BatchSpooled(dataset=dataset, received=received, refused=refused):
                tally.received[dataset] += received
                tally.refused[dataset] += refused
                tally.processed[dataset] += refused  # refused records need no storing
                self._progress("receive", dataset, tally.received[dataset], tally.total(dataset))
                if refused:
                    self._progress("store", dataset, tally.processed[dataset], tally.total(dataset))
            case StreamSpooled():
                tally.spooled = True
            case BatchStored(dataset=dataset, count=count, result=result, same_ids=same_ids, same_facts=same_facts):
                tally.processed[dataset] += count
                tally.inserted[dataset] += result.inserted
                tally.skipped[dataset] += result.skipped
                tally.ended += result.ended
                tally.same_ids.update(same_ids)
                tally.same_facts.update(same_facts)
                self._progress("store", dataset, tally.processed[dataset], tally.total(dataset))
        self._ack()

    def _ack(self, *, final: bool = False) -> None:
        """Tell the sender how far we got (encrypted mode; at most every ACK_INTERVAL, and always the last)."""
        tally = self.incoming
        if not self.encrypted or tally is None:
            return
        now = time.monotonic()
        if not final and now - self._last_ack < ACK_INTERVAL:
            return
        self._last_ack = now
        ack = Ack(received=_counts(tally.received), stored=_counts(tally.processed),
                  stats=tally.stats() if final else None)
        self.relay.tell(SendFrame(frame=ack, quiet=True))

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

    def _progress(self, direction: str, dataset: str, done: int, total: int, *, confirmed: bool = True) -> None:
        event = {"event": "progress", "direction": direction, "dataset": dataset, "done": done, "total": total}
        if not confirmed:
            event["confirmed"] = False
        self.report(event)

    def _stats_event(self, *, received: SyncStats | None, sent_stats: SyncStats | None) -> dict[str, Any]:
        return {
            "event": "stats",
            "role": self.role,
            "mode": self.config.mode,
            "received": stats_dict(received),
            "sent": stats_dict(sent_stats, self.outgoing.sent),
        }

    # ---------------------------------------------------------------- ending

    def cancel(self, reason: str = "cancelled") -> None:
        """End the session from another thread (safe at any time)."""
        self.listener.tell(Cancelled(reason=reason))

    def _pending_connection_loss(self) -> str | None:
        """The reason of a connection loss already reported but still queued, if any."""
        try:
            self.relay.ask(Ping(), timeout=10)  # the relay has passed on what its reader saw
        except Exception:
            logger.debug("relay connection did not answer")
        pending: list[Any] = []
        reason = None
        while True:
            try:
                event = self.listener.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, ConnectionLost) and not event.expected and reason is None:
                reason = event.reason
            else:
                pending.append(event)
        for event in pending:  # keep the rest, in order
            self.listener.tell(event)
        return reason

    def _settle(self) -> None:
        """Wait until Handshake and Puller have handled every message told so far."""
        for ref in (self.handshake, self.puller):
            if ref is None:
                continue
            try:
                ref.ask(Ping(), timeout=30)
            except Exception:  # a dead or stuck stage has nothing more to say
                logger.debug("{} did not settle", ref.actor_class.__name__)

    def _tell_peer_error(self, message: str) -> None:
        try:
            self.relay.ask(SendFrame(frame=StreamError(message=message[:500])), timeout=5)
        except Exception:
            logger.debug("could not tell the peer about the error")

    def _peer_connected(self, event: HandshakeSucceeded) -> None:
        self.waiting = ""
        self.connected = True
        peer = event.peer
        info: dict[str, Any] = {"event": "peer_connected", "mode": self.config.mode}
        if peer is not None:
            info.update(hostname=peer.hostname, user=peer.user, os=peer.os, fingerprint=peer.fingerprint)
        if event.verification:
            info["verification"] = event.verification
        self.report(info)

    def _finish(self) -> None:
        self.done = True
        try:
            self.relay.tell(CloseConnection(reason="sync complete"))
        except pykka.ActorDeadError:
            pass

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop every actor of the session. After an interrupt, tell the peer first
        (briefly: a send blocked behind a big frame is not waited for), then hang up."""
        if interrupted and not self.done and self.relay is not None and self.connected:
            try:
                self.relay.ask(SendFrame(frame=StreamError(message=INTERRUPTED), quiet=True), timeout=0.5)
            except Exception:
                logger.debug("could not tell the peer about the interrupt")
        if interrupted:
            self._hangup()  # unblocks a send in progress, so every stage can stop now
        self.done = True
        for stream in self._watched:
            try:
                self.storer.tell(Unwatch(stream=stream))
            except (pykka.ActorDeadError, KeyError):
                pass
        self._watched.clear()
        self.run_.stop(interrupted=interrupted)

    def _run(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        interrupted = False
        try:
            return body()
        except BaseException as exc:
            interrupted = not isinstance(exc, Exception)  # Ctrl-C, SIGTERM
            raise
        finally:
            self.stop(interrupted=interrupted)


class ProviderSession(_Session):
    """`serve`: waits for one peer, answers its pull and stores its push."""

    role = "provider"

    def __init__(self, *, trust_list: TrustList, approver: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.trust_list = trust_list
        self.approver = approver

    def run(self) -> dict[str, Any]:
        """Run to the end; return the stats event. Raises a SyncError subclass on failure."""

        def body() -> dict[str, Any]:
            trust_gate = self.run_.start(TrustGate, trust_list=self.trust_list, approver=self.approver,
                                         listener=self.listener)
            self._start_common(trust_gate)
            self.handshake.tell(StartHandshake())
            return self._loop()

        return self._run(body)

    def _loop(self) -> dict[str, Any]:
        pull_started = False
        # Before a peer arrives, nobody is late: wait as long as the room lives.
        self.waiting = "peer"
        while True:
            event = self._next_event()
            if self._common_event(event):
                continue
            match event:
                case ApprovalRequired(peer=peer, warning=warning):
                    self.waiting = "approval"
                    self.report({"event": "approval_required", "hostname": peer.hostname, "user": peer.user,
                                 "os": peer.os, "fingerprint": peer.fingerprint, "warning": warning})
                case AutoAccepted(peer=peer):
                    self.report({"event": "auto_accepted", "hostname": peer.hostname, "fingerprint": peer.fingerprint})
                case HandshakeSucceeded():
                    self._peer_connected(event)
                case FrameReceived(frame=Request() as request) if self.connected:
                    batch_size = request.body.batch_size
                    if request.method == "GET" and request.path == "/sync/pull" and not pull_started:
                        pull_started = True
                        self.pusher.tell(StartPush(batch_size=batch_size))
                    elif request.method == "POST" and request.path == "/sync/push" and self.incoming is None:
                        self.unacknowledged = 0
                        stream = self._begin_incoming()
                        self.puller.tell(StartPull(stream=stream, batch_size=batch_size))
                    else:
                        ask(self.relay, SendFrame(frame=Response.not_found()), timeout=60)
                case FrameReceived(frame=frame) if self.connected and self.incoming is not None:
                    if isinstance(frame, Meta):
                        self._on_incoming_meta(frame)
                    self.puller.tell(StreamFrame(frame=frame))
                case FrameReceived(frame=frame) if self.connected:
                    self._tell_peer_error(f"unexpected {type(frame).__name__} frame")
                    raise ProtocolError(f"the peer sent an unexpected {type(frame).__name__} frame")
                case TransferFinished(sent=sent):
                    self.outgoing.sent.update(sent)
                    self.outgoing.finished = True
                    if self.incoming is None and not self.encrypted:
                        self.unacknowledged = sum(sent.values())
                case StreamStored(stream=stream) if self.incoming is not None and stream == self.incoming.stream:
                    self.incoming.stored = True
                    received = self.incoming.stats()
                    ask(self.relay, SendFrame(frame=Response.with_stats(received)), timeout=60)
                    result = self._stats_event(received=received, sent_stats=self.outgoing.peer_stats)
                    self.report(result)
                    self._await_peer_close()
                    return result
                case FrameReceived(frame=frame):
                    raise ProtocolError(f"the peer sent a {type(frame).__name__} frame before the handshake finished")
                case _:
                    logger.debug("provider ignores {}", type(event).__name__)

    def _await_peer_close(self) -> None:
        """Let the consumer read our stats and hang up first (bounded)."""
        self.done = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                event = self.listener.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(event, ConnectionLost):
                return
        self._finish()


class ConsumerSession(_Session):
    """`join`: handshake, pull the provider's records, push ours, read its stats.

    With `confirm` (the dashboard), nothing moves until its user has seen the
    provider (hostname, fingerprint, verification code) and said "accept".
    """

    role = "consumer"

    def __init__(self, *, confirm: Callable[[PeerInfo | None, str], str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.confirm = confirm
        self._confirm_thread: threading.Thread | None = None

    def run(self) -> dict[str, Any]:
        def body() -> dict[str, Any]:
            c = self.config
            self.report({"event": "waiting", "for": "relay", "message": f"connecting to the relay {c.relay_label}…"})
            self._start_common()
            self.handshake.tell(StartHandshake())
            if self.encrypted:
                self._wait("room", "room", f"waiting for room {c.room} on {c.relay_label} to be served… "
                                           f"(gives up after {c.idle_timeout:.0f} s; Ctrl-C to stop)")
            return self._loop()

        return self._run(body)

    def _pull(self) -> str:
        stream = self._begin_incoming()
        self.puller.tell(StartPull(stream=stream, batch_size=self.config.batch_size, request=True))
        return "pull"

    def _ask_to_join(self, event: HandshakeSucceeded) -> None:
        """Show the provider and wait for the user's answer (on a thread: the loop keeps running)."""
        peer = event.peer
        shown: dict[str, Any] = {"event": "confirm_required", "mode": self.config.mode,
                                 "verification": event.verification}
        if peer is not None:
            shown.update(hostname=peer.hostname, user=peer.user, os=peer.os, fingerprint=peer.fingerprint)
        self.waiting = "approval"
        self.report(shown)

        def ask_user() -> None:
            try:
                decision = self.confirm(peer, event.verification)
            except Exception:
                logger.exception("join confirmation failed; not joining")
                decision = "reject"
            self.listener.tell(JoinDecision(decision="accept" if decision == "accept" else "reject"))

        self._confirm_thread = threading.Thread(target=ask_user, name="join-confirm", daemon=True)
        self._confirm_thread.start()

    def _loop(self) -> dict[str, Any]:
        phase = "handshake"
        received: SyncStats | None = None
        while True:
            event = self._next_event()
            if self._common_event(event):
                continue
            match event:
                case HelloSent(verification=verification):
                    code = f" Verification code {verification}: the other machine shows the same." if verification else ""
                    how = ("waiting for the other machine to approve this device…" if self.encrypted else
                           f"waiting for the provider in room {self.config.room} to answer (its user may have to "
                           "approve this device)…")
                    self._wait("approval", "approval", how + code)
                case HandshakeSucceeded():
                    self._peer_connected(event)
                    if self.confirm is not None:
                        phase = "confirm"
                        self._ask_to_join(event)
                    else:
                        phase = self._pull()
                case JoinDecision(decision=decision) if phase == "confirm":
                    if decision != "accept":
                        self._tell_peer_error(DECLINED)
                        raise RejectedError("you did not join: nothing was sent or received")
                    self.waiting = ""
                    phase = self._pull()
                case FrameReceived(frame=frame) if phase == "confirm":
                    raise ProtocolError(f"the provider sent a {type(frame).__name__} frame before we asked for anything")
                case FrameReceived(frame=frame) if phase == "pull":
                    if isinstance(frame, Response):
                        raise ProtocolError(f"the provider answered the pull with {frame.status}: {clip(frame.body)}")
                    if isinstance(frame, Meta):
                        self._on_incoming_meta(frame)
                    self.puller.tell(StreamFrame(frame=frame))
                case StreamStored(stream=stream) if phase == "pull" and stream == self.incoming.stream:
                    self.incoming.stored = True
                    received = self.incoming.stats()
                    self._ack(final=True)
                    phase = "push"
                    self.pusher.tell(StartPush(batch_size=self.config.batch_size, request=True,
                                               skip_ids=frozenset(self.incoming.same_ids),
                                               skip_facts=frozenset(self.incoming.same_facts)))
                case TransferFinished(sent=sent):
                    phase = "await-stats"
                    self.outgoing.sent.update(sent)
                    self.outgoing.finished = True
                    if not self.encrypted:
                        self.unacknowledged = sum(sent.values())
                    self.report({"event": "waiting", "for": "peer",
                                 "message": "sent; waiting for the other machine to store our records…"})
                case FrameReceived(frame=frame) if phase in ("push", "await-stats"):
                    if not isinstance(frame, Response):
                        raise ProtocolError(f"the provider sent an unexpected {type(frame).__name__} frame")
                    if frame.status != 200:
                        raise SyncError(f"the provider refused our records ({frame.status}: {clip(frame.body)})")
                    result = self._stats_event(received=received, sent_stats=frame.stats())
                    self.report(result)
                    self._finish()
                    return result
                case FrameReceived(frame=frame):
                    raise ProtocolError(f"unexpected {type(frame).__name__} frame during {phase}")
                case _:
                    logger.debug("consumer ignores {}", type(event).__name__)
