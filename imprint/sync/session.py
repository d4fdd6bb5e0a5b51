"""One sync session per role: the boss that starts the actors, wires them,
routes what they report, and stops them all.

Actors tell events up to a `QueueListener`; the session's loop (on the
calling thread) takes them one at a time, so routing is sequential and no
actor ever asks upward. Every wait has a deadline: a silent peer ends the
session with PeerTimeoutError.

Provider (serve):  handshake → [GET /sync/pull → Pusher] → [POST /sync/push → Puller] → 200 STATS
Consumer (join):   handshake → Puller (GET) → Pusher (POST) → await 200 STATS
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import msgspec
import pykka
from loguru import logger

from imprint.actors.base import ask
from imprint.actors.handshake import Handshake, Mode
from imprint.actors.puller import Puller
from imprint.actors.pusher import Pusher
from imprint.actors.relay_connection import RelayConnection
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
    CloseConnection,
    ConnectionLost,
    FrameReceived,
    HandshakeFailed,
    HandshakeSucceeded,
    Progress,
    RawFrameReceived,
    SendFrame,
    StartHandshake,
    StartPull,
    StartPush,
    StreamFrame,
    TransferFailed,
    TransferFinished,
)
from imprint.messages.store import Ping
from imprint.messages.wire import (
    DatasetStats,
    FactStats,
    Request,
    Response,
    StreamError,
    SyncStats,
)
from imprint.trust import TrustList


#: Slowest rate (records/s) at which we assume a peer stores what we sent.
MIN_PEER_STORE_RATE = 5.0


class QueueListener:
    """Where actors `tell` events for the session loop (duck-types an ActorRef's tell)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self.queue.put(message)


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
        idle_timeout: seconds the peer may stay silent mid-transfer.
        approval_timeout: seconds to wait for a human decision.
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


@dataclass
class _Run:
    """The actors of one session, stopped in reverse order."""

    refs: list[pykka.ActorRef[Any]] = field(default_factory=list)

    def start(self, cls: Any, **kw: Any) -> pykka.ActorRef[Any]:
        ref = cls.start(**kw)
        self.refs.append(ref)
        ask(ref, Ping(), timeout=120)
        return ref

    def stop(self) -> None:
        for ref in reversed(self.refs):
            try:
                ref.stop(timeout=30)
            except (pykka.ActorDeadError, pykka.Timeout):
                logger.debug("actor {} did not stop cleanly", ref.actor_class.__name__)
        self.refs.clear()


def _stats_dict(stats: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {d: dict(v) for d, v in stats.items()}


def _to_wire_stats(stats: dict[str, dict[str, int]]) -> SyncStats:
    m, f = stats.get("memories", {}), stats.get("facts", {})
    return SyncStats(
        memories=DatasetStats(inserted=m.get("inserted", 0), skipped=m.get("skipped", 0)),
        facts=FactStats(inserted=f.get("inserted", 0), skipped=f.get("skipped", 0), ended=f.get("ended", 0)),
    )


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
        self.waiting_for_human = False
        self.waiting_for_peer = False
        self.unacknowledged = 0
        self._lost_settled = False

    def connect(self) -> None:
        """Connect to the relay (with retries); RelayError if it does not answer."""
        if self.relay is None:
            c = self.config
            self.relay = self.run_.start(RelayConnection, url=c.url, listener=self.listener, attempts=c.connect_attempts)

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
            embedder=self.local["embedder"],
            memory_store=self.local["memory_store"],
            fact_store=self.local["fact_store"],
        )
        self.pusher = self.run_.start(
            Pusher,
            relay=self.relay,
            listener=self.listener,
            memory_store=self.local["memory_store"],
            fact_store=self.local["fact_store"],
        )

    def _next_event(self) -> Any:
        if self.waiting_for_peer:
            timeout, what = self.config.peer_wait_timeout, "no peer joined; the room has expired"
        elif self.waiting_for_human:
            timeout, what = self.config.approval_timeout, "waiting for approval"
        else:
            # Records we sent that the peer has not acknowledged yet may still sit
            # in socket and relay buffers while it embeds them: allow for that.
            timeout = self.config.idle_timeout + self.unacknowledged / MIN_PEER_STORE_RATE
            what = "the peer sent nothing"
        try:
            return self.listener.queue.get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeoutError(f"timed out after {timeout:.0f}s ({what})") from None

    def _common_event(self, event: Any) -> bool:
        """Handle events both roles treat alike; True if handled."""
        match event:
            case Cancelled(reason=reason):
                raise SyncError(reason)
            case RawFrameReceived():
                self.waiting_for_peer = False  # someone is here: from now on silence counts
                self.handshake.tell(event)
            case Progress(phase=phase, dataset=dataset, done=done, total=total):
                self.report({"event": "progress", "phase": phase, "dataset": dataset, "done": done, "total": total})
            case HandshakeFailed(message=message, kind=kind):
                error = {"auth": AuthError, "rejected": RejectedError}.get(kind, ProtocolError)
                raise error(message)
            case BadFrame(message=message):
                self._tell_peer_error(message)
                raise ProtocolError(message)
            case TransferFailed(message=message):
                lost = self._pending_connection_loss()
                if lost is not None:
                    # A send failed because the relay hung up: its reason says more.
                    raise RelayError(f"{lost} before the sync finished; only whole batches were stored, run it again to complete")
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
                raise RelayError(f"{reason} before the sync finished; only whole batches were stored, run it again to complete")
            case _:
                return False
        return True

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

    def stop(self) -> None:
        self.done = True
        self.run_.stop()


class ProviderSession(_Session):
    """`serve`: waits for one peer, answers its pull and stores its push."""

    role = "provider"

    def __init__(self, *, trust_list: TrustList, approver: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.trust_list = trust_list
        self.approver = approver

    def run(self) -> dict[str, Any]:
        """Run to the end; return the stats event. Raises a SyncError subclass on failure."""
        try:
            trust_gate = self.run_.start(TrustGate, trust_list=self.trust_list, approver=self.approver, listener=self.listener)
            self._start_common(trust_gate)
            self.handshake.tell(StartHandshake())
            return self._loop()
        finally:
            self.stop()

    def _loop(self) -> dict[str, Any]:
        connected = False
        pull_started = push_started = False
        sent: dict[str, dict[str, int]] = {}
        # Before a peer arrives, nobody is late: wait as long as the room lives.
        self.waiting_for_peer = True
        while True:
            event = self._next_event()
            if self._common_event(event):
                continue
            match event:
                case ApprovalRequired(peer=peer, warning=warning):
                    self.waiting_for_peer = False
                    self.waiting_for_human = True
                    self.report({"event": "approval_required", "hostname": peer.hostname, "user": peer.user,
                                 "os": peer.os, "fingerprint": peer.fingerprint, "warning": warning})
                case AutoAccepted(peer=peer):
                    self.report({"event": "auto_accepted", "hostname": peer.hostname, "fingerprint": peer.fingerprint})
                case HandshakeSucceeded():
                    self.waiting_for_peer = self.waiting_for_human = False
                    connected = True
                    self._peer_connected(event)
                case FrameReceived(frame=frame) if connected:
                    if isinstance(frame, Request):
                        batch_size = frame.body.batch_size
                        if frame.method == "GET" and frame.path == "/sync/pull" and not pull_started:
                            pull_started = True
                            self.pusher.tell(StartPush(batch_size=batch_size))
                        elif frame.method == "POST" and frame.path == "/sync/push" and not push_started:
                            push_started = True
                            self.unacknowledged = 0
                            self.puller.tell(StartPull(batch_size=batch_size))
                        else:
                            ask(self.relay, SendFrame(frame=Response(status=404, body="unknown path")), timeout=60)
                    elif push_started:
                        self.puller.tell(StreamFrame(frame=frame))
                    else:
                        self._tell_peer_error(f"unexpected {type(frame).__name__} frame")
                        raise ProtocolError(f"the peer sent an unexpected {type(frame).__name__} frame")
                case TransferFinished(phase="pull", stats=stats):
                    sent = stats
                    if not push_started:
                        self.unacknowledged = sum(v.get("sent", 0) for v in stats.values())
                case TransferFinished(phase="push", stats=stats):
                    ask(self.relay, SendFrame(frame=Response(status=200, body=_to_wire_stats(stats).to_body())), timeout=60)
                    result = {"event": "stats", "role": "provider", "received": _stats_dict(stats), "sent": _stats_dict(sent)}
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
                event = self.listener.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(event, ConnectionLost):
                return
        self._finish()


class ConsumerSession(_Session):
    """`join`: handshake, pull the provider's records, push ours, read its stats."""

    role = "consumer"

    def run(self) -> dict[str, Any]:
        try:
            self._start_common()
            self.handshake.tell(StartHandshake())
            return self._loop()
        finally:
            self.stop()

    def _loop(self) -> dict[str, Any]:
        phase = "handshake"
        received: dict[str, dict[str, int]] = {}
        # The provider's user may take a while to answer the approval prompt.
        self.waiting_for_human = True
        while True:
            event = self._next_event()
            if self._common_event(event):
                continue
            match event:
                case HandshakeSucceeded():
                    self.waiting_for_human = False
                    self._peer_connected(event)
                    phase = "pull"
                    self.puller.tell(StartPull(batch_size=self.config.batch_size, request=True))
                case FrameReceived(frame=frame) if phase == "pull":
                    if isinstance(frame, Response):
                        raise ProtocolError(f"the provider answered the pull with {frame.status}: {frame.body}")
                    self.puller.tell(StreamFrame(frame=frame))
                case TransferFinished(phase="pull", stats=stats):
                    received = stats
                    phase = "push"
                    self.pusher.tell(StartPush(batch_size=self.config.batch_size, request=True))
                case TransferFinished(phase="push", stats=stats):
                    phase = "await-stats"
                    self.unacknowledged = sum(v.get("sent", 0) for v in stats.values())
                case FrameReceived(frame=frame) if phase in ("push", "await-stats"):
                    if isinstance(frame, StreamError):
                        raise SyncError(f"the provider failed: {frame.message}")
                    if not isinstance(frame, Response):
                        raise ProtocolError(f"the provider sent an unexpected {type(frame).__name__} frame")
                    if frame.status != 200:
                        raise SyncError(f"the provider refused our records ({frame.status}: {frame.body})")
                    remote = frame.stats()
                    result = {
                        "event": "stats",
                        "role": "consumer",
                        "received": _stats_dict(received),
                        "sent": {
                            "memories": {"inserted": remote.memories.inserted, "skipped": remote.memories.skipped},
                            "facts": {"inserted": remote.facts.inserted, "skipped": remote.facts.skipped},
                        },
                    }
                    self.report(result)
                    self._finish()
                    return result
                case FrameReceived(frame=frame):
                    raise ProtocolError(f"unexpected {type(frame).__name__} frame during {phase}")
                case _:
                    logger.debug("consumer ignores {}", type(event).__name__)
