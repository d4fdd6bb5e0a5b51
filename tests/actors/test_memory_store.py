"""MemoryStore alone, through `ask`, on a Qdrant Edge shard under tmp_path."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import pykka
import pytest

from imprint.actors import memory_store
from imprint.actors.activity import ReadActivity, SearchLane
from imprint.actors.memory_store import GetSearchLane, MemoryStore
from imprint.errors import ModelError, StoreError
from imprint.messages.records import (
    MemoryRecord,
    Tombstone,
    content_hash,
    finalize_memory,
    point_id,
)
from imprint.messages.store import (
    CountMemories,
    DescribeStore,
    EmbedTexts,
    FacetMemories,
    FindMissing,
    ForgetMemories,
    Forgotten,
    ListVersions,
    MemoryFilter,
    MemoryPage,
    NewestMemories,
    PageMemories,
    Ping,
    RetrieveMemories,
    RetrieveTombstones,
    SearchMemories,
    StoreInfo,
    StoreMemories,
    StoreResult,
    StoreTombstones,
    Versions,
)
from tests.storage.test_edge_pin import mappings_size

pytestmark = pytest.mark.timeout(120)

COLLECTION = "imprint_test"
DIM = 8

StartActor = Callable[..., pykka.ActorRef[Any]]


def memory(content: str, *, project: str = "default", source: str = "") -> MemoryRecord:
    return finalize_memory(MemoryRecord(content=content, project=project, source=source), now=1_700_000_000.0)


def unit_vectors(n: int, *, seed: int = 7, dim: int = DIM) -> list[list[float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v = [rng.uniform(-1, 1) for _ in range(dim)]
        norm = sum(x * x for x in v) ** 0.5
        out.append([x / norm for x in v])
    return out


def open_store(start_actor: StartActor, path: Path, dimension: int | None, model: str = "fp-test") -> pykka.ActorRef[Any]:
    ref = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=dimension,
                      model=model if dimension is not None else "", model_name="test-model")
    assert ref.ask(Ping(), timeout=60) is True
    return ref


def store(ref: pykka.ActorRef[Any], records: list[MemoryRecord], vectors: list[list[float]]) -> StoreResult:
    return ref.ask(StoreMemories(records=tuple(records), vectors=vectors), timeout=60)


def all_pages(ref: pykka.ActorRef[Any], limit: int) -> list[MemoryPage]:
    pages, after = [], None
    while True:
        page = ref.ask(PageMemories(limit=limit, after=after), timeout=30)
        pages.append(page)
        assert len(page.records) <= limit
        if page.next_after is None:
            return pages
        after = page.next_after
        assert len(pages) < 100, "paging does not end"


def test_find_missing_store_and_restore_inserts_nothing(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    records = [memory(f"memory number {i}") for i in range(5)]
    ids = tuple(r.id for r in records)

    assert ref.ask(FindMissing(ids=ids), timeout=30).ids == ids
    assert store(ref, records[:3], unit_vectors(3)) == StoreResult(inserted=3, skipped=0)
    # missing ids come back in input order, without the stored ones
    assert ref.ask(FindMissing(ids=ids[::-1]), timeout=30).ids == (ids[4], ids[3])

    assert store(ref, records, unit_vectors(5)) == StoreResult(inserted=2, skipped=3)
    assert store(ref, records, unit_vectors(5)) == StoreResult(inserted=0, skipped=5)
    assert ref.ask(CountMemories(), timeout=30) == 5
    assert ref.ask(FindMissing(ids=ids), timeout=30).ids == ()


def test_an_edit_past_character_200_replaces_the_text_and_an_older_one_does_not(start_actor: StartActor,
                                                                                tmp_path: Path) -> None:
    ref = open_forgetting(start_actor, tmp_path)
    head = "a long note whose first two hundred characters stay the same " * 4
    first = finalize_memory(MemoryRecord(content=head + "- version one", timestamp=100.0))
    edit = finalize_memory(MemoryRecord(content=head + "- version two", timestamp=200.0))
    assert first.id == edit.id
    store(ref, [first], unit_vectors(1))

    def offer(record: MemoryRecord) -> Any:
        return ref.ask(FindMissing(ids=(record.id,), timestamps=(record.timestamp,),
                                   hashes=(content_hash(record.content),)), timeout=30)

    assert offer(edit).ids == (edit.id,)
    result = store(ref, [edit], unit_vectors(1))
    assert (result.inserted, result.updated) == (0, 1)
    assert ref.ask(RetrieveMemories(ids=(edit.id,)), timeout=30)[0].content == edit.content
    assert ref.ask(ListVersions(), timeout=30).records == ((edit.id, 200.0, content_hash(edit.content)),)
    # The old text offered again (an old export, a peer that has not heard): ours stays, and says so.
    missing = offer(first)
    assert (missing.ids, missing.kept) == ((), (first.id,))
    assert store(ref, [first], unit_vectors(1)).updated == 0
    # The same edit, copied earlier elsewhere: the earliest copy of a text still wins.
    earlier_edit = msgspec.structs.replace(edit, timestamp=150.0)
    assert store(ref, [earlier_edit], unit_vectors(1)).updated == 1
    assert ref.ask(RetrieveMemories(ids=(edit.id,)), timeout=30)[0] == earlier_edit


def test_find_missing_tells_stored_timestamps_and_store_trusts_them(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    old, new = (finalize_memory(MemoryRecord(content=f"timed {i}", timestamp=100.0)) for i in range(2))
    store(ref, [old], unit_vectors(1))

    missing = ref.ask(FindMissing(ids=(old.id, new.id), timestamps=(50.0, 50.0)), timeout=30)
    assert missing.ids == (old.id, new.id)  # an earlier copy of `old` replaces it
    assert missing.stored == {old.id: (100.0, content_hash(old.content))}  # what the store would otherwise look up

    # Handed what FindMissing said, the store decides from it: one update, one insert.
    earlier = msgspec.structs.replace(old, timestamp=50.0)
    result = ref.ask(StoreMemories(records=(earlier, new), vectors=unit_vectors(2), stored=missing.stored), timeout=60)
    assert (result.inserted, result.updated, result.skipped) == (1, 1, 1)  # updated counts as skipped too
    # And it believes it: a record said to be stored with an earlier timestamp is skipped.
    later = finalize_memory(MemoryRecord(content="timed 2", timestamp=100.0))
    said = ref.ask(StoreMemories(records=(later,), vectors=unit_vectors(1),
                                 stored={later.id: (1.0, content_hash(later.content))}), timeout=60)
    assert (said.inserted, said.skipped) == (0, 1)
    assert ref.ask(CountMemories(), timeout=30) == 2


def test_duplicates_inside_one_batch_are_stored_once(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    twin = memory("said twice")
    assert store(ref, [twin, twin, memory("said once")], unit_vectors(3)) == StoreResult(inserted=2, skipped=1)
    assert ref.ask(CountMemories(), timeout=30) == 2


def test_stored_payload_round_trips_and_point_id_follows_spec(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    record = finalize_memory(
        MemoryRecord(content="payload check", project="p", source="a.md", chunk_index=3, source_mtime=12.5, timestamp=99.0)
    )
    store(ref, [record], unit_vectors(1))
    [page] = all_pages(ref, 10)
    assert page.records == (record,)

    # The point id is SPEC's uuid5, read straight from the shard's files with Edge itself after closing ours.
    ref.stop(timeout=30)
    import qdrant_edge

    shard = qdrant_edge.EdgeShard.load(str(tmp_path / "qdrant"))
    try:
        [point] = shard.retrieve([point_id(record.id)], with_payload=True, with_vector=False)
        assert point.payload["id"] == record.id
        assert point.payload["vector_model"] == "fp-test"
    finally:
        shard.close()


def test_paging_covers_every_record_once_in_stable_order(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    records = [memory(f"paged memory {i}", project=f"p{i % 3}") for i in range(23)]
    store(ref, records, unit_vectors(23))

    first = [r.id for p in all_pages(ref, 5) for r in p.records]
    assert len(first) == 23
    assert sorted(first) == sorted(r.id for r in records)
    # stable: point-id order, the same on every pass and for every page size
    assert first == sorted(first, key=point_id)
    assert [r.id for p in all_pages(ref, 5) for r in p.records] == first
    assert [r.id for p in all_pages(ref, 7) for r in p.records] == first
    assert [r.id for p in all_pages(ref, 100) for r in p.records] == first


def test_search_is_best_first_and_filters_by_project(
    embedder: pykka.ActorRef[Any], start_actor: StartActor, tmp_path: Path
) -> None:
    dimension = 384
    ref = open_store(start_actor, tmp_path / "qdrant", dimension)
    records = [
        memory("The espresso machine in the office kitchen is broken again.", project="work"),
        memory("Remember to water the tomato plants in the garden every morning.", project="home"),
        memory("Our team standup moved from 9am to 10am on Mondays.", project="work"),
        memory("The dog needs its vaccination appointment booked at the vet.", project="home"),
        memory("The coffee maker at work has stopped working.", project="home"),
    ]
    vectors = embedder.ask(EmbedTexts(texts=tuple(r.content for r in records)), timeout=60).vectors
    store(ref, records, vectors)
    [query] = embedder.ask(EmbedTexts(texts=("the office coffee machine is out of order",)), timeout=60).vectors

    hits = ref.ask(SearchMemories(vector=query, limit=5), timeout=30).hits
    assert len(hits) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert {hits[0].record.id, hits[1].record.id} == {records[0].id, records[4].id}
    assert hits[0].score > hits[2].score

    work = ref.ask(SearchMemories(vector=query, limit=5, project="work"), timeout=30).hits
    assert [h.record.id for h in work] == [records[0].id, records[2].id]
    assert ref.ask(SearchMemories(vector=query, limit=1, project="home"), timeout=30).hits[0].record == records[4]
    assert ref.ask(SearchMemories(vector=query, limit=5, project="nowhere"), timeout=30).hits == ()


def test_dimension_mismatch_with_existing_collection_is_a_model_error(start_actor: StartActor, tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    first = open_store(start_actor, path, DIM)
    store(first, [memory("kept")], unit_vectors(1))
    first.stop(timeout=30)

    other = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=DIM * 2)
    with pytest.raises(ModelError, match=rf"{DIM}-dimensional.*gives {DIM * 2}"):
        other.ask(Ping(), timeout=60)
    other.stop(timeout=30)

    # nothing was changed: the right dimension still opens it with its memory
    again = open_store(start_actor, path, DIM)
    assert again.ask(CountMemories(), timeout=30) == 1


def test_read_only_open_of_a_missing_collection_counts_zero(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", None)
    assert ref.ask(CountMemories(), timeout=30) == 0
    assert ref.ask(PageMemories(limit=10), timeout=30) == MemoryPage(records=(), next_after=None)
    assert ref.ask(SearchMemories(vector=[1.0] + [0.0] * 7), timeout=30).hits == ()
    record = memory("not allowed")
    assert ref.ask(FindMissing(ids=(record.id,)), timeout=30).ids == (record.id,)
    info = ref.ask(DescribeStore(), timeout=30)
    assert info == StoreInfo(location=str(tmp_path / "qdrant"), kind="edge", dimension=None, count=0)
    assert not (tmp_path / "qdrant").exists()  # reading creates nothing
    with pytest.raises(StoreError, match="read-only"):
        store(ref, [record], unit_vectors(1))


def test_read_only_open_of_an_existing_collection_learns_its_dimension(start_actor: StartActor, tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    writer = open_store(start_actor, path, DIM)
    store(writer, [memory("one"), memory("two")], unit_vectors(2))
    writer.stop(timeout=30)

    reader = open_store(start_actor, path, None)
    info = reader.ask(DescribeStore(), timeout=30)
    assert (info.dimension, info.count, info.model, info.model_name) == (DIM, 2, "fp-test", "test-model")


def test_records_and_vectors_must_pair_up(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    with pytest.raises(StoreError, match="2 records but 1 vectors"):
        store(ref, [memory("a"), memory("b")], unit_vectors(1))
    assert ref.ask(CountMemories(), timeout=30) == 0


def test_second_client_on_the_same_path_is_a_clear_store_error(start_actor: StartActor, tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    first = open_store(start_actor, path, DIM)
    store(first, [memory("held by the first client")], unit_vectors(1))

    second = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=DIM)
    with pytest.raises(StoreError, match="open in another imprint process"):
        second.ask(Ping(), timeout=60)
    # the first client is unaffected
    assert first.ask(CountMemories(), timeout=30) == 1


def test_a_store_records_its_model_and_refuses_another(start_actor: StartActor, tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    first = open_store(start_actor, path, DIM, model="fp-a")
    store(first, [memory("made by model a")], unit_vectors(1))
    # vectors said to come from another model are refused, whatever their size
    with pytest.raises(StoreError, match="model fp-b cannot go into a store of model fp-a"):
        first.ask(StoreMemories(records=(memory("from b"),), vectors=unit_vectors(1), model="fp-b"), timeout=60)
    first.stop(timeout=30)

    other = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=DIM, model="fp-b", model_name="b")
    with pytest.raises(ModelError, match="fingerprint fp-a.*fingerprint fp-b"):
        other.ask(Ping(), timeout=60)
    other.stop(timeout=30)
    again = open_store(start_actor, path, DIM, model="fp-a")
    assert again.ask(CountMemories(), timeout=30) == 1


def test_a_store_without_a_fingerprint_adopts_the_running_model(start_actor: StartActor, tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    first = open_store(start_actor, path, DIM, model="")
    store(first, [memory("from before fingerprints")], unit_vectors(1))
    first.stop(timeout=30)

    second = open_store(start_actor, path, DIM, model="fp-now")
    assert second.ask(DescribeStore(), timeout=30).model == "fp-now"
    second.stop(timeout=30)
    assert open_store(start_actor, path, None).ask(DescribeStore(), timeout=30).model == "fp-now"


def test_count_facet_and_newest_answer_from_the_store(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_store(start_actor, tmp_path / "qdrant", DIM)
    records = [
        finalize_memory(MemoryRecord(content=f"fact {i}", project=f"p{i % 3}", type="note" if i % 2 else "decision",
                                     source="" if i < 4 else "a.md", timestamp=1000.0 + i))
        for i in range(10)
    ]
    store(ref, records, unit_vectors(10))

    assert ref.ask(CountMemories(where=MemoryFilter(project="p0")), timeout=30) == 4
    assert ref.ask(CountMemories(where=MemoryFilter(project="p0", type="note")), timeout=30) == 2
    facets = ref.ask(FacetMemories(key="project", limit=10), timeout=30)
    assert sorted((f.value, f.count) for f in facets) == [("p0", 4), ("p1", 3), ("p2", 3)]
    by_type = ref.ask(FacetMemories(key="type", limit=1, where=MemoryFilter(project="p1")), timeout=30)
    assert [(f.value, f.count) for f in by_type] == [("note", 2)]  # p1 holds i = 1, 4, 7

    newest = ref.ask(NewestMemories(limit=3), timeout=30)
    assert [r.content for r in newest] == ["fact 9", "fact 8", "fact 7"]
    second_page = ref.ask(NewestMemories(offset=3, limit=3, where=MemoryFilter(project="p0")), timeout=30)
    assert [r.content for r in second_page] == ["fact 0"]  # p0 is 9, 6, 3, 0
    assert ref.ask(NewestMemories(where=MemoryFilter(source="a.md"), limit=100), timeout=30)[-1].content == "fact 4"


def open_forgetting(start_actor: StartActor, tmp_path: Path, dimension: int | None = DIM, **kw: Any) -> pykka.ActorRef[Any]:
    ref = start_actor(MemoryStore, collection=COLLECTION, path=tmp_path / "qdrant", dimension=dimension,
                      model="fp-test" if dimension else "", forgotten_path=tmp_path / "forgotten.db", **kw)
    assert ref.ask(Ping(), timeout=60) is True
    return ref


def test_forgetting_removes_leaves_a_tombstone_and_refuses_older_copies(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_forgetting(start_actor, tmp_path)
    records = [finalize_memory(MemoryRecord(content=f"forgettable {i}", project="p", timestamp=100.0 + i)) for i in range(4)]
    store(ref, records, unit_vectors(4))

    done = ref.ask(ForgetMemories(deleted_at=500.0, ids=(records[0].id, "0000000000000000")), timeout=30)
    assert done == Forgotten(forgotten=(records[0].id,), unknown=("0000000000000000",))
    assert ref.ask(CountMemories(), timeout=30) == 3
    assert ref.ask(RetrieveTombstones(keys=(records[0].id, records[1].id)), timeout=30) == (
        Tombstone("memories", records[0].id, 500.0),)

    # The same memory offered again (an old export, a peer that has not heard): skipped as forgotten.
    missing = ref.ask(FindMissing(ids=(records[0].id,), timestamps=(100.0,)), timeout=30)
    assert (missing.ids, missing.forgotten) == ((), (records[0].id,))
    result = store(ref, [records[0]], unit_vectors(1))
    assert (result.inserted, result.forgotten) == (0, 1)
    # Added again later, on purpose: it lives.
    again = msgspec.structs.replace(records[0], timestamp=900.0)
    assert store(ref, [again], unit_vectors(1)).inserted == 1

    # Forgetting by filter; a tombstone covers a copy from the future too.
    future = finalize_memory(MemoryRecord(content="from a fast clock", project="q", timestamp=10_000.0))
    store(ref, [future], unit_vectors(1))
    assert len(ref.ask(ForgetMemories(deleted_at=600.0, where=MemoryFilter(project="q")), timeout=30).forgotten) == 1
    assert ref.ask(RetrieveTombstones(keys=(future.id,)), timeout=30)[0].deleted_at == 10_000.0
    versions = ref.ask(ListVersions(), timeout=30)
    assert sorted(k for k, _, _ in versions.records) == sorted(r.id for r in (again, *records[1:]))
    assert dict(versions.tombstones) == {records[0].id: 500.0, future.id: 10_000.0}


def test_tombstones_from_elsewhere_remove_only_copies_not_newer(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_forgetting(start_actor, tmp_path)
    old, new = (finalize_memory(MemoryRecord(content=c, timestamp=t)) for c, t in (("old one", 100.0), ("new one", 900.0)))
    store(ref, [old, new], unit_vectors(2))
    result = ref.ask(StoreTombstones(tombstones=(Tombstone("memories", old.id, 500.0), Tombstone("memories", new.id, 500.0))),
                     timeout=30)
    assert (result.inserted, result.forgotten) == (2, 1)
    assert [r.id for r in ref.ask(RetrieveMemories(ids=(old.id, new.id)), timeout=30)] == [new.id]
    # the same tombstones again change nothing
    assert ref.ask(StoreTombstones(tombstones=(Tombstone("memories", old.id, 500.0),)), timeout=30).inserted == 0


def test_what_a_peers_tombstones_remove_goes_to_the_trash_with_its_vector(start_actor: StartActor,
                                                                          tmp_path: Path) -> None:
    from imprint.messages.records import vector_from_field
    from imprint.messages.store import ListTrash, RemoveTrash

    ref = open_forgetting(start_actor, tmp_path)
    old, new = (finalize_memory(MemoryRecord(content=c, timestamp=t)) for c, t in (("old one", 100.0), ("new one", 900.0)))
    vectors = unit_vectors(2)
    store(ref, [old, new], vectors)
    ref.ask(StoreTombstones(tombstones=(Tombstone("memories", old.id, 500.0), Tombstone("memories", new.id, 500.0)),
                            peer="ab12" * 16), timeout=30)
    [entry] = ref.ask(ListTrash(), timeout=30)
    assert (entry.dataset, entry.key, entry.peer, entry.deleted_at, entry.model) == ("memories", old.id, "ab12" * 16,
                                                                                     500.0, "fp-test")
    assert msgspec.msgpack.decode(entry.record, type=MemoryRecord) == old
    assert vector_from_field(entry.vector, DIM) == pytest.approx(vectors[0], abs=1e-6)
    assert ref.ask(ListTrash(peer="AB12"), timeout=30) == (entry,)  # by a fingerprint's start, any case
    assert ref.ask(ListTrash(peer="cd"), timeout=30) == ()
    assert ref.ask(ListTrash(since=entry.trashed_at + 1), timeout=30) == ()
    # the user's own forget does not go to the trash
    ref.ask(ForgetMemories(deleted_at=1000.0, ids=(new.id,)), timeout=30)
    assert len(ref.ask(ListTrash(), timeout=30)) == 1
    assert ref.ask(RemoveTrash(ids=(entry.id,)), timeout=30) == 1
    assert ref.ask(ListTrash(), timeout=30) == ()


def test_a_crash_between_tombstone_and_delete_is_finished_on_open(start_actor: StartActor, tmp_path: Path) -> None:
    import sqlite3

    ref = open_forgetting(start_actor, tmp_path)
    record = memory("half forgotten")
    store(ref, [record], unit_vectors(1))
    ref.stop(timeout=30)
    db = sqlite3.connect(tmp_path / "forgotten.db")  # the tombstone was written, then the process died
    db.execute("INSERT INTO forgotten (key, deleted_at) VALUES (?, ?)", (record.id, 2e9))
    db.commit()
    db.close()
    assert open_forgetting(start_actor, tmp_path).ask(CountMemories(), timeout=30) == 0


def test_read_only_creates_no_tombstone_file(start_actor: StartActor, tmp_path: Path) -> None:
    ref = open_forgetting(start_actor, tmp_path, dimension=None, read_only=True)
    assert ref.ask(ListVersions(), timeout=30) == Versions(records=(), tombstones=())
    assert not (tmp_path / "forgotten.db").exists()


def test_the_version_index_follows_every_write_and_rebuilds_when_off(start_actor: StartActor, tmp_path: Path) -> None:
    import sqlite3

    ref = open_forgetting(start_actor, tmp_path)
    records = [finalize_memory(MemoryRecord(content=f"indexed {i}", timestamp=100.0 + i)) for i in range(6)]
    store(ref, records, unit_vectors(6))
    ref.ask(ForgetMemories(deleted_at=500.0, ids=(records[0].id,)), timeout=30)
    earlier = msgspec.structs.replace(records[1], timestamp=50.0)
    store(ref, [earlier], unit_vectors(1))
    expected = sorted([(earlier.id, 50.0, content_hash(earlier.content))]
                      + [(r.id, r.timestamp, content_hash(r.content)) for r in records[2:]])
    assert sorted(ref.ask(ListVersions(), timeout=30).records) == expected
    ref.stop(timeout=30)

    # The index lost a row (a crash between the store's write and its own): rebuilt on open.
    db = sqlite3.connect(tmp_path / "forgotten.db")
    db.execute("DELETE FROM memory_versions WHERE id = ?", (records[3].id,))
    db.commit()
    db.close()
    assert sorted(open_forgetting(start_actor, tmp_path).ask(ListVersions(), timeout=30).records) == expected


def test_the_kept_summary_follows_every_write(start_actor: StartActor, tmp_path: Path) -> None:
    import sqlite3

    from imprint.messages.store import SummarizeVersions
    from imprint.protocol.items import items_of
    from imprint.protocol.reconcile import item_hash

    ref = open_forgetting(start_actor, tmp_path)

    def check() -> None:
        versions = ref.ask(ListVersions(), timeout=30)
        items = items_of(versions.records, (), versions.tombstones)
        summary = ref.ask(SummarizeVersions(), timeout=30)
        assert (summary.count, summary.total) == (len(items), sum(item_hash(i) for i in items) % (1 << 128))

    check()
    head = "summarised " * 30
    records = [finalize_memory(MemoryRecord(content=f"{head}{i}", timestamp=100.0 + i)) for i in range(6)]
    store(ref, records, unit_vectors(6))
    check()
    store(ref, [msgspec.structs.replace(records[0], timestamp=50.0)], unit_vectors(1))  # an earlier copy
    ref.ask(ForgetMemories(deleted_at=500.0, ids=(records[1].id,)), timeout=30)
    ref.ask(StoreTombstones(tombstones=(Tombstone("memories", records[1].id, 600.0),
                                        Tombstone("memories", records[2].id, 700.0))), timeout=30)
    check()
    ref.stop(timeout=30)
    db = sqlite3.connect(tmp_path / "forgotten.db")  # rows whose sums were never kept
    db.execute("UPDATE memory_versions SET h0 = NULL, h1 = NULL, h2 = NULL, h3 = NULL")
    db.execute("UPDATE forgotten SET h0 = NULL")
    db.commit()
    db.close()
    ref = open_forgetting(start_actor, tmp_path)
    check()


def test_timestamps_are_kept_to_the_microsecond_exactly_as_the_index_says(start_actor: StartActor, tmp_path: Path) -> None:
    """Edge reads back ~1 float in 8 one ulp off; six decimals come back exact. Both sides of a
    sync must hold the same number, so the store writes (and compares) stored_time(ts)."""
    from imprint.messages.records import stored_time

    ref = open_forgetting(start_actor, tmp_path)
    rng = random.Random(3)
    records = [finalize_memory(MemoryRecord(content=f"timed {i}", timestamp=1.7e9 + rng.random() * 1e8))
               for i in range(300)]
    store(ref, records, unit_vectors(300))
    expected = {r.id: stored_time(r.timestamp) for r in records}
    assert {k: ts for k, ts, _ in ref.ask(ListVersions(), timeout=30).records} == expected  # the index
    stored = {r.id: r.timestamp for r in ref.ask(RetrieveMemories(ids=tuple(expected)), timeout=30)}
    assert stored == expected  # what Edge holds, to the bit
    # The same records offered again (e.g. by a peer, unrounded) are the same memory, not earlier copies.
    missing = ref.ask(FindMissing(ids=tuple(r.id for r in records), timestamps=tuple(r.timestamp for r in records)),
                      timeout=30)
    assert missing.ids == () and missing.kept == ()


def test_memories_and_tombstones_dated_ahead_are_repaired_once_on_open(start_actor: StartActor, tmp_path: Path) -> None:
    import time

    from imprint.messages.records import MAX_CLOCK_SKEW

    year_3000 = 32503680000.0
    ref = open_forgetting(start_actor, tmp_path)
    frozen = finalize_memory(MemoryRecord(content="the runbook's tail, 'edited' in year 3000", timestamp=year_3000))
    fine = finalize_memory(MemoryRecord(content="an honest note", timestamp=1000.0))
    store(ref, [frozen, fine], unit_vectors(2))
    blocker = memory("a text someone forgot 'forever'")
    ref.ask(StoreTombstones(tombstones=(Tombstone("memories", blocker.id, year_3000),)), timeout=30)
    ref.stop(timeout=30)

    before = time.time()
    ref = open_forgetting(start_actor, tmp_path)
    [repaired] = ref.ask(RetrieveMemories(ids=(frozen.id,)), timeout=30)
    assert before <= repaired.timestamp <= time.time() + 1 and repaired.content == frozen.content
    [mark] = ref.ask(RetrieveTombstones(keys=(blocker.id,)), timeout=30)
    assert mark.deleted_at < before + MAX_CLOCK_SKEW
    versions = ref.ask(ListVersions(), timeout=30)
    assert {k: ts for k, ts, _ in versions.records} == {frozen.id: repaired.timestamp, fine.id: 1000.0}
    # repairs are possible again: the text added now is newer than the clamped tombstone
    later = msgspec.structs.replace(blocker, timestamp=time.time() + 5)
    assert store(ref, [later], unit_vectors(1)).inserted == 1


def test_a_peers_unchecked_vectors_are_listed_hidden_from_reads_and_resolved(start_actor: StartActor,
                                                                             tmp_path: Path) -> None:
    from imprint.messages.store import (
        DescribeVectorChecks,
        PageMemories,
        ResolveUnverified,
        StoreMemories,
        TakeUnverified,
    )

    ref = open_forgetting(start_actor, tmp_path)
    a, b, c = (memory(f"received note {n}") for n in "abc")
    vectors = unit_vectors(3)
    ref.ask(StoreMemories(records=(a, b, c), vectors=vectors, unverified=(a.id, b.id), peer="0a0a0a0a"), timeout=30)
    assert ref.ask(DescribeVectorChecks(), timeout=30).waiting == 2
    # a sync or an export gets no vector for them; the check does
    page = ref.ask(PageMemories(limit=10, vectors=True), timeout=30)
    shown = {r.id: (v, m) for r, v, m in zip(page.records, page.vectors, page.models)}
    assert shown[a.id] == ([], "") and shown[b.id] == ([], "") and shown[c.id][1] == "fp-test"
    hidden = ref.ask(RetrieveMemories(ids=(a.id,), vectors=True), timeout=30)
    assert hidden.vectors == ([],)
    full = ref.ask(RetrieveMemories(ids=(a.id,), vectors=True, unverified=True), timeout=30)
    assert full.vectors[0] == pytest.approx(vectors[0], abs=1e-6)
    # a distrusted peer's go first; a replaced vector is ours from then on
    other = memory("from another")
    ref.ask(StoreMemories(records=(other,), vectors=unit_vectors(1, seed=3), unverified=(other.id,), peer="0b0b0b0b"),
            timeout=30)
    ours = unit_vectors(1, seed=9)[0]
    assert ref.ask(ResolveUnverified(replaced=(a.id,), vectors=[ours], distrust="0a0a0a0a"), timeout=30) == 1
    assert [u.peer for u in ref.ask(TakeUnverified(limit=10), timeout=30)] == ["0a0a0a0a", "0b0b0b0b"]
    assert ref.ask(RetrieveMemories(ids=(a.id,), vectors=True), timeout=30).vectors[0] == pytest.approx(ours, abs=1e-6)
    checks = ref.ask(DescribeVectorChecks(), timeout=30)
    assert checks.waiting == 2 and checks.distrusted == ("0a0a0a0a",)
    # forgotten: no longer waiting
    ref.ask(ForgetMemories(deleted_at=2e9, ids=(b.id,)), timeout=30)
    assert [u.id for u in ref.ask(TakeUnverified(limit=10), timeout=30)] == [other.id]


class HeldReads(ReadActivity):
    """The store's search signal, held in the actor's thread until released: the mailbox is busy
    for as long as the test wants, with no clock involved."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def saw_search(self) -> None:
        super().saw_search()
        if threading.current_thread() is not threading.main_thread():
            self.entered.set()
            assert self.release.wait(60)


def test_the_search_lane_answers_while_the_mailbox_is_busy_and_closes_with_the_store(start_actor: StartActor,
                                                                                     tmp_path: Path) -> None:
    reads = HeldReads()
    ref = start_actor(MemoryStore, collection=COLLECTION, path=tmp_path / "qdrant", dimension=DIM, model="fp-test",
                      model_name="test-model", reads=reads)
    records = [memory(f"memory number {i}") for i in range(3)]
    vectors = unit_vectors(4)
    store(ref, records, vectors[:3])
    lane = ref.ask(GetSearchLane(), timeout=30)
    query = SearchMemories(vector=vectors[1], limit=3)

    held = ref.ask(query, block=False)  # the actor's thread now waits in the middle of a search
    assert reads.entered.wait(30)
    late = memory("a memory written while a search holds the mailbox")
    write = ref.ask(StoreMemories(records=(late,), vectors=[vectors[3]]), block=False)
    try:
        hits = lane.search(query)  # in this thread, beside the queued write
        assert hits.hits[0].record.id == records[1].id and len(hits.hits) == 3
        assert reads.recent(60)  # the Storer hears of lane searches too
        with pytest.raises(pykka.Timeout):
            write.get(timeout=0)  # the write is still queued: the lane did not wait for it
    finally:
        reads.release.set()
    assert held.get(timeout=30) == hits
    write.get(timeout=30)
    assert len(lane.search(query).hits) == 3  # the same lane sees the new write's store
    with pytest.raises(StoreError, match="memory store error at"):  # worded as the mailbox words it
        lane.search(SearchMemories(vector=[1.0, 0.0], limit=3))
    with pytest.raises(TypeError):
        lane.search(CountMemories())  # a lane for searches only: never a write beside the mailbox

    ref.stop(timeout=30)
    assert lane.search(query) is None  # closed with the store: callers ask the actor (a new one) instead


def test_a_closing_search_lane_waits_for_the_searches_under_way() -> None:
    lane = SearchLane()
    started, finish = threading.Event(), threading.Event()

    def search(answer: str) -> str:
        started.set()
        assert finish.wait(30)
        return answer

    lane.open(search)
    result: list[str | None] = []
    searching = threading.Thread(target=lambda: result.append(lane.search("found")))
    searching.start()
    assert started.wait(30)
    closing = threading.Thread(target=lane.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive()  # the store is not closed under the search
    assert lane.search("too late") is None  # while no new one starts
    finish.set()
    closing.join(30)
    searching.join(30)
    assert not closing.is_alive() and result == ["found"]


def test_while_searches_come_a_write_is_flushed_when_they_pause_or_on_the_way_out(
        start_actor: StartActor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pause of 3 s: the check below that nothing was flushed yet cannot be overtaken by a slow machine.
    monkeypatch.setattr(memory_store, "FLUSH_QUIET", 3.0)
    reads = ReadActivity()
    path = tmp_path / "qdrant"
    ref = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=DIM, model="fp-test",
                      model_name="test-model", reads=reads)
    vectors = unit_vectors(3)
    before = mappings_size(path)
    store(ref, [memory("written while nobody searches")], vectors[:1])
    assert mappings_size(path) > before  # flushed as it was written
    before = mappings_size(path)

    reads.saw_search()
    store(ref, [memory("written while searches come")], vectors[1:2])
    assert mappings_size(path) == before  # not flushed yet: no search waits behind the fsyncs
    assert ref.ask(CountMemories(), timeout=30) == 2  # and read like any other
    deadline = time.monotonic() + 30
    while mappings_size(path) == before:  # flushed once searches pause (FLUSH_QUIET)
        assert time.monotonic() < deadline, "the deferred flush never came"
        time.sleep(0.05)

    before = mappings_size(path)
    reads.saw_search()
    store(ref, [memory("written just before the store stops")], vectors[2:3])
    ref.stop(timeout=30)
    assert mappings_size(path) > before


def test_searches_that_never_pause_delay_a_flush_by_flush_after_at_most(start_actor: StartActor, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_store, "FLUSH_AFTER", 1.0)
    # Looked at every 2 s: a stall of this test's loop cannot pass for a pause of the searches.
    monkeypatch.setattr(memory_store, "FLUSH_QUIET", 2.0)
    reads = ReadActivity()
    path = tmp_path / "qdrant"
    ref = start_actor(MemoryStore, collection=COLLECTION, path=path, dimension=DIM, model="fp-test",
                      model_name="test-model", reads=reads)
    store(ref, [memory("the first")], unit_vectors(1))
    before = mappings_size(path)
    reads.saw_search()
    written = time.monotonic()
    store(ref, [memory("written among endless searches")], unit_vectors(1, seed=3))
    while mappings_size(path) == before:
        reads.saw_search()  # a search every 10 ms, never a pause
        assert time.monotonic() - written < 30, "the deferred flush never came"
        time.sleep(0.01)
    assert time.monotonic() - written >= 1.0
