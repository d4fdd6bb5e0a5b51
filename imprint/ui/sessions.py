"""Sync sessions started from the dashboard.

A POST starts a session (`run_serve` / `run_join` on its own thread); it
records the events they report (the same JSON events `serve --json` prints)
and pages *watch* it through an SSE stream. A session asks its page before
anything moves: a serve asks whether to let the peer in (accept once, trust,
reject), a join shows the provider (with the verification code) and waits
for the user's **Join** (accept) or **Cancel** (reject). Either wait ends in
a rejection when nobody answers in time.

A session ends as soon as nobody watches it: when its last page goes away,
or when no page came to watch it shortly after it was started. A link that
a stranger sends therefore cannot start anything (starting is a same-origin
POST), and a session a page started cannot outlive the page.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable, Literal

import msgspec
from loguru import logger

from imprint.errors import ImprintError
from imprint.messages.events import (
    ApprovalRequired,
    ConfirmRequired,
    Error,
    Event,
    Room,
    Stats,
)

Decision = Literal["accept", "trust", "reject"]
SessionKind = Literal["serve", "join"]
#: Seconds a new session waits for its first watcher before it cancels itself.
WATCH_GRACE = 15.0


class SessionGone(Exception):
    """No such session, or it has finished: the decision has nobody to go to."""


class DecisionRefused(Exception):
    """The session is not waiting for a decision (already decided, no peer yet, or a kind it does not take)."""


class SyncSession:
    """One dashboard sync: its thread, its events, the decision it waits for, its watchers.

    Args:
        kind: "serve" (provider) or "join" (consumer).
        approval_timeout: seconds a decision may take before the session rejects.
        watch_grace: seconds the session waits for its first watcher.
    """

    def __init__(self, *, kind: SessionKind, approval_timeout: float, watch_grace: float = WATCH_GRACE) -> None:
        self.id = secrets.token_urlsafe(24)  # 192 bits: unguessable by another page
        self.kind = kind
        self.approval_timeout = approval_timeout
        self.watch_grace = watch_grace
        self.events: list[Event] = []
        self.finished = False
        self.thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._awaiting = False
        self._decision: Decision | None = None
        self._decided = threading.Event()
        #: A forget over the limit (`forget_confirm_required`): the page's answer, once.
        self._forget_asked = False
        self._forget: bool | None = None
        self._forget_decided = threading.Event()
        self._sync: Any = None
        self._cancelled = ""
        self._watchers = 0
        self._ever_watched = False
        self._grace_timer: threading.Timer | None = None

    # ---------------------------------------------------------------- events

    def emit(self, event: Event) -> None:
        """Record one event (called on the session's thread by run_serve/run_join)."""
        if isinstance(event, Room):
            event = msgspec.structs.replace(event, session_id=self.id)
        with self._cond:
            if isinstance(event, (ApprovalRequired, ConfirmRequired)):
                self._awaiting = True
            self.events.append(event)
            self._cond.notify_all()

    def wait_events(self, cursor: int, timeout: float) -> tuple[list[Event], bool]:
        """Events from index `cursor` on, waiting up to `timeout` s for one; and whether the session is over."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) > cursor or self.finished, timeout=timeout)
            return self.events[cursor:], self.finished

    def _finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()
        if self._grace_timer is not None:
            self._grace_timer.cancel()

    # ---------------------------------------------------------------- watchers

    def watch(self) -> None:
        """A page started watching (its SSE stream opened)."""
        with self._cond:
            self._watchers += 1
            self._ever_watched = True

    def unwatch(self) -> None:
        """A page stopped watching; the last one leaving ends the session."""
        with self._cond:
            self._watchers -= 1
            last = self._watchers <= 0
        if last and not self.finished:
            self.cancel("stopped: the dashboard page that watched this sync was closed")

    def _no_watcher_came(self) -> None:
        with self._cond:
            orphan = not self._ever_watched
        if orphan and not self.finished:
            logger.info("dashboard {} session {}: nobody watched it; cancelling", self.kind, self.id[:8])
            self.cancel("stopped: no dashboard page watched this sync")

    # ---------------------------------------------------------------- decisions

    def decide(self, decision: Decision) -> None:
        """Deliver the page's decision; raises SessionGone or DecisionRefused."""
        with self._cond:
            if self.finished:
                raise SessionGone("the session has finished")
            if not self._awaiting:
                raise DecisionRefused("this session is not waiting for a decision")
            if self._decision is not None:
                raise DecisionRefused(f"already decided: {self._decision}")
            if self.kind == "join" and decision == "trust":
                raise DecisionRefused("a join is joined (accept) or cancelled (reject)")
            self._decision = decision
        self._decided.set()

    def decide_forget(self, accept: bool) -> None:
        """Deliver the page's answer to `forget_confirm_required`; raises SessionGone or DecisionRefused."""
        with self._cond:
            if self.finished:
                raise SessionGone("the session has finished")
            if not self._forget_asked:
                raise DecisionRefused("this session is not asking about forgetting")
            if self._forget is not None:
                raise DecisionRefused("already decided")
            self._forget = accept
        self._forget_decided.set()

    def confirm_forget(self, count: int, total: int, peer: Any) -> bool:
        """The session's question about a big forget: blocks until the page answers; no answer keeps everything."""
        with self._cond:
            self._forget_asked = True
        if not self._forget_decided.wait(timeout=self.approval_timeout):
            with self._cond:
                if self._forget is None:
                    self._forget = False
                    logger.info("no answer about forgetting within {:g}s: keeping everything", self.approval_timeout)
        return bool(self._forget)

    def approver(self, peer: Any, warning: str) -> str:
        """The serve's TrustGate approver, or the join's confirmation: blocks until decided."""
        with self._cond:
            self._awaiting = True
        if not self._decided.wait(timeout=self.approval_timeout):
            with self._cond:
                if self._decision is None:
                    self._decision = "reject"
                    logger.info("no decision within {:g}s: rejecting", self.approval_timeout)
        return self._decision or "reject"

    def attach(self, sync_session: Any) -> None:
        """Remember the running sync session (from run_serve/run_join) so it can be cancelled."""
        with self._cond:
            self._sync = sync_session
            cancelled = self._cancelled
        if cancelled:
            sync_session.cancel(cancelled)

    def cancel(self, reason: str = "stopped from the dashboard") -> None:
        """End the session at whatever stage it is: a pending decision becomes a
        rejection, and the sync session (if running) stops and tells its peer."""
        with self._cond:
            if self._awaiting and self._decision is None:
                self._decision = "reject"
            if self._forget_asked and self._forget is None:
                self._forget = False
            self._cancelled = self._cancelled or reason
            sync = self._sync
        self._decided.set()
        self._forget_decided.set()
        if sync is not None and not self.finished:
            sync.cancel(reason)

    # ---------------------------------------------------------------- running

    def start(self, run: Callable[[SyncSession], Stats]) -> None:
        """Run `run(self)` on a daemon thread; its errors become an `error` event."""

        def target() -> None:
            try:
                run(self)
            except ImprintError as exc:
                self.emit(Error(message=str(exc)))
            except Exception as exc:  # a bug: say so on the page rather than hang it
                logger.exception("dashboard {} session failed", self.kind)
                self.emit(Error(message=f"internal error: {exc}"))
            finally:
                self._finish()

        self._grace_timer = threading.Timer(self.watch_grace, self._no_watcher_came)
        self._grace_timer.daemon = True
        self._grace_timer.start()
        self.thread = threading.Thread(target=target, name=f"ui-{self.kind}", daemon=True)
        self.thread.start()


class SessionRegistry:
    """The dashboard's sessions by id; finished ones are kept for their events."""

    def __init__(self, *, approval_timeout: float, keep: int = 50, watch_grace: float = WATCH_GRACE) -> None:
        self.approval_timeout = approval_timeout
        self.keep = keep
        self.watch_grace = watch_grace
        self._sessions: dict[str, SyncSession] = {}
        self._lock = threading.Lock()

    def new(self, kind: SessionKind) -> SyncSession:
        session = SyncSession(kind=kind, approval_timeout=self.approval_timeout, watch_grace=self.watch_grace)
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

    def running(self) -> list[SyncSession]:
        return [s for s in self.all() if not s.finished]

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every session and give them a moment to end."""
        sessions = self.all()
        for session in sessions:
            session.cancel("the dashboard is shutting down")
        deadline = time.monotonic() + timeout
        for session in sessions:
            if session.thread is not None:
                session.thread.join(timeout=max(0.1, deadline - time.monotonic()))
