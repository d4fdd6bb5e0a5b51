"""Protocol 2 in the flows: both sides compare what they hold, then only the
difference moves. The two flows talk to each other through the real frame
codec; the stores are lists of items. No actors, no sockets."""

from __future__ import annotations

import pytest

from imprint.errors import ProtocolError
from imprint.messages import events
from imprint.messages.records import Tombstone
from imprint.messages.session import (
    FrameReceived,
    HandshakeSucceeded,
    ItemsLoaded,
    PeerInfo,
    SummaryLoaded,
    TombstonesStored,
)
from imprint.messages.wire import (
    PROTOCOL_VERSION,
    Forgets,
    Reconcile,
    Request,
    decode_frame,
    encode_frame,
)
from imprint.protocol.flows import (
    ApplyTombstones,
    ConsumerFlow,
    Fail,
    LoadItems,
    LoadSummary,
    ProviderFlow,
    Push,
    Receive,
    Report,
    Send,
)
from imprint.protocol.items import FACT, FORGOTTEN_MEMORY, MEMORY, item
from imprint.protocol.reconcile import item_hash

V2 = PeerInfo(hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d", public_key="ab" * 32,
              protocol=PROTOCOL_VERSION)
V1 = PeerInfo(hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d", public_key="ab" * 32)


def mem(n: int, ts: float = 1000.0, text: str = "aa" * 8) -> bytes:
    return item(MEMORY, f"{n:016x}", ts, text)


def wire(frame: object) -> object:
    return decode_frame(encode_frame(frame))  # what really crosses: JSON, checked


class Pair:
    """A provider and a consumer flow wired to each other until the provider pushes."""

    def __init__(self, provider_items: list[bytes], consumer_items: list[bytes]) -> None:
        self.items = {"provider": provider_items, "consumer": consumer_items}
        self.flows = {"provider": ProviderFlow(mode="encrypted"), "consumer": ConsumerFlow(mode="encrypted")}
        self.applied: dict[str, list[Tombstone]] = {"provider": [], "consumer": []}
        self.pushed: dict[str, Push] = {}
        self.reports: dict[str, list[object]] = {"provider": [], "consumer": []}
        self.frames = 0
        self.loaded: dict[str, list[str]] = {"provider": [], "consumer": []}

    def feed(self, side: str, event: object) -> None:
        other = "consumer" if side == "provider" else "provider"
        for command in self.flows[side].handle(event):
            match command:
                case LoadSummary():
                    self.loaded[side].append("summary")
                    total = sum(item_hash(i) for i in self.items[side]) % (1 << 128)
                    self.feed(side, SummaryLoaded(count=len(self.items[side]), total=total))
                case LoadItems():
                    self.loaded[side].append("items")
                    self.feed(side, ItemsLoaded(items=tuple(self.items[side])))
                case Send(frame=frame):
                    self.frames += 1
                    self.feed(other, FrameReceived(frame=wire(frame)))
                case ApplyTombstones(tombstones=tombstones):
                    self.applied[side] += tombstones
                    self.feed(side, TombstonesStored(forgotten=len(tombstones)))
                case Receive(request=True):
                    self.feed(other, FrameReceived(frame=wire(Request.pull())))
                case Push():
                    self.pushed[side] = command
                case Report(event=event):
                    self.reports[side].append(event)
                case Fail(error=error):
                    raise error

    def run(self, peer: PeerInfo = V2) -> Pair:
        self.feed("provider", HandshakeSucceeded(peer=peer))
        self.feed("consumer", HandshakeSucceeded(peer=peer))
        return self


def test_only_the_difference_is_selected_both_ways_and_tombstones_travel() -> None:
    shared = [mem(n) for n in range(500)]
    forgotten = item(FORGOTTEN_MEMORY, f"{7:016x}", 2000.0)
    provider = [*shared, mem(900), item(FACT, "ab" * 8, 0.0)]
    consumer = [*shared, mem(901), mem(902), forgotten]
    pair = Pair(provider, consumer).run()

    push = pair.pushed["provider"].start
    assert push.only_memories == (f"{900:016x}",) and push.only_facts == ("ab" * 8,)
    sel = pair.flows["consumer"].selection
    assert sorted(sel.memories) == [f"{901:016x}", f"{902:016x}"] and sel.facts == []
    # the consumer's tombstone reached the provider before its pull
    assert pair.applied["provider"] == [Tombstone("memories", f"{7:016x}", 2000.0)]
    assert pair.flows["provider"].forgotten_here == 1
    [reconciled] = [e for e in pair.reports["consumer"] if isinstance(e, events.Reconciled)]
    assert reconciled.send == {"memories": 2, "facts": 0, "forgotten": 1}
    assert reconciled.receive == {"memories": 1, "facts": 1, "forgotten": 0}


def test_identical_sides_select_nothing_in_one_round_trip() -> None:
    same = [mem(n) for n in range(3000)]
    pair = Pair(same, list(same)).run()
    push = pair.pushed["provider"].start
    assert (push.only_memories, push.only_facts) == ((), ())
    assert pair.flows["consumer"].selection.empty
    assert pair.flows["consumer"].round_trips == 1
    assert pair.frames == 2  # one reconcile message and its answer (then the pull request)
    # the summaries agreed: neither side read its items
    assert pair.loaded == {"provider": ["summary"], "consumer": ["summary"]}


def test_a_summary_that_differs_loads_the_items_and_reconciles_on() -> None:
    shared = [mem(n) for n in range(3000)]
    pair = Pair([*shared, mem(5000)], list(shared)).run()
    assert pair.loaded == {"provider": ["summary", "items"], "consumer": ["summary", "items"]}
    assert pair.pushed["provider"].start.only_memories == (f"{5000:016x}",)
    assert pair.flows["consumer"].selection.empty


def test_of_two_copies_only_the_winning_one_travels() -> None:
    # The consumer's earlier copy of memory 1 wins on both sides: the provider's later one stays home.
    pair = Pair([mem(1, 1000.0), mem(2)], [mem(1, 500.0), mem(2)]).run()
    assert pair.pushed["provider"].start.only_memories == ()
    assert pair.flows["consumer"].selection.memories == [f"{1:016x}"]
    # Another text under the same id (an edit past character 200): the newer edit wins, only it travels.
    pair = Pair([mem(1, 1000.0, "bb" * 8), mem(2)], [mem(1, 500.0), mem(2)]).run()
    assert pair.pushed["provider"].start.only_memories == (f"{1:016x}",)
    assert pair.flows["consumer"].selection.memories == []
    # An ended fact wins over an open copy: only the ended one travels.
    pair = Pair([item(FACT, "ab" * 8, 0.0)], [item(FACT, "ab" * 8, 1234.0)]).run()
    assert pair.pushed["provider"].start.only_facts == ()
    assert pair.flows["consumer"].selection.facts == ["ab" * 8]


def test_an_older_peer_gets_the_full_transfer() -> None:
    pair = Pair([mem(1)], []).run(peer=V1)
    push = pair.pushed["provider"].start
    assert push.only_memories is None and pair.flows["consumer"].reconciler is None


def test_the_plaintext_mode_never_reconciles() -> None:
    flow = ConsumerFlow(mode="plaintext")
    commands = flow.handle(HandshakeSucceeded(peer=V2))
    assert not any(isinstance(c, LoadItems) for c in commands)
    assert any(isinstance(c, Receive) for c in commands)


def test_reconcile_frames_from_an_older_peer_or_after_the_pull_are_refused() -> None:
    flow = ProviderFlow(mode="encrypted")
    flow.handle(HandshakeSucceeded(peer=V1))
    [fail] = flow.handle(FrameReceived(frame=Reconcile(message=None)))  # type: ignore[arg-type]
    assert isinstance(fail, Fail) and isinstance(fail.error, ProtocolError)

    v2 = ProviderFlow(mode="encrypted")
    v2.handle(HandshakeSucceeded(peer=V2))
    [fail] = v2.handle(FrameReceived(frame=Request.pull()))
    assert isinstance(fail, Fail) and "before comparing" in str(fail.error)


def test_forgets_from_an_older_peer_are_refused() -> None:
    flow = ProviderFlow(mode="encrypted")
    flow.handle(HandshakeSucceeded(peer=V1))
    [fail] = flow.handle(FrameReceived(frame=Forgets(tombstones=())))
    assert isinstance(fail, Fail)


@pytest.mark.parametrize("side", ["provider", "consumer"])
def test_a_forged_reconcile_message_is_a_protocol_error(side: str) -> None:
    from imprint.messages.wire import Range, RangeMode, ReconcileMessage

    pair = Pair([mem(1)], [mem(2)])
    pair.feed("provider", HandshakeSucceeded(peer=V2))
    bad = Reconcile(message=ReconcileMessage(ranges=(Range(RangeMode.SKIP, b"z"), Range(RangeMode.SKIP, b"a"), Range(RangeMode.SKIP))))
    if side == "provider":
        commands = pair.flows["provider"].handle(FrameReceived(frame=bad))
        commands += pair.flows["provider"].handle(ItemsLoaded(items=(mem(1),)))
    else:
        pair.flows["consumer"].handle(HandshakeSucceeded(peer=V2))
        pair.flows["consumer"].handle(SummaryLoaded(count=1, total=12345))
        commands = pair.flows["consumer"].handle(FrameReceived(frame=bad))  # not "agreed": items load
        assert any(isinstance(c, LoadItems) for c in commands)
        commands = pair.flows["consumer"].handle(ItemsLoaded(items=(mem(2),)))
    assert any(isinstance(c, Fail) and isinstance(c.error, ProtocolError) for c in commands)


def test_a_record_the_peer_forgot_is_not_sent_to_it() -> None:
    key = f"{42:016x}"
    # The consumer forgot memory 42 at t=2000; the provider still holds its copy of t=1000.
    pair = Pair([mem(1), item(MEMORY, key, 1000.0, "aa" * 8)], [mem(1), item(FORGOTTEN_MEMORY, key, 2000.0)]).run()
    assert pair.pushed["provider"].start.only_memories == ()  # the tombstone removes it there instead
    assert pair.applied["provider"] == [Tombstone("memories", key, 2000.0)]
    # A copy newer than the tombstone (added again on purpose) does travel.
    pair = Pair([mem(1), item(MEMORY, key, 3000.0, "aa" * 8)], [mem(1), item(FORGOTTEN_MEMORY, key, 2000.0)]).run()
    assert pair.pushed["provider"].start.only_memories == (key,)


# ---------------------------------------------------------------- vectors: fingerprint and canaries

_FP = "0123456789abcdef"


def _canaries(*values: float) -> bytes:
    import numpy as np

    rows = [np.full(8, v, dtype="<f4") for v in values]
    rows = [r / np.linalg.norm(r) for r in rows]
    return b"".join(r.astype("<f4").tobytes() for r in rows)


def _connected(peer_model: str, peer_canaries: bytes) -> tuple[ConsumerFlow, list[object]]:
    import msgspec

    ours = _canaries(1.0, 1.0, 1.0)
    flow = ConsumerFlow(mode="encrypted", model=_FP, canaries=ours)
    peer = msgspec.structs.replace(V2, model=peer_model, canaries=peer_canaries)
    commands = flow.handle(HandshakeSucceeded(peer=peer, verification="v"))
    return flow, [c.event for c in commands if isinstance(c, Report)]


def test_same_fingerprint_and_agreeing_canaries_exchange_vectors() -> None:
    flow, reports = _connected(_FP, _canaries(1.0, 1.0, 1.0))
    assert flow.vectors is True
    assert not [r for r in reports if isinstance(r, events.Notice)]


def test_another_fingerprint_exchanges_no_vectors_and_is_not_news() -> None:
    flow, reports = _connected("fedcba9876543210", _canaries(1.0, 1.0, 1.0))
    assert flow.vectors is False
    assert not [r for r in reports if isinstance(r, events.Notice)]


@pytest.mark.parametrize("theirs", [b"", b"\x00" * 16], ids=["none", "wrong-shape"])
def test_same_fingerprint_without_usable_canaries_exchanges_no_vectors(theirs: bytes) -> None:
    flow, reports = _connected(_FP, theirs)
    assert flow.vectors is False
    assert [r for r in reports if isinstance(r, events.Notice)]


def test_same_fingerprint_with_disagreeing_canaries_exchanges_no_vectors_and_says_so() -> None:
    import numpy as np

    off = bytearray(_canaries(1.0, 1.0, 1.0))
    row = np.frombuffer(bytes(off[32:64]), "<f4").copy()
    row[0] = -row[0]  # one dimension of one canary flipped: cosine 0.75
    off[32:64] = row.tobytes()
    flow, reports = _connected(_FP, bytes(off))
    assert flow.vectors is False
    notice = next(r for r in reports if isinstance(r, events.Notice))
    assert "canary" in notice.message and "0.75" in notice.message


def test_comparing_has_a_whole_conversation_deadline() -> None:
    from imprint.protocol.flows import RECONCILE_DEADLINE
    from imprint.protocol.reconcile import summary_message

    now = [0.0]
    flow = ProviderFlow(mode="encrypted", clock=lambda: now[0])
    flow.handle(HandshakeSucceeded(peer=V2))
    assert not any(isinstance(c, Fail) for c in flow.handle(FrameReceived(frame=Reconcile(message=summary_message(1)))))
    now[0] += RECONCILE_DEADLINE + 1  # each message came within the idle timeout; the whole took too long
    [fail] = [c for c in flow.handle(FrameReceived(frame=Reconcile(message=summary_message(2))))
              if isinstance(c, Fail)]
    assert isinstance(fail.error, ProtocolError) and "took more than" in str(fail.error)
