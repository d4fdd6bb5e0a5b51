"""The reconciliation machine alone: two Reconcilers talk through a loop, no sockets.

Properties: for any two sets, each side ends knowing exactly what only it has
and what only the peer has; the cost follows the difference, not the sets.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imprint.errors import ProtocolError
from imprint.messages.wire import Range, RangeMode, ReconcileMessage
from imprint.protocol.reconcile import LIST_AT, MAX_ROUNDS, Reconciler, pack, unpack

pytestmark = pytest.mark.timeout(120)


class encoder:  # noqa: N801 - what crosses the wire inside the seal
    encode = staticmethod(pack)


class decoder:  # noqa: N801
    decode = staticmethod(unpack)


def item(n: int, version: int = 0) -> bytes:
    return b"m" + hashlib.sha256(str(n).encode()).digest()[:8] + version.to_bytes(8, "big")


def converse(a_items: set[bytes], b_items: set[bytes]) -> tuple[Reconciler, Reconciler, int, int]:
    """Run a whole conversation through the wire encoding; (a, b, round trips, bytes)."""
    a, b = Reconciler(a_items, initiator=True), Reconciler(b_items, initiator=False)
    wire = encoder.encode(a.initiate())
    sent, trips = len(wire), 0
    while True:
        trips += 1
        answer = b.receive(decoder.decode(wire))
        assert answer is not None  # the responder always answers
        wire = encoder.encode(answer)
        sent += len(wire)
        reply = a.receive(decoder.decode(wire))
        if reply is None:
            b.finish()
            return a, b, trips, sent
        wire = encoder.encode(reply)
        sent += len(wire)


def check(a_items: set[bytes], b_items: set[bytes]) -> tuple[int, int]:
    a, b, trips, sent = converse(a_items, b_items)
    assert sorted(a.have) == sorted(a_items - b_items) == sorted(b.need)
    assert sorted(a.need) == sorted(b_items - a_items) == sorted(b.have)
    assert len(a.have) == len(set(a.have)) and len(b.have) == len(set(b.have))  # each learnt once
    return trips, sent


item_sets = st.sets(st.binary(min_size=1, max_size=24), max_size=300)


@settings(max_examples=150, deadline=None)
@given(item_sets, item_sets)
def test_random_sets_learn_their_exact_difference(a: set[bytes], b: set[bytes]) -> None:
    check(a, b)


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=2000), st.data())
def test_random_differences_of_one_set(base: set[int], data: st.DataObject) -> None:
    items = {item(n) for n in base}
    drop_a = data.draw(st.sets(st.sampled_from(sorted(items)), max_size=50)) if items else set()
    drop_b = data.draw(st.sets(st.sampled_from(sorted(items)), max_size=50)) if items else set()
    check(items - drop_a, items - drop_b)


@pytest.mark.parametrize("case", ["empty", "identical", "disjoint", "one item", "ten percent", "one side empty",
                                  "versions differ"])
def test_named_cases(case: str) -> None:
    rng = random.Random(case)
    base = {item(n) for n in range(3000)}
    a, b = {
        "empty": (set(), set()),
        "identical": (base, set(base)),
        "disjoint": ({item(n) for n in range(1000)}, {item(n) for n in range(1000, 2500)}),
        "one item": (base, base - {item(1234)}),
        "ten percent": (set(rng.sample(sorted(base), 2850)), set(rng.sample(sorted(base), 2850))),
        "one side empty": (set(), base),
        "versions differ": (base, (base - {item(7)}) | {item(7, version=2)}),
    }[case]
    check(a, b)


def test_a_hundred_thousand_items_one_difference_costs_a_few_round_trips_and_bytes() -> None:
    base = {item(n) for n in range(100_000)}
    trips, sent = check(base, base - {item(31_337)})
    assert trips <= 4 and sent < 4_000, (trips, sent)
    trips, sent = check(base, set(base))
    assert trips == 1 and sent < 1_500, (trips, sent)  # identical: one fingerprint each way


def test_the_cost_follows_the_difference_not_the_set() -> None:
    base = {item(n) for n in range(100_000)}
    changed = set(random.Random(1).sample(sorted(base), 500))
    _, sent = check(base, base - changed)
    per_item = sent / 500
    assert per_item < 1500, per_item  # the ranges that found it (a few fingerprints a level) and the item


# ---------------------------------------------------------------- hostile messages


def responder_with(n: int = 100) -> Reconciler:
    return Reconciler({item(i) for i in range(n)}, initiator=False)


@pytest.mark.parametrize("ranges", [
    (),
    (Range(RangeMode.SKIP, b"b"),),  # the last range must be open
    (Range(RangeMode.SKIP, b"b"), Range(RangeMode.SKIP, b"a"), Range(RangeMode.SKIP)),  # decreasing bounds
    (Range(RangeMode.SKIP, b"b"), Range(RangeMode.SKIP, b"b"), Range(RangeMode.SKIP)),  # repeated bound
    (Range(RangeMode.FP, None, fingerprint=b"short"),),
    (Range(RangeMode.FINAL, b"m", items=(b"z",)), Range(RangeMode.SKIP)),  # an item outside its range
    (Range(RangeMode.LIST, None, items=(b"a",)),),  # a list carries digests, not items
    (Range(RangeMode.LIST, None, digests=b"12345678" * 2),),  # a digest twice
    (Range(RangeMode.LIST, None, digests=b"1234567"),),  # not whole digests
    (Range(RangeMode.FINAL, None, items=(b"not mine",)),),  # an answer to a list never sent
    (Range(RangeMode.FILL, None, items=(b"x",)),),  # a fill for a final never sent
    (Range(RangeMode.SKIP, None, marks=b"\x01"),),  # fields of another mode
    (Range(RangeMode.FP, None, fingerprint=b"\0" * 8, digests=b"12345678"),),
])
def test_malformed_messages_are_protocol_errors(ranges: tuple[Range, ...]) -> None:
    r = responder_with()
    with pytest.raises(ProtocolError):
        r.receive(ReconcileMessage(ranges))
    assert r.have == [] and r.need == []  # nothing learnt from a bad message


def test_a_runaway_conversation_is_cut_off() -> None:
    r = responder_with()
    with pytest.raises(ProtocolError, match="did not end"):
        for _ in range(MAX_ROUNDS + 1):
            r.receive(ReconcileMessage((Range(RangeMode.FP, None, fingerprint=b"\0" * 8),)))


def test_oversized_items_do_not_decode() -> None:
    wire = pack(ReconcileMessage((Range(RangeMode.FILL, None, items=(b"x" * 200,)),)))
    with pytest.raises(ProtocolError, match="oversized item"):
        unpack(wire)


def test_the_packed_form_round_trips_and_shares_bound_prefixes() -> None:
    a = Reconciler({item(n) for n in range(5000)}, initiator=True)
    b = Reconciler({item(n) for n in range(4990)}, initiator=False)
    message = a.initiate()
    while message is not None:
        assert unpack(pack(message)) == message
        message = b.receive(unpack(pack(message))) if message is not None else None
        assert message is not None and unpack(pack(message)) == message
        message = a.receive(unpack(pack(message)))
    assert len(a.have) == 10
    two = ReconcileMessage((Range(RangeMode.SKIP, b"abcdef"), Range(RangeMode.SKIP, b"abcdeg"), Range(RangeMode.SKIP)))
    assert pack(two) == bytes([3, 0, 0, 6]) + b"abcdef" + bytes([0, 5, 1]) + b"g" + bytes([0, 0, 255])


@pytest.mark.parametrize("data", [
    b"",  # no count
    bytes([1]),  # a range missing
    bytes([1, 9, 0, 255]),  # unknown mode
    bytes([1, 0, 3, 1]) + b"a",  # a bound sharing more than the previous one has
    bytes([1, 0, 0, 255, 0]),  # a byte after the last range
    bytes([1, 1, 0, 255, 17]) + b"x" * 17,  # an oversized fingerprint
    bytes([1, 2, 0, 255, 0x81, 0x80, 0x80, 0x80, 0x80, 0x01]),  # an oversized number
    bytes([1, 2, 0, 255, 3]) + b"x" * 8,  # fewer digests than said
])
def test_malformed_packed_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_unpacker(data: bytes) -> None:
    try:
        message = unpack(data)
    except ProtocolError:
        return
    assert unpack(pack(message)) == message


def test_small_sets_are_listed_at_once() -> None:
    a = Reconciler({item(n) for n in range(LIST_AT)}, initiator=True)
    [only] = a.initiate().ranges
    assert only.mode == RangeMode.LIST and len(only.digests) == 8 * LIST_AT and not only.items


def test_a_final_must_answer_the_list_exactly() -> None:
    """The lister checks the answer against what it listed: marks of the right size, no
    bit past its items, no item it listed sent back; a fill brings exactly what was marked."""
    mine = {item(n) for n in range(5)}
    for bad in (Range(RangeMode.FINAL, None, marks=b"\x01\x00"),  # two bytes for five items
                Range(RangeMode.FINAL, None, marks=b"\x20"),  # bit 5 of five items
                Range(RangeMode.FINAL, None, items=(sorted(mine)[0],))):  # one of mine back
        a = Reconciler(mine, initiator=True)
        a.initiate()
        with pytest.raises(ProtocolError):
            a.receive(ReconcileMessage((bad,)))
    # The responder marks what it lacks and waits for exactly those items.
    a, b = Reconciler(mine, initiator=True), Reconciler(set(sorted(mine)[:3]), initiator=False)
    answer = b.receive(a.initiate())
    assert answer is not None and answer.ranges[0].mode == RangeMode.FINAL
    fill = a.receive(answer)
    assert fill is not None and fill.ranges[0].mode == RangeMode.FILL
    short = ReconcileMessage((Range(RangeMode.FILL, None, items=fill.ranges[0].items[:1]),))
    with pytest.raises(ProtocolError, match="fill"):
        Reconciler(set(sorted(mine)[:3]), initiator=False).receive(short)  # never marked anything
    b.receive(fill)
    assert sorted(b.need) == sorted(mine)[3:] and sorted(a.have) == sorted(mine)[3:]


def test_a_peer_claiming_a_million_invented_items_is_stopped_within_a_fixed_memory_bound() -> None:
    """The attack of the issue: a 4-item side, and a peer answering its list with a million
    items it made up. Claims are bounded by what both sides announced (claim_bound), and the
    check comes before anything is built from them."""
    import os
    import tracemalloc

    from imprint.messages.wire import Range, RangeMode, ReconcileMessage
    from imprint.protocol.handshake import announced
    from imprint.protocol.reconcile import claim_bound

    victim = Reconciler([bytes([i]) * 25 for i in range(4)], initiator=False,
                        max_claimed=claim_bound(4, announced(4)))
    listed = victim.receive(ReconcileMessage((Range(RangeMode.FP, None, fingerprint=b"\1" * 8),)))
    assert [r.mode for r in listed.ranges] == [RangeMode.LIST]  # 4 items: listed whole
    invented = tuple(sorted({os.urandom(25) for _ in range(1_000_000)}))
    forged = unpack(pack(ReconcileMessage((Range(RangeMode.FINAL, None, items=invented),))))
    del invented
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="claims more items than it said it holds"):
            victim.receive(forged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert victim.need == [] and victim.have == []
    assert peak < 1_000_000  # bytes: nothing was built from the claims (they alone are ~70 MB)
    # A peer that announced a big store may claim as much; the cap holds whatever it says.
    assert claim_bound(4, announced(4)) == 2 * (4 + 1024) + 250_000
    assert claim_bound(0, 10**12) == 4_000_000
