"""Sync sessions started from the dashboard.

Each session runs `run_serve` / `run_join` on its own thread and records the
events they report (the same JSON events `serve --json` prints), so the SSE
endpoint can stream them. A provider session's approver blocks that thread on
a :class:`threading.Event` until the page posts a decision, or rejects when
nobody answers in time.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any, Callable, Literal

from loguru import logger

from imprint.errors import ImprintError

Decision = Literal["accept", "trust", "reject"]
SessionKind = Literal["serve", "join"]


class SessionGone(Exception):
    """No such session, or it has finished: the decision has nobody to go to."""


class DecisionRefused(Exception):
    """The session is not waiting for a decision (already decided, or no peer yet)."""


class SyncSession:
    """One dashboard sync: its thread, its events, and (for serve) the approval.

    Args:
        kind: "serve" (provider) or "join" (consumer).
        approval_timeout: seconds the approver waits for a decision before rejecting.
    """

    def __init__(self, *, kind: SessionKind, approval_timeout: float) -> None:
        self.id = secrets.token_urlsafe(24)  # 192 bits: unguessable by another page
        self.kind = kind
        self.approval_timeout = approval_timeout
        self.events: list[dict[str, Any]] = []
        self.finished = False
        self.thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._awaiting = False
        self._decision: Decision | None = None
        self._decided = threading.Event()
        self._sync: Any = None

    # ---------------------------------------------------------------- events

    def emit(self, event: dict[str, Any]) -> None:
        """Record one event (called on the session's thread by run_serve/run_join)."""
        if event.get("event") == "room":
            event = {**event, "session_id": self.id}
        with self._cond:
            if event.get("event") == "approval_required":
                self._awaiting = True
            self.events.append(event)
            self._cond.notify_all()

    def wait_events(self, cursor: int, timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """Events from index `cursor` on, waiting up to `timeout` s for one; and whether the session is over."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) > cursor or self.finished, timeout=timeout)
            return self.events[cursor:], self.finished

    def _finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- approval

    def decide(self, decision: Decision) -> None:
        """Deliver the page's decision; raises SessionGone or DecisionRefused."""
        with self._cond:
            if self.finished:
                raise SessionGone("the session has finished")
            if self.kind != "serve" or not self._awaiting:
                raise DecisionRefused("this session is not waiting for a decision")
            if self._decision is not None:
                raise DecisionRefused(f"already decided: {self._decision}")
            self._decision = decision
        self._decided.set()

    def approver(self, peer: Any, warning: str) -> str:
        """The TrustGate's approver: blocks (on the gate's approver thread) until decided."""
        with self._cond:
            self._awaiting = True
        if not self._decided.wait(timeout=self.approval_timeout):
            with self._cond:
                if self._decision is None:
                    self._decision = "reject"
                    logger.info("no decision within {:g}s: rejecting {}", self.approval_timeout, peer.fingerprint)
        return self._decision or "reject"

    def attach(self, sync_session: Any) -> None:
        """Remember the running sync session (from run_serve/run_join) so it can be cancelled."""
        self._sync = sync_session

    def cancel(self) -> None:
        """The page went away: reject a pending approval, and end a session still
        waiting for a peer, so nothing lingers until the room expires."""
        with self._cond:
            if self._awaiting and self._decision is None:
                self._decision = "reject"
            waiting = not self._awaiting and not self.finished
        self._decided.set()
        if waiting and self._sync is not None:
            self._sync.cancel("stopped from the dashboard")

    # ---------------------------------------------------------------- running

    def start(self, run: Callable[[SyncSession], dict[str, Any]]) -> None:
        """Run `run(self)` on a daemon thread; its errors become an `error` event."""

        def target() -> None:
            try:
                run(self)
            except ImprintError as exc:
                self.emit({"event": "error", "message": str(exc)})
            except Exception as exc:  # a bug: say so on the page rather than hang it
                logger.exception("dashboard {} session failed", self.kind)
                self.emit({"event": "error", "message": f"internal error: {exc}"})
            finally:
                self._finish()

        self.thread = threading.Thread(target=target, name=f"ui-{self.kind}", daemon=True)
        self.thread.start()


class SessionRegistry:
    """The dashboard's sessions by id; finished ones are kept for their events."""

    def __init__(self, *, approval_timeout: float, keep: int = 50) -> None:
        self.approval_timeout = approval_timeout
        self.keep = keep
        self._sessions: dict[str, SyncSession] = {}
        self._lock = threading.Lock()

    def new(self, kind: SessionKind) -> SyncSession:
        session = SyncSession(kind=kind, approval_timeout=self.approval_timeout)
        with self._lock:
            finished = [sid for sid, s in self._sessions.items() if s.finished]
            for sid in finished[: max(0, len(self._sessions) - self.keep)]:
                del self._sessions[sid]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> SyncSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def all(self) -> list[SyncSession]:
        with self._lock:
            return list(self._sessions.values())

    def close(self, timeout: float = 5.0) -> None:
        """Reject pending approvals and give running sessions a moment to end."""
        sessions = self.all()
        for session in sessions:
            session.cancel()
        for session in sessions:
            if session.thread is not None:
                session.thread.join(timeout=timeout)
