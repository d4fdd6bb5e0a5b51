"""What a peer may make this machine forget: only the tombstones reconciling showed,
never before the user's yes, dated no later than a day ahead, and a big forget asks
first. The flows talk through the real frame codec (tests/protocol/test_flows_v2's Pair);
hostile peers are the project's own flows with a frame or two added."""

from __future__ import annotations

import time

import pytest

from imprint.errors import ProtocolError
from imprint.messages import events
from imprint.messages.records import MAX_CLOCK_SKEW, Tombstone
from imprint.messages.session import (
    ForgetDecision,
    FrameReceived,
    HandshakeSucceeded,
    TombstonesStored,
)
from imprint.messages.wire import Forgets
from imprint.protocol.flows import (
    ApplyTombstones,
    AskToForget,
    AskToJoin,
    ConsumerFlow,
    Fail,
    Finish,
    ProviderFlow,
    Report,
)
from imprint.protocol.forgets import Entitlement, ForgetLimit, would_forget
from imprint.protocol.items import FORGOTTEN_MEMORY, item
from tests.protocol.test_flows_v2 import V2, Pair, mem, wire

KEY = "{:016x}".format


class AskingPair(Pair):
    """A Pair whose users answer a big-forget question with `answer` (None: they never answer)."""

    def __init__(self, provider: list[bytes], consumer: list[bytes], *, answer: bool | None = True,
                 limit: ForgetLimit = ForgetLimit()) -> None:
        super().__init__(provider, consumer)
        for flow in self.flows.values():
            flow.forget_limit = limit
        self.answer = answer
        self.asked: dict[str, list[AskToForget]] = {"provider": [], "consumer": []}
        self.finished: dict[str, events.Stats] = {}

    def feed(self, side: str, event: object) -> None:
        flow = self.flows[side]
        original = flow.handle

        def handle(e: object) -> list[object]:
            commands = original(e)
            for command in commands:
                if isinstance(command, AskToForget):
                    self.asked[side].append(command)
            return commands

        flow.handle = handle  # type: ignore[method-assign]
        try:
            super().feed(side, event)
        finally:
            flow.handle = original  # type: ignore[method-assign]
        if self.asked[side] and self.answer is not None and flow._forget_state == "asking":
            super().feed(side, ForgetDecision(accept=self.answer))


    def run(self, peer: object = V2, *, stream: bool = True) -> AskingPair:
        """As Pair.run, then (with `stream`) the provider's stream begins at the consumer."""
        super().run(peer)  # type: ignore[arg-type]
        if stream:
            self.feed("consumer", FrameReceived(frame=wire(_meta())))
        return self


def wiped(n: int, at: float = 5000.0) -> tuple[list[bytes], list[bytes]]:
    """A provider that forgot all `n` memories the consumer holds (its tombstones are real)."""
    return [item(FORGOTTEN_MEMORY, KEY(i), at) for i in range(n)], [mem(i) for i in range(n)]


# ---------------------------------------------------------------- entitled or not


def test_only_tombstones_the_reconciliation_showed_are_taken() -> None:
    need = [item(FORGOTTEN_MEMORY, KEY(1), 2000.0), mem(2)]
    entitled = Entitlement(need)
    kept = entitled.take([
        Tombstone("memories", KEY(1), 2000.0),   # shown: taken
        Tombstone("memories", KEY(1), 2000.0),   # again: refused
        Tombstone("memories", KEY(2), 2000.0),   # the peer holds memory 2, not a tombstone of it
        Tombstone("memories", KEY(3), 2000.0),   # never shown
        Tombstone("memories", KEY(1), 2500.0),   # another date than the one shown
    ])
    assert kept == [Tombstone("memories", KEY(1), 2000.0)]
    assert entitled.refused == 4


def test_a_tombstone_dated_ahead_is_refused_even_when_shown() -> None:
    future = time.time() + MAX_CLOCK_SKEW + 3600
    entitled = Entitlement([item(FORGOTTEN_MEMORY, KEY(1), future)])
    assert entitled.take([Tombstone("memories", KEY(1), future)]) == []
    assert entitled.refused == 1 and "ahead" in entitled.reasons[0]


def test_would_forget_counts_what_is_held_and_not_newer() -> None:
    items = [mem(1, 1000.0), mem(2, 9000.0), mem(3)]
    tombstones = [Tombstone("memories", KEY(i), 5000.0) for i in (1, 2, 4)]
    assert would_forget(items, tombstones) == (1, 3)  # 2 is newer than its tombstone; 4 is not held


@pytest.mark.parametrize(("text", "forgetting", "total", "asks"), [
    ("100,10%", 101, 1000, True), ("100,10%", 100, 1000, False), ("100,10%", 101, 2000, False),
    ("5", 6, 10**6, True), ("50%", 6, 10, True), ("50%", 5, 10, False), ("none", 10**6, 10**6, False),
])
def test_the_forget_limit(text: str, forgetting: int, total: int, asks: bool) -> None:
    assert ForgetLimit.parse(text).exceeded(forgetting, total) is asks


@pytest.mark.parametrize("text", ["", "ten", "150%", "-3", "10%%"])
def test_a_bad_forget_limit_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="max-forget"):
        ForgetLimit.parse(text)


# ---------------------------------------------------------------- in a sync


def test_forged_tombstones_for_ids_the_peer_was_shown_are_refused_and_counted() -> None:
    # The attack of the issue: the peer learns our ids from reconciling (or computes them from
    # known text) and sends tombstones for all of them. It never held such tombstones.
    pair = AskingPair([mem(1000)], [mem(i) for i in range(50)])
    pair.feed("provider", HandshakeSucceeded(peer=V2))
    consumer = pair.flows["consumer"]
    original = consumer.handle

    def forging(event: object) -> list[object]:
        commands = original(event)
        if consumer.selection is not None and not getattr(forging, "done", False):
            forging.done = True  # type: ignore[attr-defined]
            forged = Forgets(tombstones=tuple(Tombstone("memories", KEY(i), time.time()) for i in range(50)))
            pair.feed("provider", FrameReceived(frame=wire(forged)))
        return commands

    consumer.handle = forging  # type: ignore[method-assign]
    pair.feed("consumer", HandshakeSucceeded(peer=V2))
    assert pair.applied["provider"] == []  # nothing of it reached the stores
    provider = pair.flows["provider"]
    assert provider._entitled is not None and provider._entitled.refused == 50
    notices = [e.message for e in pair.reports["provider"] if isinstance(e, events.Notice)]
    assert any("refused 50 tombstones" in n for n in notices)


def test_tombstones_before_the_users_yes_end_the_session() -> None:
    flow = ConsumerFlow(mode="encrypted", confirm=True)
    commands = flow.handle(HandshakeSucceeded(peer=V2))
    assert any(isinstance(c, AskToJoin) for c in commands)
    commands = flow.handle(FrameReceived(frame=wire(Forgets(tombstones=(Tombstone("memories", KEY(1), 1.0),)))))
    [fail] = [c for c in commands if isinstance(c, Fail)]
    assert isinstance(fail.error, ProtocolError) and "before this side agreed" in str(fail.error)
    assert not any(isinstance(c, ApplyTombstones) for c in commands)


def test_tombstones_before_comparing_end_the_session() -> None:
    flow = ProviderFlow(mode="encrypted")
    flow.handle(HandshakeSucceeded(peer=V2))
    commands = flow.handle(FrameReceived(frame=wire(Forgets(tombstones=(Tombstone("memories", KEY(1), 1.0),)))))
    assert [type(c) for c in commands] == [Fail] and isinstance(commands[0].error, ProtocolError)


def test_tombstones_after_the_records_started_end_the_session() -> None:
    pair = AskingPair(*wiped(3))
    pair.run(stream=False)
    consumer = pair.flows["consumer"]  # it pulled: the provider's stream is what may come now
    assert pair.applied["consumer"] == []  # held until the peer moves on…
    pair.feed("consumer", FrameReceived(frame=wire(_meta())))
    assert len(pair.applied["consumer"]) == 3  # …which its stream's first frame says
    commands = consumer.handle(FrameReceived(frame=wire(Forgets(tombstones=()))))
    assert any(isinstance(c, Fail) for c in commands)


def test_a_small_forget_is_applied_without_asking() -> None:
    pair = AskingPair(*wiped(100))
    pair.run()
    assert pair.asked["consumer"] == []
    assert len(pair.applied["consumer"]) == 100


def test_a_big_forget_asks_first_and_a_no_keeps_everything() -> None:
    pair = AskingPair(*wiped(150), answer=False)
    pair.run()
    [asked] = pair.asked["consumer"]
    assert (asked.count, asked.total) == (150, 150) and asked.peer == V2
    assert pair.applied["consumer"] == []
    assert pair.flows["consumer"].forgets_kept == 150
    [question] = [e for e in pair.reports["consumer"] if isinstance(e, events.ForgetConfirmRequired)]
    assert question.count == 150 and question.fingerprint == V2.fingerprint


def test_a_big_forget_asks_first_and_a_yes_forgets() -> None:
    pair = AskingPair(*wiped(150), answer=True)
    pair.run()
    assert len(pair.asked["consumer"]) == 1
    assert len(pair.applied["consumer"]) == 150
    # what the stores removed goes to the trash marked with the peer
    assert pair.flows["consumer"].forgotten_here == 150


def test_yes_never_asks() -> None:
    pair = AskingPair(*wiped(150), answer=None, limit=ForgetLimit(None, None))
    pair.run()
    assert pair.asked["consumer"] == [] and len(pair.applied["consumer"]) == 150


def test_the_finish_waits_for_the_answer_and_for_the_stores() -> None:
    pair = AskingPair(*wiped(150), answer=None)  # asked; nobody has answered yet
    pair.run()
    flow = pair.flows["consumer"]
    commands = flow._end(received=None, sent_stats=None) or flow._out
    assert not any(isinstance(c, Finish) for c in commands)
    assert flow.holding and flow.wait == "approval"  # a human's pace; the peer may hang up meanwhile
    commands = flow.handle(ForgetDecision(accept=True))
    assert [type(c) for c in commands] == [ApplyTombstones]  # no Finish before the stores answer
    commands = flow.handle(TombstonesStored(forgotten=150))
    [stats] = [c.event for c in commands if isinstance(c, Report) and isinstance(c.event, events.Stats)]
    assert stats.forgotten == 150 and any(isinstance(c, Finish) for c in commands)


def test_the_provider_takes_the_consumers_tombstones_when_its_pull_arrives() -> None:
    pair = AskingPair(*reversed(wiped(3)))  # the consumer forgot what the provider holds
    pair.run()
    assert len(pair.applied["provider"]) == 3
    assert pair.pushed["provider"].start.only_memories == ()


def _meta() -> object:
    from imprint.messages.wire import DatasetCounts, Meta

    return Meta(datasets=DatasetCounts(memories=0, facts=0))
