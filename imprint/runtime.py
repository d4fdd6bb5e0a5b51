"""One lifecycle for every group of actors: a command's local stores, a sync
session's stages, the dashboard's actors, test fixtures.

Like Mopidy's `_app`: start in dependency order, confirm each `on_start`
worked with a `Ping` (its error, if any, is raised to whoever started it), stop
in reverse in a `finally`, within a deadline; whatever is still running at the
end of the command (actor or thread) is a bug and is logged as one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
from loguru import logger

from imprint.actors.base import ask
from imprint.messages.store import Ping

#: Seconds an actor may take to start (a model load, torch import included).
START_TIMEOUT = 180.0
#: Seconds a whole group may take to stop after Ctrl-C or SIGTERM.
INTERRUPTED_STOP = 2.0
#: Seconds one actor may take to stop otherwise (it finishes the message in hand).
STOP_TIMEOUT = 60.0
#: Threads imprint starts; one still alive when a command ends is a bug.
OUR_THREADS = ("relay-reader", "join-confirm", "imprint-relay", "ui-")


class ActorGroup:
    """Actors started together and stopped together, in reverse.

    Usage::

        with ActorGroup("sync") as group:
            relay = group.start("relay", RelayConnection, url=...)
            ...

    Args:
        name: what the group is, for logs.
        start_timeout: seconds each actor may take to start.
    """

    def __init__(self, name: str, *, start_timeout: float = START_TIMEOUT) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self._refs: dict[str, pykka.ActorRef[Any]] = {}

    def start(self, name: str, actor_class: type[pykka.Actor], **kwargs: Any) -> pykka.ActorRef[Any]:
        """Start one actor and wait until its `on_start` is done; its start-up error is raised here."""
        ref = actor_class.start(**kwargs)
        self._refs[name] = ref
        ask(ref, Ping(), timeout=self.start_timeout)
        return ref

    def __getitem__(self, name: str) -> pykka.ActorRef[Any]:
        return self._refs[name]

    def __contains__(self, name: str) -> bool:
        return name in self._refs

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        return self._refs.get(name)

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop every actor, last started first. After Ctrl-C or SIGTERM the whole group
        gets INTERRUPTED_STOP seconds: an actor still busy then (a model still loading) is
        left to die with the process, its thread being a daemon."""
        deadline = time.monotonic() + (INTERRUPTED_STOP if interrupted else STOP_TIMEOUT * max(1, len(self._refs)))
        for name in reversed(list(self._refs)):
            try:
                self._refs[name].stop(timeout=max(0.1, min(STOP_TIMEOUT, deadline - time.monotonic())))
            except pykka.Timeout:
                (logger.debug if interrupted else logger.error)("{}: {} did not stop in time", self.name, name)
            except pykka.ActorDeadError:
                pass
        self._refs.clear()

    def __enter__(self) -> ActorGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


def check_leftovers(*, interrupted: bool = False) -> None:
    """At the end of a command, stop any actor still running and name any of our threads
    still alive: both are bugs (unless the command was interrupted, when a model may still
    be loading and a prompt may still wait for a line)."""
    report = logger.debug if interrupted else logger.error
    leftovers = pykka.ActorRegistry.get_all()
    if leftovers:
        report("bug: actors still running at exit: {}", [ref.actor_class.__name__ for ref in leftovers])
        pykka.ActorRegistry.stop_all(block=not interrupted, timeout=INTERRUPTED_STOP if interrupted else 30)
    threads = [t.name for t in threading.enumerate()
               if t is not threading.current_thread() and t.is_alive() and t.name.startswith(OUR_THREADS)]
    if threads:
        report("bug: threads still running at exit: {}", threads)
