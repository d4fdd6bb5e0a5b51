"""MemoryStore: the workspace's memories, in whichever Qdrant engine holds them.

It holds one :class:`~imprint.storage.Backend` — Qdrant Edge in the data dir
by default, a Qdrant server when a URL is given — and answers the same
messages either way. It guards what goes in: every vector comes from the
store's own model (checked by fingerprint), the earliest copy of a memory
wins, and an engine error becomes one clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ImprintError, ModelError, StoreError
from imprint.messages.records import MemoryRecord
from imprint.messages.store import (
    CountMemories,
    DescribeStore,
    FacetCount,
    FacetMemories,
    FindMissing,
    MemoryFilter,
    MemoryPage,
    MissingIds,
    NewestMemories,
    PageMemories,
    SearchHit,
    SearchHits,
    SearchMemories,
    StoreInfo,
    StoreMemories,
    StoreResult,
)
from imprint.storage import Backend, StoredMemory, StoreMeta


def open_backend(*, path: Path | None, url: str | None, collection: str) -> Backend:
    """The Qdrant server at `url` if given, else the Edge shard at `path`."""
    if url:
        from imprint.storage.server import ServerBackend

        return ServerBackend(url, collection)
    from imprint.storage.edge import EdgeBackend

    assert path is not None
    return EdgeBackend(path)


class MemoryStore(ImprintActor):
    """Answers FindMissing, StoreMemories, PageMemories, SearchMemories, CountMemories,
    FacetMemories, NewestMemories, DescribeStore.

    Args:
        collection: the workspace's collection name (on a server).
        path: the workspace's Edge shard (ignored when `url` is set).
        url: a Qdrant server, e.g. http://localhost:6333.
        dimension: vector size of the running model; None for commands that
            write no vectors (the store is then not created if missing).
        model: fingerprint of the running model ("" when none runs).
        model_name: its name, recorded with a new store.
    """

    def __init__(self, *, collection: str, path: Path | None = None, url: str | None = None, dimension: int | None,
                 model: str = "", model_name: str = "") -> None:
        super().__init__()
        self.collection = collection
        self.path = path
        self.url = url
        self.dimension = dimension
        self.model = model
        self.model_name = model_name
        self._backend: Backend | None = None
        self._meta: StoreMeta | None = None

    @property
    def location(self) -> str:
        return self._backend.location if self._backend is not None else (self.url or str(self.path))

    def start_up(self) -> None:
        try:
            self._backend = open_backend(path=self.path, url=self.url, collection=self.collection)
            self._meta = self._backend.meta()
            if self._meta is None:
                if self.dimension is not None:
                    self._meta = StoreMeta(dimension=self.dimension, model=self.model, model_name=self.model_name)
                    self._backend.create(self._meta)
                    logger.debug("created the memory store at {} ({} dims, model {})", self.location, self.dimension,
                                 self.model or "?")
                return
        except ImprintError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot open the memory store at {self.location}: {str(exc).strip()[:300]}") from None
        self._check_model(self._meta)

    def _check_model(self, meta: StoreMeta) -> None:
        if self.dimension is not None and meta.dimension != self.dimension:
            raise ModelError(
                f"the memory store at {self.location} holds {meta.dimension}-dimensional vectors but the model gives "
                f"{self.dimension}; use the model it was built with ({meta.model_name or 'see imprint status'}) "
                "or another --workspace"
            )
        self.dimension = meta.dimension
        if not self.model:
            return
        if not meta.model:
            # A store from before fingerprints: its vectors are taken to be this model's.
            self._meta = msgspec.structs.replace(meta, model=self.model, model_name=meta.model_name or self.model_name)
            self._backend.set_meta(self._meta)
            logger.info("memory store at {}: recorded model fingerprint {}", self.location, self.model)
        elif meta.model != self.model:
            raise ModelError(
                f"the memory store at {self.location} holds vectors of model {meta.model_name or '?'} (fingerprint "
                f"{meta.model}) but {self.model_name or 'this model'} has fingerprint {self.model}; their vectors "
                "cannot be mixed: use the model the store was built with, or another --workspace"
            )

    def shut_down(self) -> None:
        if self._backend is not None:
            backend, self._backend = self._backend, None
            try:
                backend.close()
            except Exception:  # closing is best effort; the lock goes with the process
                logger.debug("closing the memory store failed", exc_info=True)

    def handle(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except (ImprintError, TypeError):
            raise
        except Exception as exc:  # the engine (disk full, server down, …): one clear line for the user
            raise StoreError(f"memory store error at {self.location}: {str(exc).strip()[:300] or type(exc).__name__}") from None

    def _dispatch(self, message: Any) -> Any:
        b = self._backend
        match message:
            case FindMissing(ids=ids, timestamps=timestamps):
                return self._to_write(ids, timestamps)
            case StoreMemories(records=records, vectors=vectors, stored_at=stored_at, model=model):
                return self._store(records, vectors, stored_at, model)
            case PageMemories(limit=limit, after=after, vectors=vectors):
                return self._page(limit, after, vectors)
            case SearchMemories(vector=vector, limit=limit, project=project):
                hits = b.search(vector, limit, MemoryFilter(project=project))
                return SearchHits(hits=tuple(SearchHit(score=score, record=record) for score, record in hits))
            case CountMemories(where=where):
                return b.count(where)
            case FacetMemories(key=key, limit=limit, where=where):
                return tuple(FacetCount(value=v, count=n) for v, n in b.facet(key, limit, where))
            case NewestMemories(where=where, offset=offset, limit=limit):
                return tuple(b.newest(where, offset, limit))
            case DescribeStore():
                meta = self._meta
                return StoreInfo(location=self.location, kind=b.kind, dimension=meta.dimension if meta else None,
                                 count=b.count(MemoryFilter()), model=meta.model if meta else "",
                                 model_name=meta.model_name if meta else "")
        return super().handle(message)

    def _to_write(self, ids: tuple[str, ...], timestamps: tuple[float, ...]) -> MissingIds:
        stored = self._backend.stored_timestamps(ids)
        result: dict[str, None] = {}
        kept: dict[str, None] = {}
        for n, memory_id_ in enumerate(ids):
            given = timestamps[n] if n < len(timestamps) else 0.0
            if memory_id_ not in stored:
                result[memory_id_] = None
            elif given and given < stored[memory_id_]:
                result[memory_id_] = None  # an earlier copy of the same memory wins everywhere
            elif given and given > stored[memory_id_]:
                kept[memory_id_] = None
        return MissingIds(ids=tuple(result), kept=tuple(k for k in kept if k not in result), stored_at=stored)

    def _store(self, records: tuple[MemoryRecord, ...], vectors: list[list[float]],
               stored_at: dict[str, float] | None, model: str | None) -> StoreResult:
        if len(records) != len(vectors):
            raise StoreError(f"{len(records)} records but {len(vectors)} vectors")
        if self._meta is None:
            raise StoreError("the memory store was opened read-only")
        model = self.model if model is None else model
        if model != self._meta.model:
            raise StoreError(f"vectors of model {model or '?'} cannot go into a store of model {self._meta.model or '?'}")
        stored = stored_at if stored_at is not None else self._backend.stored_timestamps(tuple(r.id for r in records))
        points: list[StoredMemory] = []
        seen: set[str] = set()
        updated = 0
        for record, vector in zip(records, vectors):
            if record.id in seen:
                continue
            if record.id in stored and not (record.timestamp and record.timestamp < stored[record.id]):
                continue
            updated += record.id in stored
            seen.add(record.id)
            points.append(StoredMemory(record=record, vector=vector, model=model))
        # Durable when upsert returns: the batch is whole on disk before we report it stored.
        self._backend.upsert(points)
        inserted = len(points) - updated
        return StoreResult(inserted=inserted, skipped=len(records) - inserted, updated=updated)

    def _page(self, limit: int, after: str | None, vectors: bool) -> MemoryPage:
        memories, next_after = self._backend.page(limit, after, vectors=vectors)
        records = tuple(m.record for m in memories)
        if not vectors:
            return MemoryPage(records=records, next_after=next_after)
        return MemoryPage(records=records, next_after=next_after, vectors=tuple(m.vector or [] for m in memories),
                          models=tuple(m.model for m in memories))
