"""The storage interface's contract, against every engine we ship.

Qdrant Edge runs in every test run, and so does the server backend's code
against qdrant-client's in-process stand-in (the same client calls a server
gets); a real Qdrant server joins when IMPRINT_TEST_QDRANT_URL names one
(e.g. http://localhost:6333). The MemoryStore actor relies on exactly what is
asserted here, whichever engine.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import pytest

from imprint.messages.records import MemoryRecord, content_hash, finalize_memory
from imprint.messages.store import MemoryFilter
from imprint.storage import Backend, StoredMemory, StoreMeta

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:Payload indexes have no effect")]

DIM = 8
SERVER_URL = os.environ.get("IMPRINT_TEST_QDRANT_URL", "")

Opener = Callable[[], Backend]


@pytest.fixture(params=["edge", "server-in-process"] + (["server"] if SERVER_URL else []))
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Backend] = []
    if request.param == "edge":
        from imprint.storage.edge import EdgeBackend

        def make() -> Backend:
            for b in opened:  # one process holds a shard at a time: reopening means closing first
                b.close()
            opened.append(EdgeBackend(tmp_path / "memories"))
            return opened[-1]
    elif request.param == "server-in-process":
        from imprint.storage.server import ServerBackend

        def make() -> Backend:
            if not opened:
                opened.append(ServerBackend(":memory:", "imprint_contract"))
            b = opened[0]  # the stand-in lives in this client: "reopening" re-reads what it holds
            b._meta = b._read_meta() if b._client.collection_exists(b.collection) else None  # type: ignore[attr-defined]
            return b
    else:
        from imprint.storage.server import ServerBackend

        collection = f"imprint_contract_{uuid.uuid4().hex[:8]}"

        def make() -> Backend:
            opened.append(ServerBackend(SERVER_URL, collection))
            return opened[-1]
    yield make
    if request.param == "server" and opened:
        opened[-1]._client.delete_collection(opened[-1].collection)  # type: ignore[attr-defined]
    for b in opened:
        b.close()


def vectors(n: int, seed: int = 3) -> list[list[float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v = [rng.uniform(-1, 1) for _ in range(DIM)]
        norm = sum(x * x for x in v) ** 0.5
        out.append([x / norm for x in v])
    return out


def memories(n: int) -> list[MemoryRecord]:
    return [finalize_memory(MemoryRecord(content=f"memory {i}", project=f"p{i % 3}", type=("note", "decision")[i % 2],
                                         source="" if i % 4 else f"file{i}.md", timestamp=1000.0 + i))
            for i in range(n)]


def filled(open_backend: Opener, n: int = 30) -> tuple[Backend, list[MemoryRecord], list[list[float]]]:
    b = open_backend()
    b.create(StoreMeta(dimension=DIM, model="fp-1", model_name="m"))
    records, vecs = memories(n), vectors(n)
    b.upsert([StoredMemory(record=r, vector=v, model="fp-1") for r, v in zip(records, vecs)])
    return b, records, vecs


def close_to(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) < 1e-5 for x, y in zip(a, b)) and len(a) == len(b)


def test_no_store_until_created_and_meta_survives_reopen(open_backend: Opener) -> None:
    b = open_backend()
    assert b.meta() is None
    assert (b.count(MemoryFilter()), b.page(10, None), b.search(vectors(1)[0], 5, MemoryFilter())) == (0, ([], None), [])
    meta = StoreMeta(dimension=DIM, model="fp-1", model_name="m")
    b.create(meta)
    assert b.meta() == meta
    b.set_meta(StoreMeta(dimension=DIM, model="fp-2", model_name="m2"))
    assert open_backend().meta() == StoreMeta(dimension=DIM, model="fp-2", model_name="m2")


def test_written_records_and_vectors_come_back_whole(open_backend: Opener) -> None:
    b, records, vecs = filled(open_backend)
    b = open_backend()  # durable: a reopen sees every write
    got = b.retrieve((records[4].id, records[0].id, "no-such-id"), vectors=True)
    by_id = {m.record.id: m for m in got}
    assert set(by_id) == {records[0].id, records[4].id}
    assert by_id[records[4].id].record == records[4]
    assert close_to(by_id[records[4].id].vector or [], vecs[4]) and by_id[records[4].id].model == "fp-1"
    assert b.retrieve((records[1].id,))[0].vector is None  # vectors only when asked
    assert b.stored_versions((records[2].id, "absent")) == {records[2].id: (1002.0, content_hash(records[2].content))}


def test_upsert_replaces_the_same_id(open_backend: Opener) -> None:
    b, records, vecs = filled(open_backend, 5)
    earlier = MemoryRecord(**{**{f: getattr(records[0], f) for f in records[0].__struct_fields__}, "timestamp": 1.0})
    b.upsert([StoredMemory(record=earlier, vector=vecs[1], model="fp-1")])
    assert b.count(MemoryFilter()) == 5
    assert b.stored_versions((records[0].id,)) == {records[0].id: (1.0, content_hash(records[0].content))}


def test_paging_visits_each_record_once_in_a_stable_order(open_backend: Opener) -> None:
    b, records, vecs = filled(open_backend, 23)

    def walk(limit: int) -> list[str]:
        seen, after = [], None
        for _ in range(50):
            page, after = b.page(limit, after, vectors=True)
            assert len(page) <= limit and all(m.vector and len(m.vector) == DIM for m in page)
            seen += [m.record.id for m in page]
            if after is None:
                return seen
        raise AssertionError("paging does not end")

    first = walk(5)
    assert sorted(first) == sorted(r.id for r in records) and len(first) == 23
    assert walk(7) == first and walk(100) == first


def test_search_is_best_first_with_cosine_scores_and_filters(open_backend: Opener) -> None:
    b, records, vecs = filled(open_backend)
    hits = b.search(vecs[7], 5, MemoryFilter())
    assert hits[0][1] == records[7] and abs(hits[0][0] - 1.0) < 1e-4
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)
    # cosine: a scaled query scores the same
    scaled = b.search([x * 3 for x in vecs[7]], 1, MemoryFilter())
    assert abs(scaled[0][0] - 1.0) < 1e-4
    only = b.search(vecs[7], 50, MemoryFilter(project="p0", type="decision"))
    assert {r.id for _, r in only} == {r.id for r in records if r.project == "p0" and r.type == "decision"}


def test_count_facet_and_newest(open_backend: Opener) -> None:
    b, records, _ = filled(open_backend, 30)
    assert b.count(MemoryFilter()) == 30
    assert b.count(MemoryFilter(project="p1")) == 10
    assert b.count(MemoryFilter(source="")) == 22  # memories without a source are counted too
    assert sorted(b.facet("project", 10, MemoryFilter())) == [("p0", 10), ("p1", 10), ("p2", 10)]
    assert sorted(b.facet("type", 10, MemoryFilter(project="p0"))) == [("decision", 5), ("note", 5)]
    sources = dict(b.facet("source", 100, MemoryFilter()))
    assert sources.get("file0.md") == 1 and sum(n for v, n in sources.items() if v) == 8
    top = b.facet("project", 1, MemoryFilter(type="note"))
    assert len(top) == 1 and top[0][1] == 5
    newest = b.newest(MemoryFilter(), 0, 4)
    assert [r.content for r in newest] == ["memory 29", "memory 28", "memory 27", "memory 26"]
    assert [r.content for r in b.newest(MemoryFilter(project="p2"), 8, 10)] == ["memory 5", "memory 2"]


def test_counts_and_facets_stay_exact_through_changes_deletes_and_reopening(open_backend: Opener) -> None:
    """Unfiltered counts and facets may be read from the engine's indexes (Edge: 100x faster);
    they must still be the stored truth after memories change project, type or source, are
    deleted, and the store is opened again."""
    import collections

    b, records, vecs = filled(open_backend, 60)
    held = {r.id: r for r in records}
    rng = random.Random(7)

    def check() -> None:
        assert b.count(MemoryFilter()) == len(held)
        for key in ("project", "type", "source"):
            truth = collections.Counter(getattr(r, key) for r in held.values())
            assert sorted(b.facet(key, 100, MemoryFilter())) == sorted(truth.items()), key
        assert b.count(MemoryFilter(project="p1")) == sum(r.project == "p1" for r in held.values())

    for step in range(6):
        moved = [msgspec.structs.replace(r, project=rng.choice(["p0", "p1", "p3"]), type=rng.choice(["note", "fact"]),
                                         source=rng.choice(["", "x.md", f"s{step}.md"]))
                 for r in rng.sample(sorted(held.values(), key=lambda r: r.id), 10)]
        b.upsert([StoredMemory(record=r, vector=vecs[step], model="fp-1") for r in moved])
        held.update((r.id, r) for r in moved)
        gone = rng.sample(sorted(held), 4)
        b.delete(tuple(gone))
        for key in gone:
            del held[key]
        check()
    b = open_backend()
    check()


def test_versions_and_delete(open_backend: Opener) -> None:
    b, records, _ = filled(open_backend, 12)
    assert sorted(b.versions(MemoryFilter())) == sorted((r.id, r.timestamp, content_hash(r.content)) for r in records)
    assert sorted(i for i, _, _ in b.versions(MemoryFilter(project="p1"))) == sorted(r.id for r in records if r.project == "p1")
    b.delete((records[0].id, records[5].id, "0000000000000000"))
    assert b.count(MemoryFilter()) == 10
    assert b.retrieve((records[0].id, records[5].id)) == []
    assert b.search(vectors(6)[5], 12, MemoryFilter())[0][1].id != records[5].id
    # a value none of whose memories is left is no longer a facet
    b.delete(tuple(r.id for r in records if r.project == "p2"))
    assert sorted(v for v, _ in b.facet("project", 10, MemoryFilter())) == ["p0", "p1"]


def test_points_written_before_content_hashes_are_hashed_when_read(open_backend: Opener) -> None:
    """Stores written by the previous version have no content hash in their payloads:
    versions and stored versions hash those points' content instead."""
    from imprint.messages.records import memory_to_payload, point_id
    from imprint.storage import MODEL_KEY, VECTOR_NAME

    b, records, vecs = filled(open_backend, 4)
    old = finalize_memory(MemoryRecord(content="written by 0.x " * 30, timestamp=77.0))
    payload = {**memory_to_payload(old), MODEL_KEY: "fp-1"}  # as the previous version wrote it
    if hasattr(b, "_shard"):
        import qdrant_edge

        b._shard.update(qdrant_edge.UpdateOperation.upsert_points(  # type: ignore[attr-defined]
            [qdrant_edge.Point(id=point_id(old.id), vector={VECTOR_NAME: vecs[0]}, payload=payload)]))
    else:
        from qdrant_client import models

        b._client.upsert(b.collection, points=[  # type: ignore[attr-defined]
            models.PointStruct(id=point_id(old.id), vector={VECTOR_NAME: vecs[0]}, payload=payload)], wait=True)
    expected = (77.0, content_hash(old.content))
    assert b.stored_versions((old.id, records[1].id)) == {old.id: expected,
                                                         records[1].id: (1001.0, content_hash(records[1].content))}
    assert {k: (ts, h) for k, ts, h in b.versions(MemoryFilter())}[old.id] == expected
