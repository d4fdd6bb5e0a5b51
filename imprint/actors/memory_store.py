"""MemoryStore: owns the Qdrant client and the workspace's collection.

Embedded local mode (`QdrantClient(path=…)`) by default; a Qdrant server when
a URL is given — the same calls either way. Points carry one named dense
vector (cosine) and the memory's SPEC payload; the point id is SPEC's
uuid5 of the memory id, so the same memory is the same point everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ImprintError, ModelError, StoreError
from imprint.messages.records import MemoryRecord, memory_to_payload, point_id
from imprint.messages.store import (
    CountMemories,
    DescribeStore,
    FindMissing,
    MemoryPage,
    MissingIds,
    PageMemories,
    SearchHit,
    SearchHits,
    SearchMemories,
    StoreInfo,
    StoreMemories,
    StoreResult,
)

VECTOR_NAME = "dense"


class MemoryStore(ImprintActor):
    """Answers FindMissing, StoreMemories, PageMemories, SearchMemories, CountMemories, DescribeStore.

    Args:
        collection: the workspace's collection name.
        path: folder of the embedded store (ignored when `url` is set).
        url: a Qdrant server, e.g. http://localhost:6333.
        dimension: vector size of the embedder; None for read-only commands
            (the collection is then not created if missing).
    """

    def __init__(self, *, collection: str, path: Path | None = None, url: str | None = None, dimension: int | None) -> None:
        super().__init__()
        self.collection = collection
        self.path = path
        self.url = url
        self.dimension = dimension
        self._client: Any = None
        self._exists = False

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    def start_up(self) -> None:
        from qdrant_client import QdrantClient

        try:
            self._client = QdrantClient(url=self.url, timeout=60) if self.url else QdrantClient(path=str(self.path))
            self._exists = self._client.collection_exists(self.collection)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreError(
                    f"the memory store in {self.path} is open in another imprint process (is `imprint serve` or `imprint ui` running?)"
                ) from None
            raise StoreError(f"cannot open the memory store at {self.location}: {exc}") from None
        except Exception as exc:
            raise StoreError(f"cannot open the memory store at {self.location}: {exc}") from None
        if self._exists:
            existing = self._stored_dimension()
            if self.dimension is not None and existing != self.dimension:
                raise ModelError(
                    f"workspace collection {self.collection!r} holds {existing}-dimensional vectors but the model "
                    f"gives {self.dimension}; use the model it was built with or another --workspace"
                )
            self.dimension = existing
        elif self.dimension is not None:
            self._create()

    def _stored_dimension(self) -> int:
        vectors = self._client.get_collection(self.collection).config.params.vectors
        if not isinstance(vectors, dict) or VECTOR_NAME not in vectors:
            raise StoreError(f"collection {self.collection!r} was not created by imprint (no {VECTOR_NAME!r} vector)")
        return int(vectors[VECTOR_NAME].size)

    def _create(self) -> None:
        from qdrant_client import models

        self._client.create_collection(
            self.collection,
            vectors_config={VECTOR_NAME: models.VectorParams(size=self.dimension, distance=models.Distance.COSINE)},
        )
        if self.url:  # payload indexes only mean something on a server
            self._client.create_payload_index(self.collection, "project", models.PayloadSchemaType.KEYWORD)
        self._exists = True
        logger.debug("created collection {} ({} dims) at {}", self.collection, self.dimension, self.location)

    def shut_down(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing is best effort; the lock file goes with the process
                logger.debug("qdrant close failed", exc_info=True)
            self._client = None

    def handle(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except (ImprintError, TypeError):
            raise
        except Exception as exc:  # Qdrant (disk full, server down, …): one clear line for the user
            raise StoreError(f"memory store error at {self.location}: {str(exc).strip()[:300] or type(exc).__name__}") from None

    def _dispatch(self, message: Any) -> Any:
        match message:
            case FindMissing(ids=ids, timestamps=timestamps):
                return self._to_write(ids, timestamps)
            case StoreMemories(records=records, vectors=vectors, stored_at=stored_at):
                return self._store(records, vectors, stored_at)
            case PageMemories(limit=limit, after=after):
                return self._page(limit, after)
            case SearchMemories(vector=vector, limit=limit, project=project):
                return self._search(vector, limit, project)
            case CountMemories():
                return self._count()
            case DescribeStore():
                return StoreInfo(location=self.location, collection=self.collection, dimension=self.dimension, count=self._count())
        return super().handle(message)

    def _stored_timestamps(self, ids: tuple[str, ...]) -> dict[str, float]:
        if not self._exists or not ids:
            return {}
        by_point = {point_id(i): i for i in ids}
        found = self._client.retrieve(self.collection, ids=list(by_point), with_payload=["timestamp"], with_vectors=False)
        return {by_point[str(p.id)]: float((p.payload or {}).get("timestamp") or 0.0) for p in found}

    def _to_write(self, ids: tuple[str, ...], timestamps: tuple[float, ...]) -> MissingIds:
        stored = self._stored_timestamps(ids)
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
               stored_at: dict[str, float] | None) -> StoreResult:
        from qdrant_client import models

        if len(records) != len(vectors):
            raise StoreError(f"{len(records)} records but {len(vectors)} vectors")
        if not self._exists:
            raise StoreError("the memory store was opened read-only")
        stored = stored_at if stored_at is not None else self._stored_timestamps(tuple(r.id for r in records))
        points, seen = [], set()
        updated = 0
        for record, vector in zip(records, vectors):
            if record.id in seen:
                continue
            if record.id in stored and not (record.timestamp and record.timestamp < stored[record.id]):
                continue
            updated += record.id in stored
            seen.add(record.id)
            points.append(
                models.PointStruct(id=point_id(record.id), vector={VECTOR_NAME: vector}, payload=memory_to_payload(record))
            )
        if points:
            # wait=True: the batch is durable before we report it stored.
            self._client.upsert(self.collection, points=points, wait=True)
        inserted = len(points) - updated
        return StoreResult(inserted=inserted, skipped=len(records) - inserted, updated=updated)

    def _page(self, limit: int, after: str | None) -> MemoryPage:
        if not self._exists:
            return MemoryPage(records=(), next_after=None)
        points, next_offset = self._client.scroll(
            self.collection, limit=limit, offset=after, with_payload=True, with_vectors=False
        )
        records = tuple(msgspec.convert(p.payload, MemoryRecord) for p in points)
        return MemoryPage(records=records, next_after=str(next_offset) if next_offset is not None else None)

    def _search(self, vector: list[float], limit: int, project: str | None) -> SearchHits:
        from qdrant_client import models

        if not self._exists:
            return SearchHits(hits=())
        query_filter = None
        if project is not None:
            query_filter = models.Filter(must=[models.FieldCondition(key="project", match=models.MatchValue(value=project))])
        result = self._client.query_points(
            self.collection, query=vector, using=VECTOR_NAME, limit=limit, query_filter=query_filter, with_payload=True
        )
        return SearchHits(
            hits=tuple(SearchHit(score=float(p.score), record=msgspec.convert(p.payload, MemoryRecord)) for p in result.points)
        )

    def _count(self) -> int:
        if not self._exists:
            return 0
        return int(self._client.count(self.collection, exact=True).count)
