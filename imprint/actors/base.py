"""What every imprint actor shares: typed dispatch, a start-up error that
surfaces through `Ping` instead of a silently dead actor, one place to free
resources (`shut_down`, on a normal stop and after a crash alike), and a crash
reported at once to whoever runs the actor (`boss`) as :class:`StageFailed`,
instead of a silence that only an idle timeout would end."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pykka
from loguru import logger

from imprint.errors import ImprintError
from imprint.messages.session import Listener, StageFailed
from imprint.messages.store import Ping

#: Seconds an ask to a local actor may take before the caller gives up.
ASK_TIMEOUT = 120.0
#: Seconds one message may keep an actor busy before the log says so.
SLOW_MESSAGE = 0.25


class ImprintActor(pykka.ThreadingActor):
    """A ThreadingActor whose `on_receive` dispatches typed messages to `handle`.

    Subclasses do their slow set-up in `start_up` (on the actor's thread); an
    ImprintError there is kept and re-raised to whoever asks `Ping`, so the
    command can print it, rather than the actor dying before anyone asks.
    """

    #: A thread stuck past an interrupt (a model still loading) must not keep the
    #: process alive; every normal path stops its actors explicitly.
    use_daemon_thread = True

    def __init__(self, *, boss: Listener | None = None) -> None:
        super().__init__()
        self.boss = boss
        self._start_error: ImprintError | None = None

    def on_start(self) -> None:
        try:
            self.start_up()
        except ImprintError as exc:
            self._start_error = exc
        except Exception as exc:  # a bug or an unexpected library error
            logger.exception("{} failed to start", type(self).__name__)
            self._start_error = ImprintError(f"{type(self).__name__} failed to start: {exc}")

    def start_up(self) -> None:
        """Open resources. Runs on the actor's own thread."""

    def shut_down(self) -> None:
        """Free resources; runs after a normal stop and after a crash alike."""

    def on_stop(self) -> None:
        self.shut_down()

    def on_failure(self, exception_type: Any, exception_value: BaseException | None, traceback: Any) -> None:
        # An exception escaped a told message: the actor is dead. Say so now.
        stage = type(self).__name__
        logger.opt(exception=(exception_type, exception_value, traceback)).debug("{} crashed", stage)
        try:
            self.shut_down()
        finally:
            if self.boss is not None:
                self.boss.tell(StageFailed(stage=stage, message=str(exception_value) or exception_type.__name__))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            if self._start_error is not None:
                raise self._start_error
            return True
        if self._start_error is not None:
            raise self._start_error
        started = time.perf_counter()
        try:
            return self.handle(message)
        finally:
            took = time.perf_counter() - started
            if took > SLOW_MESSAGE:  # what keeps a service's other clients waiting: in the log
                logger.debug("{} took {:.0f} ms for {}", type(self).__name__, took * 1000, type(message).__name__)

    def handle(self, message: Any) -> Any:
        """Answer one typed message; unknown types are a programming error."""
        raise TypeError(f"{type(self).__name__} does not handle {type(message).__name__}")


def tell_later(ref: pykka.ActorRef[Any], message: Any, seconds: float) -> threading.Timer:
    """Tell `ref` `message` in `seconds` (nothing if it has stopped by then); cancel the timer
    returned to take it back."""
    def post() -> None:
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            pass

    timer = threading.Timer(seconds, post)
    timer.daemon = True
    timer.start()
    return timer


def ask(ref: pykka.ActorRef[Any], message: Any, *, timeout: float = ASK_TIMEOUT) -> Any:
    """Ask `ref` and wait at most `timeout` seconds, turning a dead or slow actor into an error."""
    try:
        return ref.ask(message, timeout=timeout)
    except pykka.ActorDeadError:
        raise ImprintError(f"internal error: {ref.actor_class.__name__} stopped unexpectedly") from None
    except pykka.Timeout:
        raise ImprintError(f"{ref.actor_class.__name__} did not answer within {timeout:.0f}s") from None


class QueueListener:
    """Where actors `tell` events for a thread that is not an actor (duck-types an ActorRef's tell)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self.queue.put(message)

    def get(self, *, timeout: float) -> Any:
        """The next event; queue.Empty after `timeout` seconds."""
        return self.queue.get(timeout=timeout)
