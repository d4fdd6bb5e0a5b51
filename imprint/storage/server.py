"""A Qdrant server by URL (``--qdrant-url``), through qdrant-client.

One collection per workspace (``imprint_NAME``); the store's
:class:`~imprint.storage.StoreMeta` is the collection's metadata. Writes wait
for the server to apply them. Payload indexes serve the filters, facets and
newest-first order, as on Edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from imprint.errors import StoreError
from imprint.messages.records import MemoryRecord, MemoryVersion, point_id
from imprint.storage import (
    KEYWORD_FIELDS,
    ORDER_FIELD,
    VECTOR_NAME,
    VERSION_PAYLOAD,
    FacetKey,
    MemoryFilter,
    StoredMemory,
    StoreMeta,
    payload_of,
    read_versions,
)
from imprint.storage import (
    record_of as _record,
)
from imprint.storage import (
    stored_of as _stored,
)

#: Key of the store's meta in the collection's metadata.
META_KEY = "imprint"


def _where(where: MemoryFilter | None) -> Any:
    from qdrant_client import models

    if where is None or not (where.conditions() or where.narrowed()):
        return None
    must = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in where.conditions()]
    if where.text:
        must.append(models.FieldCondition(key="content", match=models.MatchText(text=where.text)))
    if where.after is not None or where.before is not None:
        must.append(models.FieldCondition(key=ORDER_FIELD, range=models.Range(gte=where.after, lt=where.before)))
    return models.Filter(must=must)


class ServerBackend:
    """The workspace's collection on the Qdrant server at `url`."""

    kind = "server"

    def __init__(self, url: str, collection: str) -> None:
        from qdrant_client import QdrantClient

        self.url = url
        self.collection = collection
        self.location = f"{url} (collection {collection})"
        try:
            # `location` takes a URL, or ":memory:" for qdrant-client's in-process stand-in (tests).
            self._client: Any = QdrantClient(location=url, timeout=60)
            self._exists = self._client.collection_exists(collection)
            self._meta = self._read_meta() if self._exists else None
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot reach the Qdrant server at {url}: {str(exc).strip()[:300]}") from None

    def _read_meta(self) -> StoreMeta:
        info = self._client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, dict) or VECTOR_NAME not in vectors:
            raise StoreError(f"collection {self.collection!r} on {self.url} was not created by imprint "
                             f"(no {VECTOR_NAME!r} vector)")
        raw = (info.config.metadata or {}).get(META_KEY) if getattr(info.config, "metadata", None) else None
        if isinstance(raw, dict):
            try:
                return msgspec.convert(raw, StoreMeta)
            except msgspec.ValidationError:
                pass
        # A collection made by an older imprint: its size is known, its model is not.
        return StoreMeta(dimension=int(vectors[VECTOR_NAME].size))

    def meta(self) -> StoreMeta | None:
        return self._meta

    def create(self, meta: StoreMeta) -> None:
        from qdrant_client import models

        self._client.create_collection(
            self.collection,
            vectors_config={VECTOR_NAME: models.VectorParams(size=meta.dimension, distance=models.Distance.COSINE)},
            metadata={META_KEY: msgspec.to_builtins(meta)},
        )
        for field in KEYWORD_FIELDS:
            self._client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        self._client.create_payload_index(self.collection, ORDER_FIELD, models.PayloadSchemaType.FLOAT)
        self._exists, self._meta = True, meta

    def set_meta(self, meta: StoreMeta) -> None:
        self._client.update_collection(self.collection, metadata={META_KEY: msgspec.to_builtins(meta)})
        self._meta = meta

    def stored_versions(self, ids: tuple[str, ...]) -> dict[str, MemoryVersion]:
        if not self._exists or not ids:
            return {}
        found = self._client.retrieve(self.collection, ids=[point_id(i) for i in ids], with_payload=VERSION_PAYLOAD,
                                      with_vectors=False)
        return {key: (ts, text) for key, ts, text in read_versions(found, self._contents)}

    def _contents(self, point_ids: list[str]) -> list[Any]:
        return self._client.retrieve(self.collection, ids=point_ids, with_payload=["content"], with_vectors=False)

    def upsert(self, memories: list[StoredMemory], *, flush: bool = True) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=point_id(m.record.id), vector={VECTOR_NAME: m.vector},
                                     payload=payload_of(m)) for m in memories]
        if points:
            self._client.upsert(self.collection, points=points, wait=True)

    def delete(self, ids: tuple[str, ...], *, flush: bool = True) -> None:
        from qdrant_client import models

        if self._exists and ids:
            self._client.delete(self.collection, points_selector=models.PointIdsList(points=[point_id(i) for i in ids]),
                                wait=True)

    def flush(self) -> None:
        """Nothing to do: the server's writes (wait=True) are its to keep."""

    def versions(self, where: MemoryFilter) -> Iterator[tuple[str, float, str]]:
        if not self._exists:
            return
        offset = None
        while True:
            points, offset = self._client.scroll(self.collection, limit=5000, offset=offset, scroll_filter=_where(where),
                                                 with_payload=VERSION_PAYLOAD, with_vectors=False)
            yield from read_versions(points, self._contents)
            if offset is None:
                return

    def retrieve(self, ids: tuple[str, ...], *, vectors: bool = False) -> list[StoredMemory]:
        if not self._exists or not ids:
            return []
        found = self._client.retrieve(self.collection, ids=[point_id(i) for i in ids], with_payload=True,
                                      with_vectors=[VECTOR_NAME] if vectors else False)
        return [_stored(p, vectors) for p in found]

    def page(self, limit: int, after: str | None, *, vectors: bool = False) -> tuple[list[StoredMemory], str | None]:
        if not self._exists:
            return [], None
        points, next_offset = self._client.scroll(self.collection, limit=limit, offset=after, with_payload=True,
                                                  with_vectors=[VECTOR_NAME] if vectors else False)
        return [_stored(p, vectors) for p in points], (str(next_offset) if next_offset is not None else None)

    def search(self, vector: list[float], limit: int, where: MemoryFilter) -> list[tuple[float, MemoryRecord]]:
        if not self._exists:
            return []
        result = self._client.query_points(self.collection, query=vector, using=VECTOR_NAME, limit=limit,
                                           query_filter=_where(where), with_payload=True)
        return [(float(p.score), _record(p.payload)) for p in result.points]

    def count(self, where: MemoryFilter) -> int:
        if not self._exists:
            return 0
        return int(self._client.count(self.collection, count_filter=_where(where), exact=True).count)

    def facet(self, key: FacetKey, limit: int, where: MemoryFilter) -> list[tuple[str, int]]:
        if not self._exists:
            return []
        response = self._client.facet(self.collection, key=key, facet_filter=_where(where), limit=limit, exact=True)
        return [(str(h.value), int(h.count)) for h in response.hits]

    def newest(self, where: MemoryFilter, offset: int, limit: int, oldest_first: bool = False) -> list[MemoryRecord]:
        from qdrant_client import models

        if not self._exists:
            return []
        direction = "asc" if oldest_first else "desc"
        result = self._client.query_points(
            self.collection, query=models.OrderByQuery(order_by=models.OrderBy(key=ORDER_FIELD, direction=direction)),
            query_filter=_where(where), limit=limit, offset=offset, with_payload=True)
        return [_record(p.payload) for p in result.points]

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:  # closing a client is best effort
                pass
