"""Messages the local actors (Embedder, MemoryStore, FactStore) receive and reply.

Each request is a frozen Struct; the actor's `on_receive` dispatches on its
type with `match` and returns the reply Struct named in the docstring.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from imprint.messages.records import FactRecord, MemoryRecord, Tags, Tombstone, fact_key

#: How many hex digits of a fact's key lists show (any unique prefix of 4 or more is accepted).
SHORT_FACT_ID = 8


class Ping(msgspec.Struct, frozen=True):
    """Reply: True once the actor's on_start has finished."""


# Embedder -------------------------------------------------------------------


class EmbedTexts(msgspec.Struct, frozen=True):
    """Reply: :class:`Embeddings`, one vector per text, in order."""

    texts: tuple[str, ...]


class Embeddings(msgspec.Struct, frozen=True):
    vectors: list[list[float]]


class SplitTexts(msgspec.Struct, frozen=True):
    """Each text as the chunks the model reads whole (imprint.chunks), cut with its own tokenizer.
    Reply: :class:`Chunks`."""

    texts: tuple[str, ...]


class Chunks(msgspec.Struct, frozen=True):
    """Per text, its chunks in order (a text that fits the window is its one chunk)."""

    chunks: tuple[tuple[str, ...], ...]


class DescribeModel(msgspec.Struct, frozen=True):
    """Reply: :class:`ModelInfo`."""


class ModelInfo(msgspec.Struct, frozen=True):
    name: str
    dimension: int
    #: :mod:`imprint.fingerprint` of the model and backend: which vectors it makes.
    fingerprint: str = ""


class IsModelLoaded(msgspec.Struct, frozen=True):
    """Whether the model is in memory now (a first text to embed loads it: seconds). Reply: bool."""


class DescribeCanaries(msgspec.Struct, frozen=True):
    """Reply: :class:`Canaries`. Loads the model only the first time per fingerprint."""


class Canaries(msgspec.Struct, frozen=True):
    """The vectors of :data:`imprint.fingerprint.CANARIES`, little-endian float32 one after another."""

    vectors: bytes


# MemoryStore -----------------------------------------------------------------


class FindMissing(msgspec.Struct, frozen=True):
    """Reply: :class:`MissingIds`, the ids to write, in input order: not stored yet,
    or stored as a copy the given one replaces (:func:`~imprint.messages.records.replaces`:
    the earliest copy of one text, the newest edit of a text), so every machine
    converges to identical records. `hashes` are the copies'
    :func:`~imprint.messages.records.content_hash`; without them, same texts are assumed."""

    ids: tuple[str, ...]
    timestamps: tuple[float, ...] = ()
    hashes: tuple[str, ...] = ()


class MissingIds(msgspec.Struct, frozen=True):
    """`ids` to write; `kept` are stored as a copy that wins over the one offered
    (an earlier copy, a newer edit), so our copy stays and differs from it."""

    ids: tuple[str, ...]
    kept: tuple[str, ...] = ()
    #: The stored version (timestamp, content hash) of every asked id that is stored:
    #: hand it to :class:`StoreMemories` so the store does not look it up again.
    stored: dict[str, tuple[float, str]] = {}
    #: Asked ids that were forgotten here (and the copy offered is not newer).
    forgotten: tuple[str, ...] = ()


class StoreMemories(msgspec.Struct, frozen=True):
    """Store records with their vectors; existing ids are skipped unless the record
    replaces the stored copy (an earlier copy of the same text, a newer edit).
    Reply: :class:`StoreResult` (`updated`: copies replaced).

    ``stored`` is :attr:`MissingIds.stored` from the FindMissing just asked
    for these records (the store then trusts it: this process is the store's only
    writer); None looks the stored versions up. ``model`` is the fingerprint of
    the model that made the vectors (None: the running model); the store refuses
    vectors of any model but its own."""

    records: tuple[MemoryRecord, ...]
    vectors: list[list[float]]
    stored: dict[str, tuple[float, str]] | None = None
    model: str | None = None
    #: Ids whose vectors came from a peer unchecked, and that peer's fingerprint: they are
    #: marked unverified (never sent on, never exported) until the background check
    #: (imprint.actors.verifier) has embedded them here and compared.
    unverified: tuple[str, ...] = ()
    peer: str = ""
    #: False: the embedded store may keep the write unflushed (a later StoreMemories of the
    #: same batch flushes it; the caller keeps the batch in its spool until then).
    flush: bool = True


FactIdentity = tuple[str, str, str, float]


class StoreResult(msgspec.Struct, frozen=True):
    """`skipped` counts records whose identity was there (`updated` of them
    replaced a later copy of the same memory; `ended` facts got an end time).

    `kept_ids` (memories) and `kept_facts` name the records whose stored copy
    stays different from the one given (ours is earlier, or ended otherwise):
    after a pull, those are the records the peer still lacks.
    """

    inserted: int = 0
    skipped: int = 0
    ended: int = 0
    updated: int = 0
    kept_ids: tuple[str, ...] = ()
    kept_facts: tuple[FactIdentity, ...] = ()
    #: Of `skipped`, the records forgotten here (a tombstone not older than them);
    #: for tombstones stored, the copies they removed.
    forgotten: int = 0
    #: Of `inserted` + `updated` memories, those stored with the vector the peer sent (checked).
    vectors_reused: int = 0


class ForgetMemories(msgspec.Struct, frozen=True):
    """Forget memories: these ids, or every memory matching ``where``. Each is
    deleted and leaves a tombstone of ``deleted_at`` (or its own timestamp, if
    later: a tombstone must cover the copy it removes). Reply: :class:`Forgotten`."""

    deleted_at: float
    ids: tuple[str, ...] = ()
    where: MemoryFilter | None = None


class Forgotten(msgspec.Struct, frozen=True):
    """What was forgotten; ``unknown``: asked ids that are not stored (no tombstone made)."""

    forgotten: tuple[str, ...]
    unknown: tuple[str, ...] = ()


class StoreTombstones(msgspec.Struct, frozen=True):
    """Record tombstones (of this store's dataset) from elsewhere and remove the
    copies they cover. Reply: :class:`StoreResult` (``inserted``: tombstones new
    or later here; ``forgotten``: copies removed)."""

    tombstones: tuple[Tombstone, ...]
    #: The fingerprint of the peer they came from: what they remove goes to the trash
    #: (:mod:`imprint.trash`), marked with it.
    peer: str = ""


class ListTrash(msgspec.Struct, frozen=True):
    """The trash of this store (:mod:`imprint.trash`), oldest first. Reply: tuple of TrashEntry."""

    since: float = 0.0
    peer: str = ""
    ids: tuple[int, ...] = ()
    limit: int = 1000
    after: int = 0


class RemoveTrash(msgspec.Struct, frozen=True):
    """Drop these trash entries (restored, or thrown away); all of them when `ids` is None. Reply: int."""

    ids: tuple[int, ...] | None = None


class Document(msgspec.Struct, frozen=True):
    """A text to store as memories: chunked when longer than the model's window (imprint.chunks).
    A document without a source that needs several chunks gets `text:<hash of its text>`."""

    content: str
    project: str = "default"
    type: str = "note"
    tags: Tags = Tags()
    source: str = ""
    source_mtime: float = 0.0


class StoredText(msgspec.Struct, frozen=True):
    """What storing one Document did: its chunks' ids in order, the source they share, how many
    were new, and (replacing a source) how many older chunks of it were forgotten."""

    ids: tuple[str, ...]
    source: str = ""
    inserted: int = 0
    #: Chunks that replaced a stored copy (a newer text of the same id: an edit past character 200).
    updated: int = 0
    forgotten: int = 0


class Overview(msgspec.Struct, frozen=True):
    """A workspace at a glance (the agents' `status` tool)."""

    workspace: str
    memories: int
    facts_active: int
    facts_ended: int
    model: str
    projects: tuple[tuple[str, int], ...] = ()
    last_sync: str = ""


class TrashRestored(msgspec.Struct, frozen=True):
    """What `imprint trash restore` brought back."""

    memories: int = 0
    facts: int = 0


class ListVersions(msgspec.Struct, frozen=True):
    """Every record's key and version, and every tombstone, of this store's dataset,
    read without content: what reconciliation compares. Reply: :class:`Versions`."""


class Versions(msgspec.Struct, frozen=True):
    """Memories: (id, timestamp, content hash); facts: (key, end) — see :mod:`imprint.protocol.items`."""

    records: tuple[tuple[str, float, str] | tuple[str, float], ...]
    tombstones: tuple[tuple[str, float], ...]


class SummarizeVersions(msgspec.Struct, frozen=True):
    """The summary of what ListVersions would list, records and tombstones, without
    listing it (:mod:`imprint.summaries`). Reply: :class:`VersionSummary`."""


class VersionSummary(msgspec.Struct, frozen=True):
    """How many items, and the sum of their 128-bit hashes modulo 2**128."""

    count: int
    total: int


class RetrieveTombstones(msgspec.Struct, frozen=True):
    """Reply: tuple of :class:`Tombstone` for those keys that are tombstoned."""

    keys: tuple[str, ...]


class RetrieveMemories(msgspec.Struct, frozen=True):
    """Reply: tuple of MemoryRecord, those of ``ids`` that are stored; with
    ``vectors``, a :class:`MemoryPage` of them with their vectors and models."""

    ids: tuple[str, ...]
    vectors: bool = False
    #: Vectors not checked yet come too (only the background check asks for them).
    unverified: bool = False


class Unverified(msgspec.Struct, frozen=True):
    """A memory whose vector came from a peer and is not checked yet."""

    id: str
    hash: str
    peer: str


class TakeUnverified(msgspec.Struct, frozen=True):
    """The next memories to check, those of distrusted peers first, then the oldest.
    Reply: tuple of :class:`Unverified`."""

    limit: int = 32


class ResolveUnverified(msgspec.Struct, frozen=True):
    """The background check's verdict: `checked` ids are done; `replaced` ids get these
    vectors of ours (the peer's were wrong), and `distrust` (a peer fingerprint) is not
    believed again. Reply: int, vectors replaced."""

    checked: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    vectors: list[list[float]] = []
    distrust: str = ""


class VectorChecks(msgspec.Struct, frozen=True):
    """Reply of :class:`DescribeVectorChecks`: vectors waiting for a check, and the peers
    whose vectors were found wrong (never taken again)."""

    waiting: int = 0
    distrusted: tuple[str, ...] = ()


class DescribeVectorChecks(msgspec.Struct, frozen=True):
    """Reply: :class:`VectorChecks`."""


class PageMemories(msgspec.Struct, frozen=True):
    """One page of memories in stable (point id) order. Reply: :class:`MemoryPage`.
    With ``vectors``, each record's vector and model fingerprint come too."""

    limit: int
    after: str | None = None
    vectors: bool = False


class MemoryPage(msgspec.Struct, frozen=True):
    """``vectors`` and ``models`` (fingerprints) line up with ``records`` when asked for."""

    records: tuple[MemoryRecord, ...]
    next_after: str | None
    vectors: tuple[list[float], ...] = ()
    models: tuple[str, ...] = ()


FacetKey: TypeAlias = Literal["project", "type", "source"]


class MemoryFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    """Memories whose fields equal these (None: any), whose content holds `text` (as typed), and
    whose timestamp is in [after, before)."""

    project: str | None = None
    type: str | None = None
    source: str | None = None
    text: str | None = None
    after: float | None = None
    before: float | None = None

    def narrowed(self) -> bool:
        """Whether anything besides equal fields narrows it."""
        return bool(self.text) or self.after is not None or self.before is not None

    def conditions(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in (("project", self.project), ("type", self.type), ("source", self.source))
                if v is not None]


class FacetMemories(msgspec.Struct, frozen=True):
    """The most frequent values of a field among matching memories.
    Reply: tuple of :class:`FacetCount`, most frequent first."""

    key: FacetKey
    limit: int = 1000
    where: MemoryFilter = MemoryFilter()


class FacetCount(msgspec.Struct, frozen=True):
    value: str
    count: int


class NewestMemories(msgspec.Struct, frozen=True):
    """Matching memories, newest first (oldest first with `oldest_first`), from ``offset``.
    Reply: tuple of MemoryRecord."""

    where: MemoryFilter = MemoryFilter()
    offset: int = 0
    limit: int = 50
    oldest_first: bool = False


class SearchMemories(msgspec.Struct, frozen=True):
    """Nearest memories to a query vector. Reply: :class:`SearchHits`."""

    vector: list[float]
    limit: int = 10
    project: str | None = None
    #: More conditions (type, source); its project, if any, wins over `project`.
    where: MemoryFilter | None = None


class SearchHit(msgspec.Struct, frozen=True):
    score: float
    record: MemoryRecord


class SearchHits(msgspec.Struct, frozen=True):
    hits: tuple[SearchHit, ...]


class CountMemories(msgspec.Struct, frozen=True):
    """Reply: int, the number of matching memories (0 if there is no store yet)."""

    where: MemoryFilter = MemoryFilter()


class DescribeStore(msgspec.Struct, frozen=True):
    """Reply: :class:`StoreInfo`."""


class StoreInfo(msgspec.Struct, frozen=True):
    """Where the store is (``kind`` "edge" or "server"), its vector size and the
    fingerprint of the model its vectors come from ("" if not known)."""

    location: str
    kind: str
    dimension: int | None
    count: int
    model: str = ""
    model_name: str = ""


# FactStore -------------------------------------------------------------------


class StoreFacts(msgspec.Struct, frozen=True):
    """Insert facts in one transaction; existing identities are skipped, and an
    incoming end time ends our open copy. Reply: :class:`StoreResult`."""

    records: tuple[FactRecord, ...]


class PageFacts(msgspec.Struct, frozen=True):
    """One page of facts in stable identity order. Reply: :class:`FactPage`."""

    limit: int
    after: tuple[str, str, str, float] | None = None


class StoredFact(msgspec.Struct, frozen=True):
    """A fact with its local row number (``fact_id``, this machine's only) and its
    :attr:`key`, the id every machine shares."""

    fact_id: int
    record: FactRecord

    @property
    def key(self) -> str:
        """The fact's id on every machine: :func:`fact_key` of its identity (16 hex)."""
        return fact_key(self.record.identity)

    @property
    def short_id(self) -> str:
        """What lists show: the first :data:`SHORT_FACT_ID` hex digits of :attr:`key`."""
        return self.key[:SHORT_FACT_ID]


class FactPage(msgspec.Struct, frozen=True):
    facts: tuple[StoredFact, ...]
    next_after: tuple[str, str, str, float] | None


class ListFacts(msgspec.Struct, frozen=True):
    """Reply: tuple of :class:`StoredFact`, open facts unless `include_ended`."""

    subject: str | None = None
    predicate: str | None = None
    include_ended: bool = False
    limit: int = 1000
    object: str | None = None
    #: The facts true at this time (started by then, not ended by then); ended ones included.
    as_of: float | None = None


class AddFact(msgspec.Struct, frozen=True):
    """Reply: :class:`StoredFact` (existing one if the identity was there)."""

    record: FactRecord


class EndFact(msgspec.Struct, frozen=True):
    """Set `ended` on an open fact. Reply: :class:`StoredFact`; raises if unknown or already ended."""

    #: The fact's id (its key, or a unique prefix of 4+ hex digits) or, for one release,
    #: its local number as older versions printed it.
    fact: str
    ended: float


class ShowFact(msgspec.Struct, frozen=True):
    """Reply: the :class:`StoredFact` an id names (as :attr:`EndFact.fact`); raises if none
    or more than one."""

    fact: str


class ForgetFact(msgspec.Struct, frozen=True):
    """Delete a fact and leave its tombstone. Reply: the :class:`StoredFact` forgotten;
    raises if unknown."""

    #: As :attr:`EndFact.fact`.
    fact: str
    deleted_at: float


class RetrieveFacts(msgspec.Struct, frozen=True):
    """Reply: tuple of FactRecord, those of these :func:`fact_key` keys that are stored."""

    keys: tuple[str, ...]


class CountFacts(msgspec.Struct, frozen=True):
    """Reply: :class:`FactCounts`."""


class FactCounts(msgspec.Struct, frozen=True):
    active: int
    ended: int
