"""Records: the data imprint stores and sync sends (SPEC "Records").

These Structs are the schema. Every external source of records (a JSONL
file, a wire frame) is decoded against them with msgspec, so shape and type
validation is the decoder's job; `__post_init__` adds the checks a type
cannot express (size, emptiness).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec

#: Largest content (UTF-8 bytes) of one memory, and largest encoded record.
MAX_RECORD_BYTES = 1024 * 1024
#: Longest subject, predicate, object, source or short string field.
MAX_FIELD_CHARS = 4096

ShortStr = Annotated[str, msgspec.Meta(max_length=MAX_FIELD_CHARS)]
TagList = Annotated[tuple[ShortStr, ...], msgspec.Meta(max_length=256)]
#: Unix seconds; a time before 1970 is refused.
Time = Annotated[float, msgspec.Meta(ge=0)]
#: The tag keys a memory may carry (Imprint's own normalised set).
TAG_KEYS = ("lang", "layer", "kind", "domain", "topics")


class Tags(msgspec.Struct, frozen=True, omit_defaults=False):
    """Classification of a memory (SPEC: lang, layer, kind, domain, topics)."""

    lang: ShortStr = ""
    layer: ShortStr = ""
    kind: ShortStr = ""
    domain: TagList = ()
    topics: TagList = ()


class MemoryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One memory: a text chunk with metadata, as stored in the Qdrant payload.

    `id` and `timestamp` may be left empty on input; :func:`finalize_memory`
    fills them. The id is always recomputed from project, source and content
    so a peer cannot make two different texts collide or one text repeat.
    """

    id: ShortStr = ""
    content: str
    project: ShortStr = "default"
    type: ShortStr = "note"
    tags: Tags = Tags()
    source: ShortStr = ""
    chunk_index: Annotated[int, msgspec.Meta(ge=0)] = 0
    source_mtime: Time = 0.0
    timestamp: Time = 0.0

    def __post_init__(self) -> None:
        if not self.content.strip():
            raise ValueError("content is empty")
        if len(self.content) > MAX_RECORD_BYTES or len(self.content.encode("utf-8")) > MAX_RECORD_BYTES:
            raise ValueError("content is larger than 1 MiB")


class FactRecord(msgspec.Struct, frozen=True):
    """One fact: a subject–predicate–object triple valid from a time, maybe ended."""

    subject: ShortStr
    predicate: ShortStr
    object: ShortStr
    valid_from: Time
    ended: Time | None = None
    source: ShortStr = ""

    def __post_init__(self) -> None:
        for name in ("subject", "predicate", "object"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is empty")

    @property
    def identity(self) -> tuple[str, str, str, float]:
        """The dedup key of SPEC: (subject, predicate, object, valid_from)."""
        return (self.subject, self.predicate, self.object, self.valid_from)


def fact_key(identity: tuple[str, str, str, float]) -> str:
    """A fact's key for tombstones and reconciliation: 16 hex of SHA-256 over its identity."""
    subject, predicate, object_, valid_from = identity
    raw = "\0".join((subject, predicate, object_, repr(float(valid_from))))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


Key = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]


class Tombstone(msgspec.Struct, frozen=True):
    """A forgotten record: its dataset, its key (a memory's id, a fact's
    :func:`fact_key`) and when it was forgotten. It removes every copy whose
    version (a memory's timestamp, a fact's end or start) is not newer than
    ``deleted_at``, on every machine it reaches; a copy made later lives."""

    dataset: Literal["memories", "facts"]
    key: Key
    deleted_at: Time


def fact_version(record: FactRecord) -> float:
    """What a fact tombstone is compared with: its end, else its start."""
    return record.ended if record.ended is not None else record.valid_from


#: How far ahead of this machine's clock a record, an edit, a fact or a tombstone may be
#: dated (clocks disagree by seconds, time zones by hours); anything later is refused. A
#: record dated year 3000 would otherwise win every merge and be beyond repair.
MAX_CLOCK_SKEW = 86400.0


def latest_allowed(now: float | None = None) -> float:
    """The latest time a record may carry now."""
    return (time.time() if now is None else now) + MAX_CLOCK_SKEW


def times_of(record: MemoryRecord | FactRecord | Tombstone) -> tuple[float, ...]:
    """The times of a record that decide merges (a memory's timestamp, a fact's
    start and end, a tombstone's deletion)."""
    if isinstance(record, MemoryRecord):
        return (record.timestamp,)
    if isinstance(record, FactRecord):
        return (record.valid_from,) if record.ended is None else (record.valid_from, record.ended)
    return (record.deleted_at,)


def dated_ahead(record: MemoryRecord | FactRecord | Tombstone, now: float | None = None) -> str:
    """Why `record` is refused for its date ("" if it is not): dated more than
    :data:`MAX_CLOCK_SKEW` ahead of this machine's clock."""
    limit = latest_allowed(now)
    latest = max(times_of(record))
    if latest <= limit:
        return ""
    days = (latest - limit + MAX_CLOCK_SKEW) / 86400
    when = f"{days:,.0f} days" if days >= 2 else f"{days * 24:,.0f} hours"
    return f"dated {when} ahead of this machine's clock (more than a day ahead is refused)"


def memory_id(project: str, source: str, content: str) -> str:
    """SPEC memory id: first 16 hex of SHA-256("{project}:{source}:{content.strip()[:200]}")."""
    key = f"{project}:{source}:{content.strip()[:200]}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def point_id(memory_id_: str) -> str:
    """SPEC Qdrant point id: uuid5(NAMESPACE_URL, "imprint::" + id), as :func:`uuid.uuid5`
    makes it (a test holds them equal), in a third of its time: a sync computes one per
    memory on each side."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + ("imprint::" + memory_id_).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def stored_time(ts: float) -> float:
    """A memory's timestamp as the store keeps it: to the microsecond.

    Qdrant Edge reads back about one float in eight one unit in the last place
    off (its JSON number parsing is not exactly rounded), while values with six
    decimals come back exactly (measured on 20,000). Both machines must hold the
    same number for the same memory, or reconciling would find a difference that
    is not there, so the MemoryStore writes every timestamp through this.
    """
    return round(ts, 6)


def finalize_memory(record: MemoryRecord, *, now: float | None = None) -> MemoryRecord:
    """Return the record with its canonical id, and a timestamp if it had none.

    An imported memory keeps its original timestamp.
    """
    changes: dict[str, object] = {}
    canonical = memory_id(record.project, record.source, record.content)
    if record.id != canonical:
        changes["id"] = canonical
    if not record.timestamp:
        changes["timestamp"] = stored_time(time.time() if now is None else now)
    return msgspec.structs.replace(record, **changes) if changes else record


def content_hash(content: str) -> str:
    """16 hex of SHA-256 over a memory's whole content: what tells two texts of one
    id apart (the id hashes only the first 200 characters, for Imprint's own peers)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


#: A memory copy's version: (timestamp, :func:`content_hash`).
MemoryVersion = tuple[float, str]


def replaces(offered: MemoryVersion, stored: MemoryVersion) -> bool:
    """The merge rule between two live copies of one memory (one id), the same on
    every machine: whether the `offered` copy replaces the `stored` one.

    - same text: the earliest timestamp wins (the memory was first written then);
    - different text (an edit past character 200, which keeps the id): the newer
      timestamp wins, so the edit reaches every machine; equal times, the larger hash.

    A copy without a timestamp (0) never replaces one. Forgetting is decided first,
    by the tombstones (:func:`imprint.tombstones.forgets`).
    """
    ts, text = offered
    if not ts:
        return False
    if text == stored[1]:
        return ts < stored[0]
    return (ts, text) > stored


def winning_copies(records: tuple[MemoryRecord, ...], wanted: tuple[str, ...]) -> tuple[MemoryRecord, ...]:
    """The records whose id is in `wanted`, one per id: the same memory twice in
    one batch keeps the copy :func:`replaces` keeps, as it does across batches and machines."""
    wanted_ids = set(wanted)
    fresh: dict[str, tuple[MemoryRecord, MemoryVersion]] = {}
    for record in records:
        if record.id not in wanted_ids:
            continue
        version = (record.timestamp, content_hash(record.content))
        kept = fresh.get(record.id)
        if kept is None or replaces(version, kept[1]):
            fresh[record.id] = (record, version)
    return tuple(r for r, _ in fresh.values())


def memory_to_payload(record: MemoryRecord) -> dict:
    """The Qdrant payload (and wire form) of a memory, without vectors."""
    return msgspec.to_builtins(record)


#: Decoders built once; used on every file line and wire record.
memory_decoder = msgspec.json.Decoder(MemoryRecord)
fact_decoder = msgspec.json.Decoder(FactRecord)


class _TagKeys(msgspec.Struct):
    tags: dict[str, msgspec.Raw] | None = None


_tag_keys_decoder = msgspec.json.Decoder(_TagKeys)


def unknown_tag_keys(tags: dict[str, object] | None) -> list[str]:
    """Keys of `tags` that are not one of :data:`TAG_KEYS`, sorted."""
    return sorted(set(tags or ()) - set(TAG_KEYS))


def decode_memory_input(line: bytes) -> MemoryRecord:
    """A memory typed or imported by the user: the record schema, and no tag key
    outside :data:`TAG_KEYS` (the same rule as `imprint add --tag`).

    The wire is more lenient: Imprint's own clients drop unknown tag keys, and
    so do we (msgspec ignores them).

    Raises:
        msgspec.DecodeError: the line is not a valid record (the message says why).
        UnicodeDecodeError: bad bytes inside a JSON string.
    """
    record = memory_decoder.decode(line)
    ahead = dated_ahead(record)
    if ahead:
        raise msgspec.ValidationError(f"{ahead} - at `$.timestamp`")
    unknown = unknown_tag_keys(_tag_keys_decoder.decode(line).tags)
    if unknown:
        raise msgspec.ValidationError(
            f"unknown tag key {', '.join(map(repr, unknown[:5]))} (known: {', '.join(TAG_KEYS)}) - at `$.tags`"
        )
    return record


# A memory's vector in an export/import line ----------------------------------
#
# `imprint export --vectors` adds two fields to each memory line:
#   "vector":       base64 of the vector as little-endian float32 (exact, ~2 KB
#                   for 384 dimensions; a JSON array of numbers is read too);
#   "vector_model": the fingerprint of the model that made it.
# `imprint import` stores such a vector as it is when the fingerprint is the
# store's own, so a backup or a move between machines re-embeds nothing.

#: Largest vector accepted from a file.
MAX_VECTOR_DIMENSION = 8192


class CarriedVector(msgspec.Struct):
    """The optional vector fields of a memory line."""

    vector: Annotated[list[float], msgspec.Meta(max_length=MAX_VECTOR_DIMENSION)] | str | None = None
    vector_model: ShortStr = ""


carried_vector_decoder = msgspec.json.Decoder(CarriedVector)


def vector_to_bytes(vector: list[float]) -> bytes:
    """A vector as little-endian float32 (how vectors travel between peers)."""
    import array
    import sys

    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def vector_to_text(vector: list[float]) -> str:
    """A vector as base64 of little-endian float32."""
    import base64

    return base64.b64encode(vector_to_bytes(vector)).decode("ascii")


def vectors_from_bytes(values: list[bytes] | tuple[bytes, ...], dimension: int) -> Any:
    """Vectors as a peer sends them (little-endian float32 each), as one float32 matrix
    (numpy, a row each), checked as :func:`vector_from_field` checks one.

    Raises:
        ValueError: with the reason, for the user.
    """
    import numpy as np

    for value in values:
        if len(value) != 4 * dimension:
            raise ValueError(f"`vector` has {len(value) / 4:g} dimensions, the store's model gives {dimension}")
    matrix = np.frombuffer(b"".join(values), dtype="<f4").reshape(len(values), dimension)
    if not np.isfinite(matrix).all() or not matrix.any(axis=1).all():
        raise ValueError("`vector` holds a non-finite number or only zeros")
    return matrix


def vector_from_field(value: list[float] | str | bytes, dimension: int) -> list[float]:
    """The vector of a line's "vector" field (numbers, or base64 of little-endian float32)
    or of a peer's batch (those bytes), checked: `dimension` finite numbers, not all zero.

    Raises:
        ValueError: with the reason, for the user.
    """
    import array
    import base64
    import binascii
    import math
    import sys

    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("`vector` is neither a list of numbers nor base64 float32") from None
    if isinstance(value, bytes):
        if len(value) % 4:
            raise ValueError("`vector` is not whole float32 values")
        packed = array.array("f")
        packed.frombytes(value)
        if sys.byteorder != "little":
            packed.byteswap()
        vector = packed.tolist()
    else:
        vector = [float(x) for x in value]
    if len(vector) != dimension:
        raise ValueError(f"`vector` has {len(vector)} dimensions, the store's model gives {dimension}")
    if not all(math.isfinite(x) for x in vector) or not any(vector):
        raise ValueError("`vector` holds a non-finite number or only zeros")
    return vector
