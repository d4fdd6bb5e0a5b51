"""SyncSession alone: events, decisions, the approver's wait and its timeout."""

from __future__ import annotations

import threading

import msgspec
import pytest

from imprint.errors import SyncError
from imprint.messages.events import ApprovalRequired, ConfirmRequired, Error, Room
from imprint.messages.session import PeerInfo
from imprint.ui.sessions import (
    DecisionRefused,
    SessionGone,
    SessionRegistry,
    SyncSession,
)

PEER = PeerInfo(hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d")
ROOM = Room(target="h/r", pin="ABCD1234", room="r", relay="ws://h", fingerprint="0a1b2c3d", hostname="laptop",
            mode="encrypted")
ASKED = ApprovalRequired(hostname=PEER.hostname, user=PEER.user, os=PEER.os, fingerprint=PEER.fingerprint)


def test_room_event_carries_the_session_id() -> None:
    session = SyncSession(kind="serve", approval_timeout=5)
    session.emit(ROOM)
    events, finished = session.wait_events(0, timeout=0)
    assert events == [msgspec.structs.replace(ROOM, session_id=session.id)] and not finished
    assert len(session.id) >= 32 and session.id != SyncSession(kind="serve", approval_timeout=5).id


def test_decision_reaches_the_blocked_approver_once() -> None:
    session = SyncSession(kind="serve", approval_timeout=30)
    with pytest.raises(DecisionRefused):
        session.decide("accept")  # no peer yet
    answer: list[str] = []
    session.emit(ASKED)
    thread = threading.Thread(target=lambda: answer.append(session.approver(PEER, "")))
    thread.start()
    session.decide("trust")
    thread.join(timeout=10)
    assert answer == ["trust"]
    with pytest.raises(DecisionRefused):
        session.decide("reject")


def test_approver_rejects_when_nobody_decides_in_time() -> None:
    session = SyncSession(kind="serve", approval_timeout=0.05)
    assert session.approver(PEER, "") == "reject"
    with pytest.raises(DecisionRefused):
        session.decide("accept")


def test_cancel_rejects_a_pending_approval() -> None:
    session = SyncSession(kind="serve", approval_timeout=30)
    answer: list[str] = []
    session.emit(ASKED)
    thread = threading.Thread(target=lambda: answer.append(session.approver(PEER, "")))
    thread.start()
    session.cancel()
    thread.join(timeout=10)
    assert answer == ["reject"]


def test_a_join_is_joined_or_cancelled_and_finished_sessions_are_gone() -> None:
    join = SyncSession(kind="join", approval_timeout=5)
    with pytest.raises(DecisionRefused):
        join.decide("accept")  # nothing to decide yet
    join.emit(ConfirmRequired(mode="encrypted", fingerprint=PEER.fingerprint))
    with pytest.raises(DecisionRefused, match="joined"):
        join.decide("trust")
    join.decide("accept")
    assert join.approver(PEER, "code") == "accept"
    registry = SessionRegistry(approval_timeout=5)
    session = registry.new("serve")

    def fail(_: SyncSession) -> dict:
        raise SyncError("wrong PIN")

    session.start(fail)
    session.thread.join(timeout=10)
    events, finished = session.wait_events(0, timeout=0)
    assert events == [Error(message="wrong PIN")] and finished
    with pytest.raises(SessionGone):
        session.decide("accept")
    assert registry.get(session.id) is session and registry.get("other") is None


class FakeSync:
    """What run_serve/run_join attach: records cancels."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel(self, reason: str) -> None:
        self.cancelled.append(reason)


def test_the_last_watcher_leaving_cancels_the_session_at_any_stage() -> None:
    session = SyncSession(kind="join", approval_timeout=30)
    sync = FakeSync()
    session.attach(sync)
    session.watch()
    session.watch()
    session.unwatch()
    assert sync.cancelled == []  # one page still watches
    session.unwatch()
    assert len(sync.cancelled) == 1 and "closed" in sync.cancelled[0]


def test_a_cancel_before_the_sync_is_attached_reaches_it_when_it_is() -> None:
    session = SyncSession(kind="serve", approval_timeout=30)
    session.cancel("stop")
    sync = FakeSync()
    session.attach(sync)
    assert sync.cancelled == ["stop"]


def test_a_session_nobody_watches_cancels_itself_after_its_grace() -> None:
    session = SyncSession(kind="join", approval_timeout=30, watch_grace=0.05)
    sync = FakeSync()
    done = threading.Event()

    def run(s: SyncSession) -> dict:
        s.attach(sync)
        done.wait(timeout=10)  # the sync "runs" until cancelled
        return {}

    original = sync.cancel
    sync.cancel = lambda reason: (original(reason), done.set())  # type: ignore[method-assign]
    session.start(run)
    session.thread.join(timeout=10)
    assert session.finished and sync.cancelled and "no dashboard page watched" in sync.cancelled[0]


def test_a_big_forget_waits_for_the_pages_answer_once_and_cancel_or_silence_keeps_everything() -> None:
    session = SyncSession(kind="join", approval_timeout=30)
    with pytest.raises(DecisionRefused, match="not asking"):
        session.decide_forget(True)  # nothing asked yet
    answer: list[bool] = []
    thread = threading.Thread(target=lambda: answer.append(session.confirm_forget(150, 150, PEER)))
    thread.start()
    while not session._forget_asked:  # the question is up once confirm_forget holds the flag
        threading.Event().wait(0.01)
    session.decide_forget(True)
    thread.join(timeout=10)
    assert answer == [True]
    with pytest.raises(DecisionRefused, match="already"):
        session.decide_forget(False)

    quiet = SyncSession(kind="serve", approval_timeout=0.05)
    assert quiet.confirm_forget(150, 150, PEER) is False

    cancelled = SyncSession(kind="serve", approval_timeout=30)
    kept: list[bool] = []
    thread = threading.Thread(target=lambda: kept.append(cancelled.confirm_forget(150, 150, PEER)))
    thread.start()
    cancelled.cancel()
    thread.join(timeout=10)
    assert kept == [False]
