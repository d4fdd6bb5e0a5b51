"""The boss of one sync session: it starts the stages, feeds what they report
to the role's flow (:mod:`imprint.protocol.flows`), carries out what the flow
says, and stops everything.

    RelayConnection ─raw frames─▶ Handshake ─▶ ┐
                    ─frames──────────────────▶ │  session ─▶ flow.handle(event) ─▶ commands
    Puller, Storer, Pusher, TrustGate ───────▶ ┘              (send, receive, push, report, finish)

Stages tell events up to a queue; the session takes them one at a time on
the calling thread, so routing is sequential and no stage ever asks upward.
Every wait has a deadline that the flow's state sets: a silent peer ends the
session with PeerTimeoutError. A stage that crashes ends it at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from imprint.actors.base import QueueListener, ask
from imprint.actors.handshake import Handshake
from imprint.actors.inventory import Inventory
from imprint.actors.puller import Puller
from imprint.actors.pusher import Pusher
from imprint.actors.relay_connection import MAX_INCOMING_BYTES, Hangup, RelayConnection
from imprint.actors.trust_gate import Approver, TrustGate
from imprint.errors import (
    INTERRUPTED,
    PeerTimeoutError,
    ProtocolError,
    RelayError,
    SyncError,
)
from imprint.errors import StageFailed as StageFailedError
from imprint.identity import DeviceIdentity, HostInfo
from imprint.local import START_TIMEOUT, LocalActors
from imprint.messages import events
from imprint.messages.session import (
    BadFrame,
    CloseConnection,
    ConnectionLost,
    DeliverRawTo,
    ForgetDecision,
    HandshakeFailed,
    JoinDecision,
    PeerInfo,
    SendFrame,
    StageFailed,
    StartHandshake,
    StartPull,
    StoreFailed,
    StreamFrame,
    TransferFailed,
    Unwatch,
    Watch,
)
from imprint.messages.store import (
    DescribeCanaries,
    SummarizeVersions,
)
from imprint.messages.wire import MAX_PLAINTEXT_FRAME_BYTES, Mode, Role, StreamError
from imprint.protocol import flows
from imprint.protocol.forgets import ForgetLimit
from imprint.protocol.handshake import Handshake as HandshakeMachine
from imprint.runtime import ActorGroup
from imprint.spool import DEFAULT_MAX_BYTES
from imprint.trust import TrustList

#: Slowest rate (records/s) at which we assume a peer stores what we sent,
#: when it cannot tell us (the plaintext mode sends no acks).
MIN_PEER_STORE_RATE = 5.0
#: Seconds a provider lets the consumer read its STATS and hang up first.
LINGER = 10.0

Reporter = Callable[[events.Event], None]
Confirm = Callable[[PeerInfo | None, str], str]
#: Asked (records to forget, records held, the peer); True forgets them.
ConfirmForget = Callable[[int, int, PeerInfo | None], bool]


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
        vectors: exchange vectors with a same-model peer instead of re-embedding what arrives.
    """

    url: str
    room: str
    pin: str
    spool_path: Path
    mode: Mode = "encrypted"
    batch_size: int = 500
    idle_timeout: float = 120.0
    approval_timeout: float = 600.0
    peer_wait_timeout: float = 3600.0
    connect_attempts: int = 5
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    #: Send our vectors to, and take them from, a peer running the same model (protocol 2).
    vectors: bool = True
    #: Forgetting more than this asks first (`--max-forget`; ForgetLimit(None, None) never asks: `--yes`).
    forget_limit: ForgetLimit = ForgetLimit()

    @property
    def relay_label(self) -> str:
        return self.url.split("?", 1)[0].rsplit("/", 1)[0]


class SyncSession:
    """One sync, for either role: `run()` it, `cancel()` it from another thread.

    Args:
        role: provider (serve) or consumer (join).
        config: where and how.
        local: the running local actors (stores, Storer, embedder).
        identity, host: who this device is.
        report: where the user's events go.
        trust_list, approver: who may sync (provider).
        confirm: asked before anything moves (consumer, the dashboard).
        confirm_forget: asked `(count, total, peer)` when the peer's tombstones would forget
            more than `config.forget_limit`; True forgets them. None: they are kept (no one to ask).
    """

    def __init__(self, *, role: Role, config: SessionConfig, local: LocalActors,
                 identity: DeviceIdentity, host: HostInfo, report: Reporter, trust_list: TrustList | None = None,
                 approver: Approver | None = None, confirm: Confirm | None = None,
                 confirm_forget: ConfirmForget | None = None) -> None:
        self.role = role
        self.config = config
        self.local = local
        self.identity = identity
        self.host = host
        self.report = report
        self.trust_list = trust_list
        self.approver = approver
        self.confirm = confirm
        self.confirm_forget = confirm_forget
        self.model = _model_of(local) if config.vectors else ""
        #: Our model's canary vectors (cached per fingerprint; the first sync loads the model).
        self.canaries = (ask(local["embedder"], DescribeCanaries(), timeout=START_TIMEOUT).vectors
                         if self.model else b"")
        common = {"mode": config.mode, "batch_size": config.batch_size, "model": self.model,
                  "canaries": self.canaries, "forget_limit": config.forget_limit}
        self.flow: flows.Flow = (flows.ProviderFlow(**common) if role == "provider"
                                 else flows.ConsumerFlow(confirm=confirm is not None, **common))
        self.listener = QueueListener()
        self.stages = ActorGroup(f"sync {role}")
        self.relay: Any = None
        self.done = False
        self._hangup = Hangup()
        self._watched: list[str] = []

    @property
    def storer(self) -> Any:
        return self.local["storer"]

    # ---------------------------------------------------------------- running

    def connect(self) -> None:
        """Connect to the relay (with retries); RelayError if it does not answer."""
        if self.relay is None:
            c = self.config
            # The plaintext mode may meet Imprint's own clients, whose frames reach 10-80 MB.
            limit = MAX_PLAINTEXT_FRAME_BYTES + 1024 if c.mode == "plaintext" else MAX_INCOMING_BYTES
            self.relay = self.stages.start("relay", RelayConnection, url=c.url, listener=self.listener,
                                           attempts=c.connect_attempts, max_frame_bytes=limit, hangup=self._hangup)

    def run(self) -> events.Stats:
        """Run to the end; return the stats. Raises a SyncError subclass on failure."""
        interrupted = False
        try:
            self._start_stages()
            return self._loop()
        except BaseException as exc:
            interrupted = not isinstance(exc, Exception)  # Ctrl-C, SIGTERM
            raise
        finally:
            self.stop(interrupted=interrupted)

    def _start_stages(self) -> None:
        c, listener = self.config, self.listener
        trust_gate = None
        if self.role == "provider":
            trust_gate = self.stages.start("trust_gate", TrustGate, trust_list=self.trust_list,
                                           approver=self.approver, listener=listener)
        else:
            self.report(events.Waiting(for_="relay", message=f"connecting to the relay {c.relay_label}…"))
        self.connect()
        machine = HandshakeMachine(role=self.role, mode=c.mode, pin=c.pin, room=c.room, identity=self.identity,
                                   host=self.host, model=self.model, canaries=self.canaries,
                                   items=self._item_count() if c.mode == "encrypted" else 0)
        handshake = self.stages.start("handshake", Handshake, handshake=machine, relay=self.relay,
                                      listener=listener, trust_gate=trust_gate)
        self.stages.start("puller", Puller, relay=self.relay, listener=listener, storer=self.storer,
                          spool_path=c.spool_path, spool_max_bytes=c.spool_max_bytes,
                          memory_store=self.local["memory_store"], fact_store=self.local["fact_store"])
        self.stages.start("pusher", Pusher, relay=self.relay, listener=listener,
                          memory_store=self.local["memory_store"], fact_store=self.local["fact_store"])
        self.stages.start("inventory", Inventory, memory_store=self.local["memory_store"],
                          fact_store=self.local["fact_store"], listener=listener)
        # Start the machine, then let frames flow to it: a peer's first frame (it may be
        # waiting already) is in the handshake's mailbox only after StartHandshake.
        handshake.tell(StartHandshake())
        self.relay.tell(DeliverRawTo(target=handshake))
        if self.role == "consumer" and c.mode == "encrypted":
            self.flow.wait = "room"
            self.report(events.Waiting(for_="room", message=f"waiting for room {c.room} on {c.relay_label} to be "
                                                            f"served… (gives up after {c.idle_timeout:.0f} s; Ctrl-C to stop)"))

    def _item_count(self) -> int:
        """How many reconciliation items our stores hold (kept as running sums: no scan)."""
        return sum(ask(self.local[store], SummarizeVersions(), timeout=START_TIMEOUT).count
                   for store in ("memory_store", "fact_store"))

    def _loop(self) -> events.Stats:
        while True:
            event = self._next_event()
            self._fail_on(event)
            for command in self.flow.handle(event):
                result = self._carry_out(command)
                if result is not None:
                    return result

    def _next_event(self) -> Any:
        c, flow = self.config, self.flow
        where = f"room {c.room} on {c.relay_label}"
        if flow.wait == "peer":
            timeout, what = c.peer_wait_timeout, "no peer joined; the room has expired"
        elif flow.wait == "room":
            timeout = c.idle_timeout
            what = f"nobody served {where}: check the room (type what serve printed) or run serve again"
        elif flow.wait == "approval":
            timeout = c.approval_timeout
            what = "the other machine did not answer: its user did not approve this device"
        else:
            # What we sent and the peer did not acknowledge may still sit in socket and
            # relay buffers while it stores it: allow for that.
            timeout = c.idle_timeout + flow.unacknowledged / MIN_PEER_STORE_RATE
            what = "the peer sent nothing"
        try:
            return self.listener.get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeoutError(f"timed out after {timeout:.0f}s ({what})") from None

    def _fail_on(self, event: Any) -> None:
        """Events that end the session whatever the flow's state."""
        match event:
            case Cancelled(reason=reason):
                if self.flow.connected:
                    self._tell_peer_error(reason)
                raise SyncError(reason)
            case HandshakeFailed(error=error):
                raise error
            case BadFrame(message=message):
                self._tell_peer_error(message)
                raise ProtocolError(message)
            case StageFailed(stage=stage, message=message):
                raise StageFailedError(f"internal error in the {stage} stage: {message}; what was received is kept")
            case StoreFailed(message=message):
                self._tell_peer_error("the other machine could not store the records")
                raise SyncError(f"storing received records failed: {message}; they are kept and stored by the next "
                                "imprint command")
            case TransferFailed(message=message):
                self._tell_peer_error(message)
                raise SyncError(message)
            case ConnectionLost(reason=reason) if not self.done and not self.flow.holding:
                raise RelayError(f"{reason} before the sync finished; what was received is kept, run it again to "
                                 "complete")

    def _carry_out(self, command: flows.Command) -> events.Stats | None:
        match command:
            case flows.Report(event=event):
                self.report(event)
            case flows.Send(frame=frame, quiet=True):
                self.relay.tell(SendFrame(frame=frame, quiet=True))
            case flows.Send(frame=frame):
                ask(self.relay, SendFrame(frame=frame), timeout=60)
            case flows.Receive(stream=stream, batch_size=batch_size, request=request, count_known=count_known):
                self._watched.append(stream)
                self.storer.tell(Watch(stream=stream, listener=self.listener))
                peer = self.flow.peer.fingerprint if self.flow.peer is not None else ""
                self.stages["puller"].tell(StartPull(stream=stream, batch_size=batch_size, request=request, peer=peer,
                                                     count_known=count_known))
            case flows.ToPuller(frame=frame):
                self.stages["puller"].tell(StreamFrame(frame=frame))
            case flows.Push(start=start):
                self.stages["pusher"].tell(start)
            case flows.AskToJoin(peer=peer, verification=verification):
                self._ask_to_join(peer, verification)
            case flows.AskToForget(count=count, total=total, peer=peer):
                self._ask_to_forget(count, total, peer)
            case flows.LoadSummary() | flows.LoadItems() | flows.ApplyTombstones():
                self.stages["inventory"].tell(command)  # long store work: a stage's, not this loop's
            case flows.Fail(error=error):
                raise error
            case flows.Finish(stats=stats, linger=linger):
                self.done = True
                if linger:
                    self._linger()
                self._close()
                return stats
        return None

    def _ask_to_join(self, peer: PeerInfo | None, verification: str) -> None:
        """The user's answer comes on a thread: the loop keeps running (and can be cancelled)."""

        def ask_user() -> None:
            try:
                decision = self.confirm(peer, verification)
            except Exception:
                logger.exception("join confirmation failed; not joining")
                decision = "reject"
            self.listener.tell(JoinDecision(decision="accept" if decision == "accept" else "reject"))

        threading.Thread(target=ask_user, name="join-confirm", daemon=True).start()

    def _ask_to_forget(self, count: int, total: int, peer: PeerInfo | None) -> None:
        """As _ask_to_join: the answer comes on a thread; no one to ask keeps everything."""

        def ask_user() -> None:
            accept = False
            if self.confirm_forget is not None:
                try:
                    accept = bool(self.confirm_forget(count, total, peer))
                except Exception:
                    logger.exception("asking about a big forget failed; keeping everything")
            self.listener.tell(ForgetDecision(accept=accept))

        threading.Thread(target=ask_user, name="forget-confirm", daemon=True).start()

    def _linger(self) -> None:
        """Let the consumer read our stats and hang up first (bounded)."""
        deadline = time.monotonic() + LINGER
        while time.monotonic() < deadline:
            try:
                if isinstance(self.listener.get(timeout=max(0.0, deadline - time.monotonic())), ConnectionLost):
                    return
            except queue.Empty:
                return

    # ---------------------------------------------------------------- ending

    def cancel(self, reason: str = "cancelled") -> None:
        """End the session from another thread (safe at any time)."""
        self.listener.tell(Cancelled(reason=reason))

    def _tell_peer_error(self, message: str) -> None:
        try:
            self.relay.ask(SendFrame(frame=StreamError(message=message[:500])), timeout=5)
        except Exception:
            logger.debug("could not tell the peer about the error")

    def _close(self) -> None:
        try:
            self.relay.tell(CloseConnection(reason="sync complete"))
        except pykka.ActorDeadError:
            pass

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop every stage. After an interrupt, tell the peer first (briefly: a send
        blocked behind a big frame is not waited for), then hang up at once."""
        if interrupted and not self.done and self.relay is not None and self.flow.connected:
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
        self.stages.stop(interrupted=interrupted)


def _model_of(local: Any) -> str:
    """The fingerprint of the model our store's vectors come from ("" when unknown)."""
    model = getattr(local, "model", None)
    return getattr(model, "fingerprint", "") or ""
