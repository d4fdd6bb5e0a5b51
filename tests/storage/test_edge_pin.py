"""What we rely on in Qdrant Edge, asserted directly against the engine.

Edge is in beta and its API moves between releases, so it is pinned in
setup.cfg. Upgrading the pin? This file must pass first: each test names one
behaviour imprint's EdgeBackend depends on, and fails loudly if it changed.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

PINNED = "0.9.0"


def test_the_pinned_version_is_installed() -> None:
    assert version("qdrant-edge-py") == PINNED, "qdrant-edge-py changed: run tests/storage/test_edge_pin.py, then move PINNED"


def make(path: Path, dim: int = 4) -> Any:
    import qdrant_edge as q

    config = q.EdgeConfig(vectors={"dense": q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine)})
    return q.EdgeShard.create(str(path), config)


def points(n: int) -> list[Any]:
    import qdrant_edge as q

    return [q.Point(id=str(uuid.UUID(int=i + 1)), vector={"dense": [1.0 + i, 2.0, 0.0, 0.5]},
                    payload={"project": f"p{i % 2}", "timestamp": float(i)}) for i in range(n)]


def test_points_round_trip_with_uuid_ids_and_named_vectors(tmp_path: Path) -> None:
    import qdrant_edge as q

    shard = make(tmp_path / "s")
    shard.update(q.UpdateOperation.upsert_points(points(3)))
    [p] = shard.retrieve([str(uuid.UUID(int=2))], with_payload=True, with_vector=["dense"])
    assert str(p.id) == str(uuid.UUID(int=2))  # ids come back as UUIDs; we compare their str
    assert p.payload == {"project": "p1", "timestamp": 1.0}
    vec = p.vector["dense"] if isinstance(p.vector, dict) else p.vector
    # Cosine vectors are stored normalised: what we read back is the unit vector.
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-5
    shard.close()


def test_flush_close_and_load_keep_what_was_written(tmp_path: Path) -> None:
    import qdrant_edge as q

    shard = make(tmp_path / "s")
    shard.update(q.UpdateOperation.upsert_points(points(5)))
    shard.flush()
    shard.close()
    again = q.EdgeShard.load(str(tmp_path / "s"))
    assert again.count(q.CountRequest(exact=True)) == 5
    again.close()


def test_an_update_not_flushed_survives_a_killed_process_and_a_flush_writes_the_id_mappings(tmp_path: Path) -> None:
    """MemoryStore defers flushes while searches come (FLUSH_WINDOW): that is safe from a crash
    of the process only because Edge's write-ahead log is mapped memory, written on update."""
    import qdrant_edge as q

    path = tmp_path / "s"
    make(path).close()
    code = (f"import os, signal, uuid, qdrant_edge as q\nshard = q.EdgeShard.load({str(path)!r})\n"
            "pts = [q.Point(id=str(uuid.UUID(int=i + 1)), vector={'dense': [1.0 + i, 2.0, 0.0, 0.5]}, payload={})"
            " for i in range(7)]\nshard.update(q.UpdateOperation.upsert_points(pts))\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    again = q.EdgeShard.load(str(path))
    assert again.count(q.CountRequest(exact=True)) == 7
    # What tests/actors/test_memory_store.py reads to tell a flush happened: the id mappings grow.
    before = mappings_size(path)
    again.update(q.UpdateOperation.upsert_points(points(9)[7:]))
    assert mappings_size(path) == before
    again.flush()
    assert mappings_size(path) > before
    again.close()


def mappings_size(path: Path) -> int:
    """Bytes of the shard's id mappings, which Edge appends to on flush only."""
    return sum(f.stat().st_size for f in path.glob("segments/*/mutable_id_tracker.mappings"))


def test_a_second_process_cannot_load_an_open_shard(tmp_path: Path) -> None:
    shard = make(tmp_path / "s")
    code = f"import qdrant_edge as q\ntry:\n q.EdgeShard.load({str(tmp_path / 's')!r})\nexcept Exception as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "WouldBlock" in out, out  # EdgeBackend turns exactly this into "open in another imprint process"
    shard.close()


def test_scroll_pages_by_offset_in_id_order(tmp_path: Path) -> None:
    import qdrant_edge as q

    shard = make(tmp_path / "s")
    shard.update(q.UpdateOperation.upsert_points(points(7)))
    seen, offset = [], None
    while True:
        page, offset = shard.scroll(q.ScrollRequest(offset=offset if offset is None else str(offset), limit=3,
                                                    with_payload=False, with_vector=False))
        seen += [str(p.id) for p in page]
        if offset is None:
            break
    assert seen == [str(uuid.UUID(int=i + 1)) for i in range(7)]
    shard.close()


def test_facet_needs_a_keyword_index_and_counts_exactly(tmp_path: Path) -> None:
    import qdrant_edge as q

    shard = make(tmp_path / "s")
    shard.update(q.UpdateOperation.upsert_points(points(5)))
    with pytest.raises(Exception):
        shard.facet(q.FacetRequest(key="project", limit=10, exact=True))
    shard.update(q.UpdateOperation.create_field_index("project", q.PayloadSchemaType.Keyword))
    hits = shard.facet(q.FacetRequest(key="project", limit=10, exact=True)).hits
    assert sorted((str(h.value), int(h.count)) for h in hits) == [("p0", 3), ("p1", 2)]
    shard.close()


def test_order_by_and_filtered_exact_search(tmp_path: Path) -> None:
    import qdrant_edge as q

    shard = make(tmp_path / "s")
    shard.update(q.UpdateOperation.create_field_index("timestamp", q.PayloadSchemaType.Float))
    shard.update(q.UpdateOperation.create_field_index("project", q.PayloadSchemaType.Keyword))
    shard.update(q.UpdateOperation.upsert_points(points(6)))
    newest = shard.query(q.QueryRequest(limit=2, offset=1, query=q.OrderBy(key="timestamp", direction=q.Direction.Desc),
                                        with_payload=True))
    assert [p.payload["timestamp"] for p in newest] == [4.0, 3.0]
    where = q.Filter(must=[q.FieldCondition(key="project", match=q.MatchValue("p1"))])
    hits = shard.query(q.QueryRequest(limit=10, query=q.Query.Nearest([1.0, 2.0, 0.0, 0.5], using="dense"),
                                      filter=where, with_payload=True))
    assert {p.payload["project"] for p in hits} == {"p1"} and len(hits) == 3
    assert hits[0].score >= hits[-1].score
    assert shard.count(q.CountRequest(exact=True, filter=where)) == 3
    shard.close()


def test_vectors_can_stay_cold_on_disk(tmp_path: Path) -> None:
    import qdrant_edge as q

    cold = q.EdgeVectorParams(size=4, distance=q.Distance.Cosine, memory=q.Memory.Cold)
    shard = q.EdgeShard.create(str(tmp_path / "s"), q.EdgeConfig(vectors={"dense": cold}))
    shard.update(q.UpdateOperation.upsert_points(points(4)))
    hits = shard.query(q.QueryRequest(limit=1, query=q.Query.Nearest([4.0, 2.0, 0.0, 0.5], using="dense")))
    assert str(hits[0].id) == str(uuid.UUID(int=4))
    shard.close()
