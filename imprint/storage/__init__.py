"""Where memories live: one small interface, two Qdrant engines behind it.

- :class:`~imprint.storage.edge.EdgeBackend`: Qdrant Edge, Qdrant's own engine
  embedded in the process, a shard per workspace in the data dir (the default).
- :class:`~imprint.storage.server.ServerBackend`: a Qdrant server by URL, through
  qdrant-client (``--qdrant-url``), for a store that outgrows one machine.

The MemoryStore actor holds one of them and does not know which. Both keep
every memory as one point: SPEC's point id (uuid5 of the memory id), one
cosine vector named ``dense``, SPEC's payload plus ``vector_model``, the
:mod:`fingerprint <imprint.fingerprint>` of the model that made the vector.
The store itself records the fingerprint of its model (:class:`StoreMeta`);
a vector of another model is never written into it.

:mod:`imprint.storage.legacy` reads the store older versions kept
(qdrant-client's local mode) and migrates it to Edge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgspec

from imprint.messages.records import (
    MemoryRecord,
    MemoryVersion,
    content_hash,
    memory_to_payload,
)
from imprint.messages.store import FacetKey, MemoryFilter

VECTOR_NAME = "dense"
#: Payload key of the fingerprint of the model that made the point's vector.
MODEL_KEY = "vector_model"
#: Payload key of the :func:`~imprint.messages.records.content_hash` of the whole
#: text (points written before it was kept have their content hashed when read).
HASH_KEY = "content_hash"
#: Payload fields with an index: filters and facets on the first three,
#: newest-first order on the last.
KEYWORD_FIELDS = ("project", "type", "source")
ORDER_FIELD = "timestamp"


class StoreMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What a store records about itself.

    Attributes:
        dimension: vector size.
        model: fingerprint of the model its vectors come from ("" if unknown).
        model_name: the model's name when the store was made (shown, never trusted).
        migrated_from: where the data came from, if it was migrated.
    """

    format: int = 1
    dimension: int
    model: str = ""
    model_name: str = ""
    migrated_from: str = ""


class StoredMemory(msgspec.Struct, frozen=True):
    """A memory as stored: the record, and (when asked for) its vector and the
    fingerprint of the model that made it."""

    record: MemoryRecord
    vector: list[float] | None = None
    model: str = ""


class Backend(Protocol):
    """One workspace's memories in one Qdrant engine.

    Every method may raise an engine error; the MemoryStore turns those into one
    clear StoreError line. Writes are durable when they return.
    """

    #: Where it is, for messages: a directory or a URL.
    location: str
    #: Which engine: "edge" or "server".
    kind: str

    def meta(self) -> StoreMeta | None:
        """The store's record of itself; None if no store exists yet."""

    def create(self, meta: StoreMeta) -> None:
        """Make the (empty) store with these vector size and model."""

    def set_meta(self, meta: StoreMeta) -> None:
        """Replace the store's record of itself."""

    def stored_versions(self, ids: tuple[str, ...]) -> dict[str, MemoryVersion]:
        """Memory id → stored (timestamp, content hash), for those of `ids` that are stored."""

    def upsert(self, memories: list[StoredMemory], *, flush: bool = True) -> None:
        """Write these memories (each with its vector and model), replacing same ids; durable
        on return unless `flush` is False (a server's writes always are)."""

    def delete(self, ids: tuple[str, ...], *, flush: bool = True) -> None:
        """Remove these memories (ids not stored are ignored); durable on return unless `flush` is False."""

    def flush(self) -> None:
        """Make what was written with `flush` False durable (a server's writes always are)."""

    def versions(self, where: MemoryFilter) -> Iterator[tuple[str, float, str]]:
        """(memory id, timestamp, content hash) of every matching memory, in stable order
        (reading no content but that of points stored before content hashes were kept)."""

    def retrieve(self, ids: tuple[str, ...], *, vectors: bool = False) -> list[StoredMemory]:
        """The stored memories of those memory ids that are stored."""

    def page(self, limit: int, after: str | None, *, vectors: bool = False) -> tuple[list[StoredMemory], str | None]:
        """A page in stable (point id) order, and where the next one starts (None: the end)."""

    def search(self, vector: list[float], limit: int, where: MemoryFilter) -> list[tuple[float, MemoryRecord]]:
        """The nearest memories to `vector`, best first, with cosine scores."""

    def count(self, where: MemoryFilter) -> int:
        """How many memories match (exactly)."""

    def facet(self, key: FacetKey, limit: int, where: MemoryFilter) -> list[tuple[str, int]]:
        """The most frequent values of `key` among matching memories, with counts."""

    def newest(self, where: MemoryFilter, offset: int, limit: int, oldest_first: bool = False) -> list[MemoryRecord]:
        """Matching memories, newest first (or oldest first), from `offset`."""

    def close(self) -> None:
        """Release the store (and its lock)."""


def record_of(payload: dict[str, Any] | None) -> MemoryRecord:
    """A point's payload as the memory record (both engines store the same payload)."""
    return msgspec.convert(payload or {}, MemoryRecord)


def stored_of_all(points: list[Any], vectors: bool) -> list[StoredMemory]:
    """:func:`stored_of` of many points, their payloads converted in one call."""
    payloads = [point.payload or {} for point in points]
    records = msgspec.convert(payloads, list[MemoryRecord])
    out = []
    for point, payload, record in zip(points, payloads, records):
        vector = None
        if vectors:
            vector = (point.vector or {}).get(VECTOR_NAME) if isinstance(point.vector, dict) else point.vector
        out.append(StoredMemory(record=record, vector=vector, model=str(payload.get(MODEL_KEY) or "")))
    return out


def stored_of(point: Any, vectors: bool) -> StoredMemory:
    """A point (as either engine returns it) as a StoredMemory; its vector only if asked for."""
    payload = point.payload or {}
    vector = None
    if vectors:
        vector = (point.vector or {}).get(VECTOR_NAME) if isinstance(point.vector, dict) else point.vector
    return StoredMemory(record=record_of(payload), vector=vector, model=str(payload.get(MODEL_KEY) or ""))


def payload_of(memory: StoredMemory) -> dict[str, Any]:
    """The payload a memory is stored with (both engines): SPEC's, the model's fingerprint, the content hash."""
    return {**memory_to_payload(memory.record), MODEL_KEY: memory.model, HASH_KEY: content_hash(memory.record.content)}


#: The payload fields :func:`read_versions` needs.
VERSION_PAYLOAD = ["id", ORDER_FIELD, HASH_KEY]


def read_versions(points: list[Any], contents: Callable[[list[str]], list[Any]]) -> list[tuple[str, float, str]]:
    """(memory id, timestamp, content hash) of points read with :data:`VERSION_PAYLOAD`.

    A point stored before content hashes were kept has none: `contents` reads
    such points again (by point id) with their ``content``, which is hashed.
    """
    out: list[tuple[str, float, str]] = []
    lacking: dict[str, int] = {}
    for point in points:
        payload = point.payload or {}
        text = str(payload.get(HASH_KEY) or "")
        if not text:
            lacking[str(point.id)] = len(out)
        out.append((str(payload.get("id") or ""), float(payload.get(ORDER_FIELD) or 0.0), text))
    if lacking:
        for point in contents(list(lacking)):
            n = lacking[str(point.id)]
            out[n] = (out[n][0], out[n][1], content_hash(str((point.payload or {}).get("content") or "")))
    return out
