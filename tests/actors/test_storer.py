"""Storer alone: a real spool, real stores and the shared Embedder behind it; a
Recorder watches. Batches are put in the spool the way the Puller does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from imprint.actors.fact_store import FactStore
from imprint.actors.memory_store import MemoryStore
from imprint.actors.storer import ALL_STREAMS, Storer
from imprint.local import embed_and_store
from imprint.messages.records import FactRecord, MemoryRecord, finalize_memory
from imprint.messages.session import (
    BatchStored,
    SpoolIdle,
    StoreFailed,
    StreamStored,
    Unwatch,
    Wake,
    Watch,
)
from imprint.messages.store import (
    DescribeModel,
    PageFacts,
    PageMemories,
    Ping,
    StoreFacts,
    StoreResult,
)
from imprint.spool import Spool

from .fakes import Recorder, stopping_new_actors

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000.0


def mem(content: str, *, timestamp: float = T0) -> MemoryRecord:
    return finalize_memory(MemoryRecord(content=content, project="proj", source="s.md", timestamp=timestamp))


def fact(subject: str, *, valid_from: float = T0, ended: float | None = None) -> FactRecord:
    return FactRecord(subject=subject, predicate="likes", object="obj", valid_from=valid_from, ended=ended)


class Rig:
    def __init__(self, embedder: pykka.ActorRef[Any], tmp_path: Path) -> None:
        dimension = embedder.ask(DescribeModel(), timeout=30).dimension
        self.embedder = embedder
        self.memory_store = MemoryStore.start(collection="imprint_test", path=tmp_path / "qdrant", dimension=dimension)
        self.fact_store = FactStore.start(path=tmp_path / "facts.db")
        assert self.memory_store.ask(Ping(), timeout=60) is True
        assert self.fact_store.ask(Ping(), timeout=60) is True
        self.spool_path = tmp_path / "spool.db"
        self.spool = Spool(self.spool_path)
        self.watcher = Recorder("session")
        self.storer = Storer.start(spool_path=self.spool_path, memory_store=self.memory_store,
                                   fact_store=self.fact_store, embedder=embedder)
        assert self.storer.ask(Ping(), timeout=30) is True

    def receive(self, stream: str, *batches: tuple[str, tuple[Any, ...]], complete: bool = True) -> None:
        self.spool.open_stream(stream)
        for dataset, records in batches:
            self.spool.append(stream, dataset, records)
        if complete:
            self.spool.complete_stream(stream)

    def memories(self) -> dict[str, MemoryRecord]:
        return {r.content: r for r in self.memory_store.ask(PageMemories(limit=1000), timeout=30).records}

    def facts(self) -> dict[str, FactRecord]:
        return {f.record.subject: f.record for f in self.fact_store.ask(PageFacts(limit=1000), timeout=30).facts}


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


@pytest.fixture
def rig(embedder: pykka.ActorRef[Any], tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(embedder, tmp_path)
    yield rig
    rig.spool.close()


def test_a_complete_stream_is_stored_in_order_then_reported_stored(rig: Rig) -> None:
    alpha, beta = mem("Alpha: the deploy key lives in the vault."), mem("Beta: standup moved to 9:30.")
    ana, bob = fact("ana"), fact("bob", ended=T0 + 50)
    rig.receive("s1", ("memories", (alpha, beta)), ("facts", (ana,)), ("facts", (bob,)))
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.storer.tell(Wake())

    assert rig.watcher.wait_for(StreamStored) == StreamStored(stream="s1")
    assert rig.watcher.messages == [
        BatchStored(stream="s1", dataset="memories", count=2, result=StoreResult(inserted=2, skipped=0),
                    same_ids=(alpha.id, beta.id)),
        BatchStored(stream="s1", dataset="facts", count=1, result=StoreResult(inserted=1, skipped=0),
                    same_facts=(ana.identity,)),
        BatchStored(stream="s1", dataset="facts", count=1, result=StoreResult(inserted=1, skipped=0),
                    same_facts=(bob.identity,)),
        StreamStored(stream="s1"),
    ]
    assert rig.memories() == {alpha.content: alpha, beta.content: beta}
    assert rig.facts() == {"ana": ana, "bob": bob}
    assert rig.spool.pending().total == 0
    rig.watcher.assert_quiet()  # StreamStored comes once


def test_a_stream_still_arriving_is_not_reported_stored(rig: Rig) -> None:
    rig.receive("s1", ("memories", (mem("one"),)), complete=False)
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.storer.tell(Wake())
    assert isinstance(rig.watcher.next(), BatchStored)
    rig.watcher.assert_quiet()
    rig.spool.complete_stream("s1")
    rig.storer.tell(Wake())
    assert rig.watcher.next() == StreamStored(stream="s1")


def test_leftovers_of_an_interrupted_sync_are_stored_for_whoever_watches_everything(rig: Rig) -> None:
    rig.receive("old-run", ("memories", (mem("left behind"),)), ("facts", (fact("ana"),)), complete=False)
    rig.storer.tell(Watch(stream=ALL_STREAMS, listener=rig.watcher))
    rig.storer.tell(Wake())
    assert rig.watcher.wait_for(SpoolIdle) == SpoolIdle()
    assert [m.dataset for m in rig.watcher.of_type(BatchStored)] == ["memories", "facts"]
    assert set(rig.memories()) == {"left behind"} and set(rig.facts()) == {"ana"}
    rig.storer.tell(Unwatch(stream=ALL_STREAMS))


def test_a_big_batch_is_embedded_a_chunk_at_a_time_so_an_add_beside_it_waits_for_one(rig: Rig) -> None:
    """The Embedder answers in turn: an import's 2,000 texts in one message made every `add` and
    agent's `store` beside it wait seconds. Batches go EMBED_CHUNK texts per message."""
    from imprint.actors.storer import EMBED_CHUNK
    from imprint.messages.store import EmbedTexts

    sizes: list[int] = []

    class Recording(pykka.ThreadingActor):  # the Embedder's mailbox, as the caller sees it
        def on_receive(self, message: Any) -> Any:
            if isinstance(message, EmbedTexts):
                sizes.append(len(message.texts))
            return rig.embedder.ask(message, timeout=60)

    records = tuple(mem(f"batch memory {n}: notes on service {n % 7}") for n in range(2 * EMBED_CHUNK + 5))
    result = embed_and_store(Recording.start(), rig.memory_store, records)
    assert result.inserted == len(records)
    assert sizes == [EMBED_CHUNK, EMBED_CHUNK, 5]
    assert set(rig.memories()) == {r.content for r in records}


def test_merge_rules_earliest_memory_wins_and_what_stays_different_is_named(rig: Rig) -> None:
    embed_and_store(rig.embedder, rig.memory_store, (mem("ours is later", timestamp=2000.0),
                                                     mem("ours is earlier", timestamp=1000.0),
                                                     mem("the same", timestamp=1500.0)))
    incoming = (mem("ours is later", timestamp=1000.0), mem("ours is earlier", timestamp=2000.0),
                mem("the same", timestamp=1500.0),
                # The same memory twice in one batch: the earlier copy wins here too.
                mem("twice in a batch", timestamp=3000.0), mem("twice in a batch", timestamp=1500.0))
    rig.receive("s1", ("memories", incoming))
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.storer.tell(Wake())

    stored = rig.watcher.wait_for(BatchStored)
    assert {c: r.timestamp for c, r in rig.memories().items()} == {
        "ours is later": 1000.0, "ours is earlier": 1000.0, "the same": 1500.0, "twice in a batch": 1500.0,
    }
    assert (stored.result.inserted, stored.result.skipped, stored.result.updated) == (1, 4, 1)
    # Only "ours is earlier" stays different from what came in: the sender lacks our copy.
    assert stored.result.kept_ids == (mem("ours is earlier").id,)
    assert mem("ours is earlier").id not in stored.same_ids
    assert set(stored.same_ids) == {mem(c).id for c in ("ours is later", "the same", "twice in a batch")}


def test_merge_rules_an_incoming_end_time_ends_our_open_copy_and_nothing_else(rig: Rig) -> None:
    rig.fact_store.ask(StoreFacts(records=(
        fact("open-here", valid_from=100.0),
        fact("ended-here", valid_from=200.0, ended=500.0),
        fact("ended-both", valid_from=300.0, ended=500.0),
    )), timeout=30)
    rig.receive("s1", ("facts", (
        fact("open-here", valid_from=100.0, ended=900.0),  # ends ours
        fact("ended-here", valid_from=200.0),  # an open copy does not reopen ours
        fact("ended-both", valid_from=300.0, ended=700.0),  # ours ended first: kept
        fact("new", valid_from=400.0, ended=300.0),
    )))
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.storer.tell(Wake())

    stored = rig.watcher.wait_for(BatchStored)
    assert {s: f.ended for s, f in rig.facts().items()} == {
        "open-here": 900.0, "ended-here": 500.0, "ended-both": 500.0, "new": 300.0,
    }
    assert (stored.result.inserted, stored.result.skipped, stored.result.ended) == (1, 3, 1)
    assert {identity[0] for identity in stored.same_facts} == {"open-here", "new"}


def test_a_stop_between_embedding_chunks_leaves_the_batch_whole_in_the_spool(rig: Rig) -> None:
    many = tuple(mem(f"memory number {n} about the garden and the weather") for n in range(300))
    rig.receive("s1", ("memories", many))
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.storer.tell(Wake())
    rig.storer.stop(timeout=30)  # handled after the chunk in hand: ~0.5 s, not the whole batch
    assert rig.memories() == {}
    assert rig.spool.pending().memories == 300
    assert rig.watcher.of_type(BatchStored) == []


def test_a_store_failure_keeps_the_batch_and_tells_the_watchers(rig: Rig) -> None:
    rig.receive("s1", ("facts", (fact("ana"),)))
    rig.storer.tell(Watch(stream="s1", listener=rig.watcher))
    rig.fact_store.stop(timeout=30)  # a store that is gone: every write fails
    rig.storer.tell(Wake())
    failed = rig.watcher.wait_for(StoreFailed)
    assert "FactStore" in failed.message
    assert rig.spool.pending().facts == 1


@pytest.mark.parametrize("searched", [False, True])
def test_the_store_writes_in_small_parts_only_while_searches_come(
        embedder: pykka.ActorRef[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, searched: bool) -> None:
    """A search waits in the memory store's mailbox behind at most one part: small parts while
    searches come, big ones (faster to store) otherwise. The real store, counting what it is sent."""
    import imprint.actors.storer as storer_module
    from imprint.actors.activity import ReadActivity
    from imprint.messages.store import StoreMemories

    monkeypatch.setattr(storer_module, "STORE_PART", 50)
    monkeypatch.setattr(storer_module, "STORE_PART_SEARCHED", 20)
    parts: list[int] = []

    class CountingStore(MemoryStore):
        def handle(self, message: Any) -> Any:
            if isinstance(message, StoreMemories):
                parts.append(len(message.records))
            return super().handle(message)

    reads = ReadActivity()
    dimension = embedder.ask(DescribeModel(), timeout=30).dimension
    store = CountingStore.start(collection="imprint_test", path=tmp_path / "qdrant", dimension=dimension, reads=reads)
    facts = FactStore.start(path=tmp_path / "facts.db")
    spool = Spool(tmp_path / "spool.db")
    try:
        records = tuple(mem(f"note {i}: the {i}th shelf holds the blue binders") for i in range(120))
        spool.open_stream("s1")
        spool.append("s1", "memories", records)
        spool.complete_stream("s1")
        if searched:
            reads.saw_search()  # as the store does when it answers SearchMemories
        watcher = Recorder("session")
        storer = Storer.start(spool_path=tmp_path / "spool.db", memory_store=store, fact_store=facts,
                              embedder=embedder, reads=reads)
        storer.tell(Watch(stream="s1", listener=watcher))
        storer.tell(Wake())
        assert watcher.wait_for(StreamStored) == StreamStored(stream="s1")
        assert parts == ([20] * 6 if searched else [50, 50, 20])
        assert len(store.ask(PageMemories(limit=1000), timeout=30).records) == 120
    finally:
        spool.close()
