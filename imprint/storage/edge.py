"""Qdrant Edge: the default store, a shard per workspace in the data dir.

Qdrant's own engine in the process (`qdrant-edge-py`, pinned: it is in beta
and its API moves between releases; tests/storage/test_edge_pin.py fails
loudly if an upgrade changes what we rely on). The shard directory holds
Edge's segments and write-ahead log, and ``imprint-store.json``, the store's
:class:`~imprint.storage.StoreMeta`. A store is made in a sibling directory
and renamed into place once complete, so a crash never leaves half a store.

Edge locks its write-ahead log: a second process opening the same shard is
refused (we say which). Every write is flushed before it returns (a few ms),
so what the Storer reports stored survives a power cut. Vectors are kept
on disk ("cold": memory-mapped, not copied into RAM), so what a process holds
grows slowly with the store. Searches are exact (no HNSW is built): at 100k
memories one takes ~0.1 s, and exact beats approximate for a memory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.errors import StoreError
from imprint.messages.records import MemoryRecord, MemoryVersion, content_hash, point_id
from imprint.storage import (
    HASH_KEY,
    KEYWORD_FIELDS,
    MODEL_KEY,
    ORDER_FIELD,
    VECTOR_NAME,
    VERSION_PAYLOAD,
    FacetKey,
    MemoryFilter,
    StoredMemory,
    StoreMeta,
    read_versions,
    stored_of_all,
)
from imprint.storage import (
    record_of as _record,
)

META_FILE = "imprint-store.json"
#: Points per scroll when reading only ids and timestamps.
VERSION_PAGE = 5000
#: Seconds past which a flush is logged (debug).
SLOW_FLUSH = 0.05
_meta_decoder = msgspec.json.Decoder(StoreMeta)


def _edge() -> Any:
    import qdrant_edge

    return qdrant_edge


def _where(where: MemoryFilter | None) -> Any:
    if where is None or not (where.conditions() or where.narrowed()):
        return None
    q = _edge()
    must = [q.FieldCondition(key=k, match=q.MatchValue(v)) for k, v in where.conditions()]
    if where.text:
        must.append(q.FieldCondition(key="content", match=q.MatchSubstring(where.text)))
    if where.after is not None or where.before is not None:
        must.append(q.FieldCondition(key=ORDER_FIELD, range=q.RangeFloat(gte=where.after, lt=where.before)))
    return q.Filter(must=must)


#: Payload fields left out when they hold their default (read back as it): Edge converts a
#: payload field by field, ~3 µs each and ~20 µs for the tags, the most of writing a point.
#: None of them is filtered or faceted on (imprint.storage.KEYWORD_FIELDS, ORDER_FIELD).
_DEFAULTED = {"chunk_index": 0, "source_mtime": 0.0}


def slim_payloads(memories: list[StoredMemory]) -> list[dict[str, Any]]:
    """The payloads of these memories (:func:`~imprint.storage.payload_of`, built in one go),
    without the fields and tags that hold their defaults."""
    payloads = msgspec.to_builtins([m.record for m in memories])
    for memory, payload in zip(memories, payloads):
        for key, default in _DEFAULTED.items():
            if payload.get(key) == default:
                del payload[key]
        tags = {k: v for k, v in payload.pop("tags").items() if v}
        if tags:
            payload["tags"] = tags
        payload[MODEL_KEY] = memory.model
        payload[HASH_KEY] = content_hash(memory.record.content)
    return payloads


def read_meta(path: Path) -> StoreMeta | None:
    """The meta of the Edge store at `path`, None if there is none; StoreError if unreadable."""
    try:
        return _meta_decoder.decode((path / META_FILE).read_bytes())
    except FileNotFoundError:
        if path.exists():
            raise StoreError(f"{path} is not an imprint memory store (no {META_FILE}); move it away") from None
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise StoreError(f"cannot read {path / META_FILE}: {exc}") from None


def _open_error(path: Path, exc: Exception) -> StoreError:
    text = str(exc)
    if "WouldBlock" in text or "lock" in text.lower():
        return StoreError(f"the memory store in {path} is open in another imprint process "
                          "(is `imprint serve` or `imprint ui` running?)")
    return StoreError(f"cannot open the memory store at {path}: {text.strip()[:300]}")


class EdgeBackend:
    """The Edge shard at `path` (opened now if it exists)."""

    kind = "edge"

    def __init__(self, path: Path) -> None:
        from imprint.storage.reembed import recover

        recover(path)  # a re-embedding's swap cut in half by a crash
        self.path = path
        self.location = str(path)
        self._shard: Any = None
        self._meta = read_meta(path)
        if self._meta is not None:
            self._load()

    def _load(self) -> None:
        try:
            self._shard = _edge().EdgeShard.load(str(self.path))
        except Exception as exc:
            raise _open_error(self.path, exc) from None

    def meta(self) -> StoreMeta | None:
        return self._meta

    def create(self, meta: StoreMeta) -> None:
        """Build the empty shard beside its place, then rename it in: all or nothing."""
        q = _edge()
        if self._meta is not None:
            raise StoreError(f"a memory store already exists at {self.path}")
        staging = self.path.with_name(self.path.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        # Vectors stay on disk (mmap, the page cache keeps them warm): opening 100k memories then
        # costs ~130 MB instead of ~290 MB, and an exact search ~0.1 s instead of ~0.02 s.
        vectors = q.EdgeVectorParams(size=meta.dimension, distance=q.Distance.Cosine, memory=q.Memory.Cold)
        config = q.EdgeConfig(vectors={VECTOR_NAME: vectors})
        shard = q.EdgeShard.create(str(staging), config)
        try:
            for field in KEYWORD_FIELDS:
                shard.update(q.UpdateOperation.create_field_index(field, q.PayloadSchemaType.Keyword))
            shard.update(q.UpdateOperation.create_field_index(ORDER_FIELD, q.PayloadSchemaType.Float))
            shard.flush()
        finally:
            shard.close()
        write_meta(staging, meta)
        os.rename(staging, self.path)
        self._meta = meta
        self._load()

    def set_meta(self, meta: StoreMeta) -> None:
        write_meta(self.path, meta)
        self._meta = meta

    def stored_versions(self, ids: tuple[str, ...]) -> dict[str, MemoryVersion]:
        if self._shard is None or not ids:
            return {}
        found = self._shard.retrieve([point_id(i) for i in ids], with_payload=VERSION_PAYLOAD, with_vector=False)
        return {key: (ts, text) for key, ts, text in read_versions(found, self._contents)}

    def _contents(self, point_ids: list[str]) -> list[Any]:
        return self._shard.retrieve(point_ids, with_payload=["content"], with_vector=False)

    def upsert(self, memories: list[StoredMemory], *, flush: bool = True) -> None:
        q = _edge()
        points = [q.Point(id=point_id(m.record.id), vector={VECTOR_NAME: m.vector}, payload=payload)
                  for m, payload in zip(memories, slim_payloads(memories))]
        if points:
            self._shard.update(q.UpdateOperation.upsert_points(points))
        if flush:
            self.flush()

    def delete(self, ids: tuple[str, ...], *, flush: bool = True) -> None:
        if self._shard is not None and ids:
            self._shard.update(_edge().UpdateOperation.delete_points([point_id(i) for i in ids]))
            if flush:
                self.flush()

    def flush(self) -> None:
        """Edge's write-ahead log is memory-mapped: an update survives a crash of the process as it
        returns, and reaches the disk (against a power cut) here. Edge holds the GIL through the
        ~20 fsyncs of a flush (10-180 ms, more while the disk is busy)."""
        if self._shard is None:
            return
        started = time.perf_counter()
        self._shard.flush()
        took = time.perf_counter() - started
        if took > SLOW_FLUSH:
            logger.debug("flushing the memory store took {:.0f} ms", took * 1000)

    def versions(self, where: MemoryFilter) -> Iterator[tuple[str, float, str]]:
        if self._shard is None:
            return
        q = _edge()
        offset = None
        while True:
            points, offset = self._shard.scroll(q.ScrollRequest(
                offset=offset if offset is None else str(offset), limit=VERSION_PAGE, filter=_where(where),
                with_payload=VERSION_PAYLOAD, with_vector=False))
            yield from read_versions(points, self._contents)
            if offset is None:
                return

    def retrieve(self, ids: tuple[str, ...], *, vectors: bool = False) -> list[StoredMemory]:
        if self._shard is None or not ids:
            return []
        found = self._shard.retrieve([point_id(i) for i in ids], with_payload=True,
                                     with_vector=[VECTOR_NAME] if vectors else False)
        return stored_of_all(found, vectors)

    def page(self, limit: int, after: str | None, *, vectors: bool = False) -> tuple[list[StoredMemory], str | None]:
        if self._shard is None:
            return [], None
        q = _edge()
        points, next_offset = self._shard.scroll(q.ScrollRequest(
            offset=after, limit=limit, with_payload=True, with_vector=[VECTOR_NAME] if vectors else False))
        return stored_of_all(points, vectors), (str(next_offset) if next_offset is not None else None)

    def search(self, vector: list[float], limit: int, where: MemoryFilter) -> list[tuple[float, MemoryRecord]]:
        if self._shard is None:
            return []
        q = _edge()
        hits = self._shard.query(q.QueryRequest(limit=limit, query=q.Query.Nearest(vector, using=VECTOR_NAME),
                                                filter=_where(where), with_payload=True))
        return [(float(h.score), _record(h.payload)) for h in hits]

    def _exact(self, condition: Any) -> bool:
        """Whether a count or facet must visit the points. Unfiltered on a shard of one segment
        (imprint never runs Edge's optimize, which could make more), Edge's answer from its payload
        indexes is the exact one: deleted and changed points leave the index as they go
        (tests/storage/test_contract.py), and it takes 0.1-0.3 ms instead of 14-32 ms at 140k, GIL
        held — what every search waited for while the dashboard's stats were read. A filter is
        only estimated from the indexes, and a point moved between segments can be counted twice."""
        return condition is not None or self._shard.info().segments_count != 1

    def count(self, where: MemoryFilter) -> int:
        if self._shard is None:
            return 0
        condition = _where(where)
        return int(self._shard.count(_edge().CountRequest(exact=self._exact(condition), filter=condition)))

    def facet(self, key: FacetKey, limit: int, where: MemoryFilter) -> list[tuple[str, int]]:
        if self._shard is None:
            return []
        condition = _where(where)
        response = self._shard.facet(_edge().FacetRequest(key=key, limit=limit, exact=self._exact(condition),
                                                          filter=condition))
        # An exact facet still lists a value whose points were all deleted, with count 0.
        return [(str(h.value), int(h.count)) for h in response.hits if h.count]

    def newest(self, where: MemoryFilter, offset: int, limit: int, oldest_first: bool = False) -> list[MemoryRecord]:
        if self._shard is None:
            return []
        q = _edge()
        direction = q.Direction.Asc if oldest_first else q.Direction.Desc
        points = self._shard.query(q.QueryRequest(
            limit=limit, offset=offset, query=q.OrderBy(key=ORDER_FIELD, direction=direction),
            filter=_where(where), with_payload=True))
        return [_record(p.payload) for p in points]

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.close()


def write_meta(path: Path, meta: StoreMeta) -> None:
    """Write the store's meta atomically (a crash leaves the old one or the new one)."""
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_bytes(msgspec.json.encode(meta))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path / META_FILE)

