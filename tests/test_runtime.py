"""imprint.runtime: a group of actors starts in order, confirms each start, stops
in reverse; leftovers at the end of a command are stopped and named."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ImprintError
from imprint.runtime import ActorGroup, check_leftovers


class Recorder(ImprintActor):
    """Records its start and stop in a shared list; fails to start when told to."""

    def __init__(self, *, label: str, log: list[str], fail: bool = False, block: threading.Event | None = None) -> None:
        super().__init__()
        self.label, self.log, self.fail, self.block = label, log, fail, block

    def start_up(self) -> None:
        if self.fail:
            raise ImprintError(f"{self.label} cannot start")
        self.log.append(f"start {self.label}")

    def shut_down(self) -> None:
        self.log.append(f"stop {self.label}")

    def handle(self, message: Any) -> Any:
        if message == "block" and self.block is not None:
            self.block.wait(timeout=30)
        return message


def recorders() -> list[pykka.ActorRef[Any]]:
    """Recorders still running (other tests' shared actors, e.g. the embedder, are not ours to stop)."""
    return [ref for ref in pykka.ActorRegistry.get_all() if ref.actor_class is Recorder]


@pytest.fixture(autouse=True)
def _no_recorder_left() -> Any:
    yield
    for ref in recorders():
        ref.stop(timeout=30)


def test_a_group_starts_in_order_and_stops_in_reverse() -> None:
    log: list[str] = []
    with ActorGroup("test") as group:
        for name in ("store", "embedder", "storer"):
            group.start(name, Recorder, label=name, log=log)
        assert "embedder" in group and group.get("nothing") is None
        assert group["storer"].ask("ping?", timeout=10) == "ping?"
    assert log == ["start store", "start embedder", "start storer", "stop storer", "stop embedder", "stop store"]
    assert not recorders()


def test_a_start_error_is_raised_to_whoever_starts_the_group_and_what_started_is_stopped() -> None:
    log: list[str] = []
    with pytest.raises(ImprintError, match="embedder cannot start"):
        with ActorGroup("test") as group:
            group.start("store", Recorder, label="store", log=log)
            group.start("embedder", Recorder, label="embedder", log=log, fail=True)
            group.start("never", Recorder, label="never", log=log)
    assert log == ["start store", "stop embedder", "stop store"]  # shut_down runs for the failed one too
    assert not recorders()


def test_after_an_interrupt_a_busy_actor_is_left_behind_within_the_deadline() -> None:
    import time

    log: list[str] = []
    block = threading.Event()
    group = ActorGroup("test")
    group.start("busy", Recorder, label="busy", log=log, block=block)
    group["busy"].tell("block")
    started = time.monotonic()
    group.stop(interrupted=True)
    assert time.monotonic() - started < 5  # INTERRUPTED_STOP, not the minute a normal stop allows
    block.set()


def test_leftovers_at_the_end_of_a_command_are_stopped_and_named() -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="ERROR")
    try:
        Recorder.start(label="forgotten", log=[])
        check_leftovers()  # stops every actor: a shared embedder too (conftest starts a fresh one when needed)
    finally:
        logger.remove(sink)
    assert not recorders()
    assert any("actors still running at exit" in m and "Recorder" in m for m in messages), messages
