"""A store made the way older versions made it (qdrant-client's local mode under
DATA_DIR/qdrant) moves to Qdrant Edge on first use: vectors kept, the old store
kept until the copy checks out, a crash at any point leaving a usable store."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from qdrant_client import QdrantClient, models

from imprint.config import Settings
from imprint.errors import StoreError
from imprint.messages.records import (
    MemoryRecord,
    finalize_memory,
    memory_to_payload,
    point_id,
)
from imprint.messages.store import EmbedTexts, MemoryFilter
from imprint.storage import StoredMemory
from imprint.storage.edge import EdgeBackend, read_meta
from imprint.storage.legacy import BATCH, LegacyStore, migrate

pytestmark = pytest.mark.timeout(180)

DIM = 8


def records(n: int, word: str = "memory") -> list[MemoryRecord]:
    return [finalize_memory(MemoryRecord(content=f"{word} number {i}", project=f"p{i % 2}", source=f"s{i % 5}.md",
                                         timestamp=1_600_000_000.0 + i)) for i in range(n)]


def unit(n: int, dim: int = DIM) -> list[list[float]]:
    rng = random.Random(5)
    out = []
    for _ in range(n):
        v = [rng.uniform(-1, 1) for _ in range(dim)]
        norm = sum(x * x for x in v) ** 0.5
        out.append([x / norm for x in v])
    return out


def make_old_store(root: Path, collection: str, recs: list[MemoryRecord], vecs: list[list[float]]) -> None:
    """Exactly how the previous version wrote memories: qdrant-client, local mode."""
    client = QdrantClient(path=str(root))
    try:
        client.create_collection(collection, vectors_config={
            "dense": models.VectorParams(size=len(vecs[0]), distance=models.Distance.COSINE)})
        for start in range(0, len(recs), 256):
            client.upsert(collection, points=[
                models.PointStruct(id=point_id(r.id), vector={"dense": v}, payload=memory_to_payload(r))
                for r, v in zip(recs[start:start + 256], vecs[start:start + 256])])
    finally:
        client.close()


def read_old_store(root: Path, collection: str) -> dict[str, MemoryRecord]:
    client = QdrantClient(path=str(root))
    try:
        points, _ = client.scroll(collection, limit=100_000, with_payload=True)
        return {p.payload["id"]: MemoryRecord(**{k: v for k, v in p.payload.items()}) for p in points}
    finally:
        client.close()


@pytest.fixture
def old(tmp_path: Path) -> Iterator[tuple[LegacyStore, list[MemoryRecord], list[list[float]]]]:
    recs, vecs = records(1_234), unit(1_234)
    make_old_store(tmp_path / "qdrant", "imprint_default", recs, vecs)
    yield LegacyStore(tmp_path / "qdrant", "imprint_default"), recs, vecs


def test_migration_copies_every_record_and_vector_then_removes_the_old_store(old: Any, tmp_path: Path) -> None:
    legacy, recs, vecs = old
    seen: list[tuple[int, int]] = []
    target = tmp_path / "workspaces" / "default" / "memories"
    target.parent.mkdir(parents=True)

    assert migrate(legacy, target, model="fp-x", model_name="mini", progress=lambda d, t: seen.append((d, t))) == 1234
    assert seen[-1] == (1234, 1234) and len(seen) >= 1234 // BATCH  # a progress bar has something to show

    meta = read_meta(target)
    assert (meta.dimension, meta.model, meta.model_name) == (DIM, "fp-x", "mini")
    assert meta.migrated_from.startswith("qdrant-client local mode")
    new = EdgeBackend(target)
    try:
        stored = {m.record.id: m for m in new.retrieve(tuple(r.id for r in recs), vectors=True)}
        assert len(stored) == 1234 and new.count(MemoryFilter()) == 1234
        for r, v in zip(recs, vecs):
            got = stored[r.id]
            assert got.record == r and got.model == "fp-x"
            assert max(abs(a - b) for a, b in zip(got.vector, v)) < 1e-5  # the same vector, not re-embedded
    finally:
        new.close()
    assert not (tmp_path / "qdrant").exists()  # the only collection gone: the old folder with it
    assert not target.with_name("memories.migrating").exists()


def test_an_interrupted_migration_leaves_the_old_store_usable_and_runs_again(old: Any, tmp_path: Path) -> None:
    legacy, recs, _ = old
    target = tmp_path / "memories"

    def crash(done: int, total: int) -> None:
        if done >= BATCH:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) halfway through the copy

    with pytest.raises(KeyboardInterrupt):
        migrate(legacy, target, model="fp-x", model_name="mini", progress=crash)
    assert not target.exists() and not target.with_name("memories.migrating").exists()
    # The old store is as it was, and older versions' own client still reads all of it.
    assert len(read_old_store(tmp_path / "qdrant", "imprint_default")) == len(recs)

    assert migrate(legacy, target, model="fp-x", model_name="mini") == len(recs)


def test_a_copy_that_does_not_check_out_keeps_the_old_store(old: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    legacy, recs, _ = old
    real_upsert = EdgeBackend.upsert

    def lossy(self: EdgeBackend, memories: list[StoredMemory]) -> None:
        real_upsert(self, memories[:-1] if len(memories) > 1 else memories)  # a disk that drops a write

    monkeypatch.setattr(EdgeBackend, "upsert", lossy)
    with pytest.raises(StoreError, match="migration check failed.*old store is kept"):
        migrate(legacy, tmp_path / "memories", model="fp-x", model_name="mini")
    assert not (tmp_path / "memories").exists()
    assert len(read_old_store(tmp_path / "qdrant", "imprint_default")) == len(recs)


def test_an_old_store_in_use_is_not_migrated_under_it(old: Any, tmp_path: Path) -> None:
    legacy, _, _ = old
    holder = QdrantClient(path=str(tmp_path / "qdrant"))  # an older imprint still running
    try:
        with pytest.raises(StoreError, match="open in another process"):
            migrate(legacy, tmp_path / "memories", model="fp-x", model_name="mini")
    finally:
        holder.close()
    assert not (tmp_path / "memories").exists()


def test_other_workspaces_stay_in_the_old_folder_until_their_turn(tmp_path: Path) -> None:
    a, b = records(3, "alpha"), records(4, "beta")
    make_old_store(tmp_path / "qdrant", "imprint_a", a, unit(3))
    make_old_store(tmp_path / "qdrant", "imprint_b", b, unit(4))
    migrate(LegacyStore(tmp_path / "qdrant", "imprint_a"), tmp_path / "a", model="fp", model_name="m")
    assert set(json.loads((tmp_path / "qdrant" / "meta.json").read_text())["collections"]) == {"imprint_b"}
    assert len(read_old_store(tmp_path / "qdrant", "imprint_b")) == 4
    migrate(LegacyStore(tmp_path / "qdrant", "imprint_b"), tmp_path / "b", model="fp", model_name="m")
    assert not (tmp_path / "qdrant").exists()


def test_the_cli_migrates_on_first_use_and_search_and_export_see_everything(
    embedder: Any, imprint_cli: Callable[..., Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    texts = ["The lighthouse keeper repainted the spiral staircase red.", "Invoices are due on the first Monday.",
             "The cat prefers the blue cushion by the window."] + [f"filler memory {i}" for i in range(40)]
    recs = [finalize_memory(MemoryRecord(content=t, project="home", timestamp=1_600_000_000.0 + i))
            for i, t in enumerate(texts)]
    vecs = embedder.ask(EmbedTexts(texts=tuple(texts)), timeout=120).vectors
    make_old_store(data / "qdrant", Settings(data_dir=data).collection, recs, vecs)

    status = imprint_cli(data, "--json", "status")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["memories"], info["store_engine"]) == (43, "qdrant-client local mode (old)")
    assert (data / "qdrant").exists()  # status only looks

    found = imprint_cli(data, "--json", "search", "who painted the stairs of the lighthouse", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "moving 43 memories" in found.stderr
    [hit] = [json.loads(line) for line in found.stdout.splitlines()]
    assert hit["id"] == recs[0].id  # the migrated vectors answer the search
    assert not (data / "qdrant").exists()

    exported = imprint_cli(data, "export")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert sorted(line["id"] for line in lines if "content" in line) == sorted(r.id for r in recs)
    info = json.loads(imprint_cli(data, "--json", "status").stdout)
    assert (info["memories"], info["store_engine"], info["store_model_fingerprint"]) == (
        43, "edge", info["model_fingerprint"])


def test_a_crash_after_the_swap_finishes_on_the_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imprint.local import migrate_legacy_store

    settings = Settings(data_dir=tmp_path)
    make_old_store(settings.legacy_qdrant_path, settings.collection, records(5), unit(5))
    settings.memories_path.parent.mkdir(parents=True)

    def killed(self: LegacyStore) -> None:
        raise KeyboardInterrupt  # killed between the rename and removing the old collection

    with monkeypatch.context() as m:
        m.setattr(LegacyStore, "remove", killed)
        with pytest.raises(KeyboardInterrupt):
            migrate(LegacyStore(settings.legacy_qdrant_path, settings.collection), settings.memories_path,
                    model="fp", model_name="m")
    assert read_meta(settings.memories_path) is not None and settings.legacy_qdrant_path.exists()

    migrate_legacy_store(settings, None)  # what the next command does first
    assert not settings.legacy_qdrant_path.exists()
    backend = EdgeBackend(settings.memories_path)
    try:
        assert backend.count(MemoryFilter()) == 5
    finally:
        backend.close()
