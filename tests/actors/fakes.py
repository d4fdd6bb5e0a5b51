"""Fake peers for the actor tests: they record what they are told and asked.

An actor under test is wired to these instead of its real neighbours
(magic-wormhole's test_machines.py pattern); a test then asserts the exact
sequence of messages the actor sent. Nothing here sleeps: waiting is a
`queue.Queue.get` with a timeout.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka

#: Seconds a test waits for a message that should come.
WAIT = 15.0
#: Seconds a test watches for a message that must NOT come (a bounded check
#: for absence, not synchronisation: nothing waits on it to proceed).
QUIET = 0.5


class Recorder:
    """Duck-types an ActorRef: records every message told or asked, in order.

    Asks are answered at once by `answer(message)` (None by default), or
    raise what it raises, so a fake relay can accept or refuse a send.
    Messages are recorded on the caller's thread, so after the actor under
    test has answered a `Ping`, everything it sent before is recorded.
    """

    def __init__(self, name: str = "fake", *, answer: Callable[[Any], Any] | None = None) -> None:
        self.name = name
        self.actor_class = type(name, (), {})  # imprint.actors.base.ask names it in errors
        self._answer = answer
        self._lock = threading.Lock()
        self._messages: list[Any] = []
        self._queue: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self._record(message)

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        self._record(message)
        return self._answer(message) if self._answer is not None else None

    def _record(self, message: Any) -> None:
        with self._lock:
            self._messages.append(message)
        self._queue.put(message)

    @property
    def messages(self) -> list[Any]:
        """Everything received so far, in order."""
        with self._lock:
            return list(self._messages)

    def of_type(self, *types: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, types)]

    def next(self, timeout: float = WAIT) -> Any:
        """The next message not yet taken with `next`/`wait_for`."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name} received nothing within {timeout:g}s (so far: {self.messages})") from None

    def wait_for(self, *types: type, timeout: float = WAIT) -> Any:
        """Take messages until one of `types` comes; return it."""
        while True:
            message = self.next(timeout)
            if isinstance(message, types):
                return message

    def assert_quiet(self, seconds: float = QUIET) -> None:
        """Nothing more arrives within `seconds`."""
        try:
            message = self._queue.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"{self.name} unexpectedly received {message!r}")


@contextlib.contextmanager
def stopping_new_actors() -> Iterator[None]:
    """Stop, at exit, every actor started inside the block.

    `ActorRegistry.stop_all()` for one test, except that actors that were
    already running (the session's shared Embedder) are left alone.
    """
    before = {id(ref) for ref in pykka.ActorRegistry.get_all()}
    try:
        yield
    finally:
        for ref in reversed(pykka.ActorRegistry.get_all()):
            if id(ref) not in before:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(timeout=30)


class ScriptedApprover:
    """A TrustGate approver: answers `answer` (or raises it), recording (peer, warning) of each call."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self._lock = threading.Lock()
        self._calls: list[tuple[Any, str]] = []

    def __call__(self, peer: Any, warning: str) -> Any:
        with self._lock:
            self._calls.append((peer, warning))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    @property
    def calls(self) -> list[tuple[Any, str]]:
        with self._lock:
            return list(self._calls)
