"""TrustGate: decides whether a peer whose PIN was right may sync.

A trusted fingerprint (with the same key) is accepted without asking; any
other peer goes to the approver — the terminal prompt
(:func:`imprint.commands.render.stdin_approver`), the dashboard, or a test
script. Approvers block (a human is typing), so each runs on its own thread
and the decision comes back to the gate as a message; the gate tells it to
whoever asked, and the session's listener hears `approval_required` /
`auto_accepted`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

import msgspec
import pykka
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ImprintError
from imprint.messages.session import (
    ApprovalRequired,
    Approve,
    AutoAccepted,
    Decision,
    PeerInfo,
)
from imprint.trust import TrustList


class Approver(Protocol):
    """Asks someone about a peer; returns "accept", "trust" or "reject". May block."""

    def __call__(self, peer: PeerInfo, warning: str) -> str: ...


def parse_answer(answer: str | None) -> str:
    """SPEC prompt: y/yes accept once, t/trust accept and remember, anything else (EOF too) rejects."""
    text = (answer or "").strip().lower()
    if text in ("y", "yes", "accept"):
        return "accept"
    if text in ("t", "trust"):
        return "trust"
    return "reject"


class _Decided(msgspec.Struct, frozen=True):
    peer: PeerInfo
    decision: str
    reply_to: Any


class TrustGate(ImprintActor):
    """Answers `Approve` by telling `reply_to` a `Decision`.

    Args:
        trust_list: the shared trust list.
        approver: who to ask about peers that are not trusted.
        listener: hears ApprovalRequired / AutoAccepted.
    """

    def __init__(self, *, trust_list: TrustList, approver: Approver | Callable[[PeerInfo, str], str], listener: Any) -> None:
        super().__init__(boss=listener)
        self.trust_list = trust_list
        self.approver = approver
        self.listener = listener
        self._threads: list[threading.Thread] = []

    def handle(self, message: Any) -> Any:
        match message:
            case Approve(peer=peer, reply_to=reply_to):
                self._approve(peer, reply_to)
            case _Decided(peer=peer, decision=decision, reply_to=reply_to):
                if decision == "trust":
                    try:
                        self.trust_list.add(fingerprint=peer.fingerprint, hostname=peer.hostname, public_key=peer.public_key)
                        logger.info("trusted device {} ({})", peer.fingerprint, peer.hostname)
                    except ImprintError as exc:
                        # The user said yes: accept this session even if it cannot be remembered.
                        logger.error("{}; accepting {} for this session only", exc, peer.fingerprint)
                        decision = "accept"
                reply_to.tell(Decision(decision=decision))
            case _:
                return super().handle(message)
        return None

    def on_stop(self) -> None:
        # An approver that answered is done; one still asking (the peer left while the
        # prompt waits for a line) cannot be interrupted: its answer will go nowhere.
        for thread in self._threads:
            thread.join(timeout=0.05)
        waiting = sum(t.is_alive() for t in self._threads)
        if waiting:
            logger.debug("{} approval prompt(s) still wait for an answer that will be ignored", waiting)
        super().on_stop()

    def _approve(self, peer: PeerInfo, reply_to: Any) -> None:
        try:
            status = self.trust_list.status(peer.fingerprint, peer.public_key)
            unreadable = ""
        except ImprintError as exc:
            # Never auto-accept on a list we cannot read, and never leave the peer hanging: ask.
            status, unreadable = "unknown", str(exc)
        if status == "trusted":
            self.listener.tell(AutoAccepted(peer=peer))
            reply_to.tell(Decision(decision="accept", auto=True))
            return
        warning = unreadable
        if status == "key-mismatch":
            warning = (
                f"fingerprint {peer.fingerprint} is on your trust list with a DIFFERENT key; "
                "this may be another device pretending to be it"
            )
        self.listener.tell(ApprovalRequired(peer=peer, warning=warning))
        thread = threading.Thread(target=self._ask, args=(peer, warning, reply_to), name="trust-approver", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _ask(self, peer: PeerInfo, warning: str, reply_to: Any) -> None:
        try:
            decision = parse_answer(self.approver(peer, warning))
        except Exception:
            logger.exception("approver failed; rejecting")
            decision = "reject"
        try:
            self.actor_ref.tell(_Decided(peer=peer, decision=decision, reply_to=reply_to))
        except pykka.ActorDeadError:
            pass
