"""Starting and stopping the local actors a command needs, and the one path
by which memories are written (dedup → embed new texts → store).

Their lifecycle is :class:`imprint.runtime.ActorGroup`'s, like every other
group of actors.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Literal

import pykka

from imprint.actors.activity import ReadActivity
from imprint.actors.base import ASK_TIMEOUT, QueueListener, ask
from imprint.actors.embedder import Embedder
from imprint.actors.fact_store import FactStore
from imprint.actors.memory_store import MemoryStore
from imprint.actors.storer import ALL_STREAMS, EMBED_CHUNK, Storer
from imprint.actors.verifier import Verifier
from imprint.config import Settings
from imprint.errors import StoreError
from imprint.messages.records import MemoryRecord, content_hash, winning_copies
from imprint.messages.session import (
    BatchStored,
    SpoolIdle,
    StageFailed,
    StoreFailed,
    Unwatch,
    Wake,
    Watch,
)
from imprint.messages.store import (
    DescribeModel,
    EmbedTexts,
    FindMissing,
    ModelInfo,
    PageFacts,
    PageMemories,
    StoredFact,
    StoreMemories,
    StoreResult,
)
from imprint.runtime import ActorGroup
from imprint.spool import Pending, read_pending, spool_path

#: Seconds a model may take to load (torch import included) before we give up.
START_TIMEOUT = 180.0


def all_memories(memory_store: pykka.ActorRef[Any], *, page: int = 500) -> Iterator[MemoryRecord]:
    """Every memory, a page at a time, in the store's stable order."""
    after = None
    while True:
        batch = ask(memory_store, PageMemories(limit=page, after=after))
        yield from batch.records
        if batch.next_after is None:
            return
        after = batch.next_after


def all_facts(fact_store: pykka.ActorRef[Any], *, page: int = 500) -> Iterator[StoredFact]:
    """Every fact, a page at a time, in identity order."""
    after = None
    while True:
        batch = ask(fact_store, PageFacts(limit=page, after=after))
        yield from batch.facts
        if batch.next_after is None:
            return
        after = batch.next_after


def given_key(record: MemoryRecord) -> tuple[str, str]:
    """What a vector handed to :func:`embed_and_store` belongs to: a memory's id and
    text (two texts of one id, an edit and its original, have two vectors)."""
    return record.id, content_hash(record.content)


def embed_in_chunks(embedder: pykka.ActorRef[Any], texts: tuple[str, ...], *, timeout: float) -> list[list[float]]:
    """Vectors of `texts`, asked of the Embedder EMBED_CHUNK at a time: its mailbox is first come
    first served, so an `add` or an agent's `store` waits for one chunk of an import or an ingest
    running beside it (~0.1-0.3 s), not for the whole batch (2,000 lines: seconds)."""
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_CHUNK):
        vectors.extend(ask(embedder, EmbedTexts(texts=texts[start:start + EMBED_CHUNK]), timeout=timeout).vectors)
    return vectors


def embed_and_store(
    embedder: pykka.ActorRef[Any] | None, memory_store: pykka.ActorRef[Any], records: tuple[MemoryRecord, ...], *,
    given: dict[tuple[str, str], list[float]] | None = None, timeout: float = ASK_TIMEOUT,
) -> StoreResult:
    """Store finalized memory records: only texts not stored yet are embedded.

    `given` holds vectors already made by the store's own model (checked by the
    caller through their fingerprint), by :func:`given_key`; those records are not embedded.
    """
    if not records:
        return StoreResult()
    request = FindMissing(ids=tuple(r.id for r in records), timestamps=tuple(r.timestamp for r in records),
                          hashes=tuple(content_hash(r.content) for r in records))
    missing = ask(memory_store, request, timeout=timeout)
    fresh = winning_copies(records, missing.ids)
    if not fresh:
        return StoreResult(skipped=len(records))
    given = given or {}
    to_embed = tuple(r for r in fresh if given_key(r) not in given)
    embedded: list[list[float]] = []
    if to_embed:
        if embedder is None:
            raise StoreError("no embedding model is loaded to embed these memories")
        embedded = embed_in_chunks(embedder, tuple(r.content for r in to_embed), timeout=timeout)
    made = iter(embedded)
    vectors = [given[given_key(r)] if given_key(r) in given else next(made) for r in fresh]
    result = ask(memory_store, StoreMemories(records=fresh, vectors=vectors, stored=missing.stored), timeout=timeout)
    return StoreResult(inserted=result.inserted, skipped=len(records) - result.inserted, updated=result.updated)


def all_memories_with_vectors(memory_store: pykka.ActorRef[Any], *, page: int = 500
                              ) -> Iterator[tuple[MemoryRecord, list[float], str]]:
    """Every memory with its vector and the fingerprint of the model that made it."""
    after = None
    while True:
        batch = ask(memory_store, PageMemories(limit=page, after=after, vectors=True))
        yield from zip(batch.records, batch.vectors or (), batch.models or ())
        if batch.next_after is None:
            return
        after = batch.next_after


def say_on_stderr(text: str) -> None:
    """The default way LocalActors tells the user something: a line on stderr."""
    from imprint.text import visible

    sys.stderr.write(visible(text) + "\n")
    sys.stderr.flush()


def migrate_legacy_store(settings: Settings, model: ModelInfo | None, *,
                         note: Callable[[str], None] = say_on_stderr) -> None:
    """Move the workspace's memories out of an older version's store, once (see
    :mod:`imprint.storage.legacy`), with a progress bar; nothing to do otherwise."""
    from imprint.storage.edge import read_meta
    from imprint.storage.legacy import LegacyStore, finish_interrupted, migrate

    legacy = LegacyStore(settings.legacy_qdrant_path, settings.collection)
    if not legacy.exists():
        return
    meta = read_meta(settings.memories_path)
    if meta is not None:
        finish_interrupted(legacy, meta)
        return
    from tqdm import tqdm

    from imprint.fingerprint import model_fingerprint

    fingerprint = model.fingerprint if model else model_fingerprint(settings.model, cache_dir=settings.cache_dir)
    total = legacy.rows()
    note(f"imprint: moving {total:,} memories to the new store format (once; vectors are kept, nothing is "
         "re-embedded; the old store stays until the copy checks out)…")
    with tqdm(total=total, desc="migrating", unit="mem", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        migrate(legacy, settings.memories_path, model=fingerprint, model_name=model.name if model else settings.model,
                progress=progress)


class LocalActors:
    """The local actors of one command (or of the dashboard, for its lifetime):
    an :class:`~imprint.runtime.ActorGroup` started on enter and stopped on exit.

    Args:
        settings: resolved options.
        embedder: start the model (needed to write or search memories).
        memories: start the MemoryStore; without the embedder it is read-only.
        facts: start the FactStore.
        read_only: open what exists for reading and create nothing (`status`).
        note: how to tell the user about slow start-up work (a migration, a sync's leftovers);
            the service hands it the line of the client whose request started these actors.
    """

    def __init__(self, settings: Settings, *, embedder: bool = False, memories: bool = True, facts: bool = True,
                 read_only: bool = False, note: Callable[[str], None] = say_on_stderr,
                 leftovers: Literal["wait", "background"] = "wait",
                 quiet: Callable[[], float] | None = None) -> None:
        self.settings = settings
        #: Seconds the owner (the service) has been quiet: given, a Verifier checks a peer's
        #: vectors in the background while it is (imprint.actors.verifier).
        self.quiet = quiet
        #: What an interrupted sync left in the spool: stored before the command runs ("wait"),
        #: or while it runs ("background": the service, where reads must never wait for it).
        self.leftovers = leftovers
        self.embedder = embedder
        self.memories = memories
        self.facts = facts
        self.read_only = read_only
        self.note = note
        self.model: ModelInfo | None = None
        self.group = ActorGroup("local")
        #: When the memory store last answered a search (the Storer writes smaller parts then).
        self.reads = ReadActivity()

    def __enter__(self) -> LocalActors:
        try:
            self._start()
        except BaseException as exc:
            self.stop(interrupted=isinstance(exc, KeyboardInterrupt))
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))

    def _start(self) -> None:
        s, group = self.settings, self.group
        # What an interrupted sync left in the receive spool is stored before the
        # command runs, by any command that opens the store (so export, search…
        # see it): all of it when the command opens the memory store (which may
        # need the model and the fact store too), the facts alone for a facts command.
        pending = Pending() if self.read_only else read_pending(spool_path(s.workspace_dir))
        if not self.memories:
            pending = Pending(facts=pending.facts) if self.facts else Pending()
        if self.embedder or pending.memories:
            group.start("embedder", Embedder, model_name=s.model, cache_dir=s.cache_dir)
            self.model = ask(group["embedder"], DescribeModel())
        if self.memories:
            if not s.qdrant_url and not self.read_only:
                migrate_legacy_store(s, self.model, note=self.note)
            m = self.model
            group.start("memory_store", MemoryStore, collection=s.collection, path=s.memories_path, url=s.qdrant_url,
                        dimension=m.dimension if m else None, model=m.fingerprint if m else "",
                        model_name=m.name if m else "", forgotten_path=s.forgotten_path,
                        read_only=self.read_only, reads=self.reads)
        if self.facts or pending.total:
            group.start("fact_store", FactStore, path=s.facts_path, read_only=self.read_only)
        if "fact_store" in group and not self.read_only and (self.memories or pending.total):
            # The spool's store stage: it stores what sessions receive, and first what is left.
            group.start("storer", Storer, spool_path=spool_path(s.workspace_dir), memory_store=group.get("memory_store"),
                        fact_store=group["fact_store"], embedder=group.get("embedder"), reads=self.reads)
            if self.quiet is not None and "embedder" in group:
                group.start("verifier", Verifier, memory_store=group["memory_store"], embedder=group["embedder"],
                            quiet=self.quiet)
            if pending.total and self.leftovers == "background":
                self.note(f"imprint: storing {pending.total:,} records an interrupted sync received earlier "
                          "(kept in the receive spool), in the background")
                group["storer"].tell(Wake())
            elif pending.total:
                self._finish_interrupted_sync(pending)

    def _finish_interrupted_sync(self, pending: Pending) -> None:
        from tqdm import tqdm

        self.note(
            f"imprint: storing {pending.total:,} records an interrupted sync received earlier "
            "(kept in the receive spool), before anything else…"
        )
        listener = QueueListener()
        storer = self.group["storer"]
        storer.tell(Watch(stream=ALL_STREAMS, listener=listener))
        storer.tell(Wake())
        with tqdm(total=pending.total, desc="storing", unit="rec", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
            try:
                while True:
                    event = listener.get(timeout=ASK_TIMEOUT)
                    match event:
                        case BatchStored(count=count):
                            bar.update(count)
                        case SpoolIdle():
                            return
                        case StoreFailed(message=message) | StageFailed(message=message):
                            raise StoreError(f"could not store what an interrupted sync received: {message}")
            finally:
                storer.tell(Unwatch(stream=ALL_STREAMS))

    def __getitem__(self, name: str) -> pykka.ActorRef[Any]:
        return self.group[name]

    def store_memories(self, records: tuple[MemoryRecord, ...], given: dict[tuple[str, str], list[float]] | None = None
                       ) -> StoreResult:
        return embed_and_store(self.group["embedder"] if "embedder" in self.group else None,
                               self.group["memory_store"], records, given=given)

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop in reverse order (see ActorGroup.stop): a store finishes the write in hand,
        so a batch is whole or absent."""
        self.group.stop(interrupted=interrupted)
