"""Pusher alone: real stores holding N records, a fake relay recording every frame.

The Pusher pages its stores (embedded Qdrant and SQLite under tmp_path) and
asks the relay to send each frame. The fake relay is a Recorder, so the test
sees the exact frame sequence; a StreamValidator (what the receiving Puller
runs) must accept it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from imprint.actors.fact_store import FactStore
from imprint.actors.memory_store import MemoryStore
from imprint.actors.pusher import MAX_BATCH_BYTES, Pusher, split_by_bytes
from imprint.errors import RelayError
from imprint.messages.events import Progress
from imprint.messages.records import FactRecord, MemoryRecord, Tags, finalize_memory
from imprint.messages.session import (
    SendFrame,
    StartPush,
    TransferFailed,
    TransferFinished,
)
from imprint.messages.store import Ping, StoreFacts, StoreMemories
from imprint.messages.wire import (
    DatasetCounts,
    Done,
    EncodedBatch,
    FactBatch,
    MemoryBatch,
    Meta,
    Request,
    RequestBody,
    decode_frame,
    encode_frame,
)
from imprint.protocol.stream import StreamFinished, StreamValidator

from .fakes import Recorder, stopping_new_actors

pytestmark = pytest.mark.timeout(60)

DIM = 8
T0 = 1_700_000_000.0


def memories(n: int, *, size: int = 0) -> tuple[MemoryRecord, ...]:
    pad = "x" * size
    return tuple(
        finalize_memory(
            MemoryRecord(
                content=f"memory number {i}: {pad}",
                project="proj",
                source=f"file{i % 3}.md",
                tags=Tags(lang="en", topics=("t",)),
                chunk_index=i,
                timestamp=T0 + i,
            )
        )
        for i in range(n)
    )


def facts(n: int) -> tuple[FactRecord, ...]:
    return tuple(
        FactRecord(subject=f"s{i:03d}", predicate="p", object="o", valid_from=T0 + i, ended=T0 + 99 if i % 4 == 0 else None)
        for i in range(n)
    )


def unit_vectors(n: int) -> list[list[float]]:
    rng = random.Random(3)
    out = []
    for _ in range(n):
        v = [rng.uniform(-1, 1) for _ in range(DIM)]
        norm = sum(x * x for x in v) ** 0.5
        out.append([x / norm for x in v])
    return out


class Rig:
    """A Pusher over real stores filled with the given records, a fake relay and listener."""

    def __init__(self, tmp_path: Path, mems: tuple[MemoryRecord, ...], fcts: tuple[FactRecord, ...], *, relay: Recorder | None = None) -> None:
        self.memory_store = MemoryStore.start(collection="imprint_test", path=tmp_path / "qdrant", dimension=DIM)
        self.fact_store = FactStore.start(path=tmp_path / "facts.db")
        assert self.memory_store.ask(Ping(), timeout=60) is True
        assert self.fact_store.ask(Ping(), timeout=60) is True
        if mems:
            result = self.memory_store.ask(StoreMemories(records=mems, vectors=unit_vectors(len(mems))), timeout=60)
            assert result.inserted == len(mems)
        if fcts:
            assert self.fact_store.ask(StoreFacts(records=fcts), timeout=60).inserted == len(fcts)
        self.relay = relay or Recorder("relay")
        self.listener = Recorder("session")
        self.pusher = Pusher.start(
            relay=self.relay, listener=self.listener, memory_store=self.memory_store, fact_store=self.fact_store
        )

    def push(self, *, batch_size: int, request: bool = False) -> Any:
        """Run one push to its end; return the last event (TransferFinished or TransferFailed)."""
        self.pusher.tell(StartPush(batch_size=batch_size, request=request))
        return self.listener.wait_for(TransferFinished, TransferFailed)

    @property
    def frames(self) -> list[Any]:
        """The frames sent, as the peer decodes them from the wire."""
        sent = self.relay.messages
        assert all(isinstance(m, SendFrame) for m in sent), sent
        return [decode_frame(encode_frame(m.frame)) for m in sent]


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


def chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


@pytest.mark.parametrize(
    ("n_memories", "n_facts", "batch_size"),
    [(0, 0, 500), (7, 5, 3), (10, 10, 5), (12, 1, 500), (1, 9, 1)],
    ids=["empty", "uneven", "exact-multiples", "one-batch-each", "batch-of-one"],
)
def test_streams_meta_every_record_once_in_numbered_batches_then_done(
    tmp_path: Path, n_memories: int, n_facts: int, batch_size: int
) -> None:
    mems, fcts = memories(n_memories), facts(n_facts)
    rig = Rig(tmp_path, mems, fcts)

    last = rig.push(batch_size=batch_size)

    frames = rig.frames
    assert frames[0] == Meta(datasets=DatasetCounts(memories=n_memories, facts=n_facts))
    assert frames[-1] == Done()
    memory_batches = [f for f in frames if isinstance(f, MemoryBatch)]
    fact_batches = [f for f in frames if isinstance(f, FactBatch)]
    # Meta, all memory batches, all fact batches, done: in that order, nothing else.
    assert frames == [frames[0], *memory_batches, *fact_batches, Done()]
    assert [b.seq for b in memory_batches] == list(range(1, len(memory_batches) + 1))
    assert [b.seq for b in fact_batches] == list(range(1, len(fact_batches) + 1))
    assert [len(b.records) for b in memory_batches] == chunks(n_memories, batch_size)
    assert [len(b.records) for b in fact_batches] == chunks(n_facts, batch_size)

    sent_memories = [r for b in memory_batches for r in b.records]
    sent_facts = [r for b in fact_batches for r in b.records]
    assert sorted(sent_memories, key=lambda r: r.id) == sorted(mems, key=lambda r: r.id)
    assert sorted(sent_facts, key=lambda f: f.identity) == sorted(fcts, key=lambda f: f.identity)

    # What the receiving side checks accepts it, complete.
    validator = StreamValidator()
    outcome = [validator.feed(f) for f in frames][-1]
    assert isinstance(outcome, StreamFinished) and outcome.complete

    expected_progress = [Progress(direction="send", dataset="memories", done=d, total=n_memories, confirmed=False)
                         for d in _running(memory_batches)]
    expected_progress += [Progress(direction="send", dataset="facts", done=d, total=n_facts, confirmed=False)
                          for d in _running(fact_batches)]
    assert rig.listener.messages == [
        *expected_progress,
        TransferFinished(sent={"memories": n_memories, "facts": n_facts}),
    ]
    assert last == rig.listener.messages[-1]


def _running(batches: list[Any]) -> list[int]:
    done, out = 0, []
    for b in batches:
        done += len(b.records)
        out.append(done)
    return out


def test_the_consumer_sends_post_sync_push_first(tmp_path: Path) -> None:
    rig = Rig(tmp_path, memories(3), facts(2))

    last = rig.push(batch_size=2, request=True)

    frames = rig.frames
    assert frames[0] == Request(method="POST", path="/sync/push", body=RequestBody(batch_size=2))
    assert encode_frame(frames[0]) == b'{"method":"POST","path":"/sync/push","body":{"batch_size":2}}'
    assert frames[1] == Meta(datasets=DatasetCounts(memories=3, facts=2))
    assert [type(f) for f in frames[2:]] == [MemoryBatch, MemoryBatch, FactBatch, Done]
    assert last == TransferFinished(sent={"memories": 3, "facts": 2})
    assert {m.direction for m in rig.listener.of_type(Progress)} == {"send"}


def test_records_the_peer_just_sent_are_not_echoed_back_and_not_announced(tmp_path: Path) -> None:
    mems, fcts = memories(6), facts(4)
    rig = Rig(tmp_path, mems, fcts)
    skip_ids = frozenset(m.id for m in mems[::2])
    skip_facts = frozenset(f.identity for f in fcts[:3])
    rig.pusher.tell(StartPush(batch_size=2, request=True, skip_ids=skip_ids, skip_facts=skip_facts))
    last = rig.listener.wait_for(TransferFinished, TransferFailed)

    frames = rig.frames
    assert frames[1] == Meta(datasets=DatasetCounts(memories=3, facts=1))
    sent = [r for f in frames if isinstance(f, (MemoryBatch, FactBatch)) for r in f.records]
    assert {r.id for r in sent if isinstance(r, MemoryRecord)} == {m.id for m in mems[1::2]}
    assert [r.identity for r in sent if isinstance(r, FactRecord)] == [fcts[3].identity]
    assert last == TransferFinished(sent={"memories": 3, "facts": 1})
    validator = StreamValidator()
    assert [validator.feed(f) for f in frames[1:]][-1].complete


def test_large_records_are_split_so_each_frame_stays_under_the_byte_cap(tmp_path: Path) -> None:
    # Nine ~900 KiB memories in one 500-record page: the byte cap must cut it.
    mems = memories(9, size=900 * 1024)
    rig = Rig(tmp_path, mems, ())

    rig.push(batch_size=500)

    batches = [f for f in rig.frames if isinstance(f, MemoryBatch)]
    assert len(batches) > 1
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
    assert all(len(encode_frame(b)) <= MAX_BATCH_BYTES for b in batches)
    assert sorted(r.id for b in batches for r in b.records) == sorted(m.id for m in mems)


def encoded(records: tuple[Any, ...]) -> list[bytes]:
    return [msgspec.json.encode(r) for r in records]


def test_split_by_bytes_keeps_each_encoded_frame_under_the_cap() -> None:
    records = memories(10, size=1000)
    record = len(msgspec.json.encode(records[0]))  # every record encodes to about this size
    one = len(encode_frame(MemoryBatch(dataset="memories", seq=10, records=records[:1])))  # a frame of one
    for cap in (one + 50, 3 * record, 3 * record + 40, 4 * record + 100, 5 * one + 3, 100 * one):
        runs = split_by_bytes(records, cap)
        assert [bytes(r) for run in runs for r in run] == encoded(records)  # all, in order, encoded once
        for n, run in enumerate(runs, start=1):
            frame = encode_frame(EncodedBatch(dataset="memories", seq=n, records=run))
            assert len(frame) <= cap, (cap, len(run))
            # Byte for byte the frame a batch of those records makes.
            decoded = tuple(msgspec.json.decode(r, type=MemoryRecord) for r in run)
            assert frame == encode_frame(MemoryBatch(dataset="memories", seq=n, records=decoded))
        # Runs are about as long as the cap allows: the next record would (nearly) not have fit.
        for n, (run, following) in enumerate(zip(runs, runs[1:]), start=1):
            assert len(encode_frame(EncodedBatch(dataset="memories", seq=n, records=run + following[:1]))) > cap - 64


def test_split_by_bytes_sends_a_record_larger_than_the_cap_alone() -> None:
    small, big, small2 = memories(3, size=10)[0], memories(1, size=5000)[0], memories(3, size=10)[2]
    runs = split_by_bytes((small, big, small2), 1000)
    assert [[bytes(r) for r in run] for run in runs] == [encoded((small,)), encoded((big,)), encoded((small2,))]
    assert split_by_bytes((), 1000) == []


def test_a_refused_send_ends_the_push_with_transfer_failed(tmp_path: Path) -> None:
    sends = 0

    def answer(message: Any) -> None:
        nonlocal sends
        sends += 1
        if sends == 3:  # meta, first batch, then the socket is gone
            raise RelayError("sending to the relay failed: broken pipe")

    rig = Rig(tmp_path, memories(6), facts(2), relay=Recorder("relay", answer=answer))

    last = rig.push(batch_size=2)

    assert last == TransferFailed(message="sending to the relay failed: broken pipe")
    assert [type(f) for f in rig.frames] == [Meta, MemoryBatch, MemoryBatch]
    # No frame after the failure, and the Pusher is still alive to be stopped cleanly.
    assert rig.pusher.ask(Ping(), timeout=10) is True
    assert len(rig.relay.messages) == 3
