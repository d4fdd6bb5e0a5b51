"""Handshake: carries out one side's handshake machine (:mod:`imprint.protocol.handshake`).

Raw frames come to it from the RelayConnection (in order, followed by a lost
connection if there is one) until the machine installs the session's codec;
it asks the TrustGate about the peer (provider), and tells the session how
the handshake went.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from imprint.actors.base import ImprintActor, ask
from imprint.errors import ImprintError
from imprint.messages.session import (
    Approve,
    ConnectionLost,
    Decision,
    HandshakeFailed,
    HandshakeSucceeded,
    HelloSent,
    Listener,
    PeerArrived,
    RawFrameReceived,
    SendFrame,
    SendRaw,
    StartHandshake,
    UseCodec,
)
from imprint.protocol import handshake as machine
from imprint.protocol.handshake import Command


class Handshake(ImprintActor):
    """Runs `handshake` (the machine) against the relay.

    Args:
        handshake: the machine of this side.
        relay: the RelayConnection.
        listener: the session.
        trust_gate: decides on peers (provider).
    """

    def __init__(self, *, handshake: machine.Handshake, relay: Any, listener: Listener, trust_gate: Any = None) -> None:
        super().__init__(boss=listener)
        self.machine = handshake
        self.relay = relay
        self.listener = listener
        self.trust_gate = trust_gate
        self._heard = False
        self._over = False

    def handle(self, message: Any) -> Any:
        match message:
            case StartHandshake():
                self._carry_out(self.machine.start())
            case RawFrameReceived(data=data):
                if not self._heard:
                    self._heard = True
                    self.listener.tell(PeerArrived())
                self._carry_out(self.machine.receive(data))
            case Decision(decision=decision):
                self._carry_out(self.machine.decide(decision))
            case ConnectionLost():
                self.listener.tell(message)  # after our verdict on every frame that came before it
            case _:
                return super().handle(message)
        return None

    def _carry_out(self, commands: list[Command]) -> None:
        for command in commands:
            if self._over:
                return
            try:
                self._do(command)
            except ImprintError as exc:  # the relay went away mid-handshake
                self._over = True
                self.listener.tell(HandshakeFailed(error=exc))

    def _do(self, command: Command) -> None:
        match command:
            case machine.SendRaw(data=data, last_word=last_word):
                self._send(SendRaw(data=data), last_word=last_word)
            case machine.SendFrame(frame=frame, last_word=last_word):
                self._send(SendFrame(frame=frame), last_word=last_word)
            case machine.InstallCodec(codec=codec):
                self.relay.tell(UseCodec(codec=codec))
            case machine.AskApproval(peer=peer):
                self.trust_gate.tell(Approve(peer=peer, reply_to=self.actor_ref))
            case machine.HelloSent(verification=verification):
                self.listener.tell(HelloSent(verification=verification))
            case machine.Succeeded(peer=peer, verification=verification):
                self.listener.tell(HandshakeSucceeded(peer=peer, verification=verification))
            case machine.Failed(error=error):
                self._over = True
                logger.debug("handshake failed: {}", error)
                self.listener.tell(HandshakeFailed(error=error))

    def _send(self, message: SendRaw | SendFrame, *, last_word: bool) -> None:
        try:
            ask(self.relay, message, timeout=60)
        except ImprintError as exc:
            if not last_word:
                raise
            # A refusal is best effort: the peer may have hung up first; our reason stands.
            logger.debug("could not send our last word: {}", exc)
