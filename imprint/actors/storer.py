"""Storer: the second receive stage, from the spool into the stores.

Takes the oldest spooled batch, embeds the memories that are new (one
chunk of texts per message, so a stop is handled within a fraction of a
second), writes the batch to the MemoryStore in one upsert or to the
FactStore in one transaction, and only then removes it from the spool. It
tells whoever watches the batch's stream (see :class:`Watch`) what it did,
and :class:`StreamStored` once a complete stream is stored.

It also stores what an interrupted sync left in the spool: the command that
opens the store wakes it first (see :class:`imprint.local.LocalActors`).

Vectors a peer sent with its memories (protocol 2, same model fingerprint)
are stored as they are, marked unverified; the Verifier embeds them all
again in the background, replaces any that are off and distrusts their
sender (:mod:`imprint.actors.verifier`). A vector that is unreadable (not
float32, wrong size, not finite, all zeros) or missing, and nothing more from
that stream is taken as it is: everything is embedded here, and the watcher
is told (:class:`VectorsRefused`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from imprint.actors.activity import ReadActivity
from imprint.actors.base import ImprintActor, ask
from imprint.errors import ImprintError
from imprint.messages.records import (
    MemoryRecord,
    MemoryVersion,
    content_hash,
    vectors_from_bytes,
    winning_copies,
)
from imprint.messages.session import (
    BatchStored,
    SpoolIdle,
    StageFailed,
    StoreFailed,
    StreamStored,
    Unwatch,
    VectorsRefused,
    Wake,
    Watch,
)
from imprint.messages.store import (
    DescribeStore,
    DescribeVectorChecks,
    EmbedTexts,
    FindMissing,
    StoreFacts,
    StoreMemories,
    StoreResult,
)
from imprint.spool import Spool, SpooledBatch

#: Watch every stream (leftovers of an interrupted sync included).
ALL_STREAMS = ""
#: Texts embedded per message: small enough that a stop waits at most a few
#: hundred milliseconds, big enough to keep the model's batches efficient.
EMBED_CHUNK = 32
#: Memory batches that came with vectors are stored this many records at a time (the spool
#: joins consecutive ones): one Edge upsert, flush and index transaction for all, where those
#: of each 500-record batch took as long as building its points.
JOIN_RECORDS = 5000
#: Records per store message: what a search that comes meanwhile may wait behind. With 1,000
#: the store half of a search during a sync reached 110-230 ms under bench_service's load,
#: with 250 it stays under ~100 ms; bigger parts store faster (a 100k first sync: 18.0 s
#: against 20.8 s), so small ones are used only while searches come (ReadActivity).
STORE_PART = 1000
STORE_PART_SEARCHED = 250
#: Seconds after a search during which the store writes in small parts.
SEARCHED_WINDOW = 5.0
#: A received vector this close (cosine) to ours is the same model's.
MIN_COSINE = 0.999


class _Step(msgspec.Struct, frozen=True):
    """Do the next unit of work (posted to self)."""


class Storer(ImprintActor):
    """Answers Watch, Unwatch and Wake; stores the spool's batches in order.

    Args:
        spool_path: the workspace's spool.
        memory_store, fact_store: where records go. Without a memory store,
            only fact batches are stored (a facts-only command).
        embedder: embeds new memory texts; may be None when no memory batch waits.
    """

    def __init__(self, *, spool_path: Path, memory_store: Any, fact_store: Any, embedder: Any = None,
                 reads: ReadActivity | None = None) -> None:
        super().__init__()
        self.reads = reads or ReadActivity()
        self.spool_path = spool_path
        self.memory_store = memory_store
        self.fact_store = fact_store
        self.embedder = embedder
        self.datasets: tuple[Any, ...] = ("memories", "facts") if memory_store is not None else ("facts",)
        self._spool: Spool | None = None
        self._watchers: dict[str, Any] = {}
        self._busy = False
        self._current: SpooledBatch | None = None
        self._todo: list[MemoryRecord] = []
        self._vectors: list[list[float]] = []
        self._kept: tuple[str, ...] = ()
        self._stored: dict[str, MemoryVersion] = {}
        #: Vectors of the batch in hand came from the peer (checked): their model.
        self._given_model: str | None = None
        self._reused = 0
        #: Memories of the batch in hand stored with the peer's vector unchecked (not in the sample).
        self._unverified: tuple[str, ...] = ()
        #: Streams whose peer the background check has not distrusted (so far: a stream is short-lived).
        self._trusted_streams: set[str] = set()
        #: Streams whose vectors failed the check: everything from them is embedded here.
        self._distrusted: set[str] = set()
        self._store_info: Any = None

    def start_up(self) -> None:
        self._spool = Spool(self.spool_path)

    def on_failure(self, exception_type: Any, exception_value: BaseException | None, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        # A bug here would otherwise leave every watcher waiting for a StreamStored.
        for listener in {id(w): w for w in self._watchers.values()}.values():
            listener.tell(StageFailed(stage="Storer", message=str(exception_value) or exception_type.__name__))

    def shut_down(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def handle(self, message: Any) -> Any:
        match message:
            case Watch(stream=stream, listener=listener):
                self._watchers[stream] = listener
                if stream and not self._busy:
                    self._tell_if_done(stream)
            case Unwatch(stream=stream):
                self._watchers.pop(stream, None)
            case Wake():
                if not self._busy:
                    self._busy = True
                    self._step()
            case _Step():
                self._step()
            case _:
                return super().handle(message)
        return None

    # ---------------------------------------------------------------- the work

    def _step(self) -> None:
        try:
            self._work()
        except ImprintError as exc:
            # The batch stays in the spool; the next command that opens the store retries it.
            logger.error("storing a received batch failed: {}", exc)
            self._current = None
            self._busy = False
            for listener in {id(w): w for w in self._watchers.values()}.values():
                listener.tell(StoreFailed(message=str(exc)))

    def _work(self) -> None:
        if self._current is None:
            batch = self._spool.next_batch(self.datasets, join=JOIN_RECORDS)
            if batch is None:
                self._idle()
                return
            self._begin(batch)
        batch = self._current
        if batch.dataset == "memories" and len(self._vectors) < len(self._todo):
            # One chunk per message: a stop or a new watcher is handled between chunks.
            start = len(self._vectors)
            texts = tuple(r.content for r in self._todo[start : start + EMBED_CHUNK])
            self._vectors.extend(ask(self._embedder(), EmbedTexts(texts=texts)).vectors)
            self._again()
            return
        if batch.dataset == "memories":
            result = self._store_memories(batch)
            kept_ids = set(self._kept)
            same_ids = tuple(dict.fromkeys(r.id for r in batch.records if r.id not in kept_ids))
            stored = BatchStored(stream=batch.stream, dataset="memories", count=len(batch.records), result=result,
                                 same_ids=same_ids)
        else:
            result = ask(self.fact_store, StoreFacts(records=batch.records))
            kept = set(result.kept_facts)
            same_facts = tuple(dict.fromkeys(r.identity for r in batch.records if r.identity not in kept))
            stored = BatchStored(stream=batch.stream, dataset="facts", count=len(batch.records), result=result,
                                 same_facts=same_facts)
        self._spool.remove(batch.batch_ids)
        self._current, self._todo, self._vectors, self._kept, self._stored = None, [], [], (), {}
        self._given_model, self._reused = None, 0
        self._tell(batch.stream, stored)
        self._tell_if_done(batch.stream)
        self._again()

    def _begin(self, batch: SpooledBatch) -> None:
        self._current = batch
        self._unverified = ()
        self._todo, self._vectors, self._kept, self._stored = [], [], (), {}
        self._given_model, self._reused = None, 0
        if batch.dataset != "memories":
            return
        records = batch.records
        missing = ask(self.memory_store, FindMissing(ids=tuple(r.id for r in records),
                                                     timestamps=tuple(r.timestamp for r in records),
                                                     hashes=tuple(content_hash(r.content) for r in records)))
        # Shortest first: each chunk then holds texts of about one length, so the model pads
        # little (random lengths padded to each chunk's longest cost a third of the time).
        self._todo = sorted(winning_copies(records, missing.ids), key=lambda r: len(r.content))
        self._kept, self._stored = missing.kept, missing.stored
        if batch.vectors and self._todo and batch.stream not in self._distrusted and not self._peer_distrusted(batch):
            self._vectors = self._checked_vectors(batch)
            if self._vectors:
                self._given_model = batch.model

    def _peer_distrusted(self, batch: SpooledBatch) -> bool:
        """A peer whose vectors the background check found wrong is never believed again (asked once a stream)."""
        if batch.stream in self._trusted_streams:
            return False
        if not batch.peer or batch.peer not in ask(self.memory_store, DescribeVectorChecks()).distrusted:
            self._trusted_streams.add(batch.stream)
            return False
        self._refuse(batch.stream, f"earlier vectors from device {batch.peer} were found wrong")
        return True

    def _checked_vectors(self, batch: SpooledBatch) -> list[list[float]]:
        """The peer's vectors for the memories to write, if they are readable and of our
        model; else [] (the batch is embedded here). They are used at once and checked in
        full later, in the background (:mod:`imprint.actors.verifier`), so nothing on the
        way in needs the model: loading it and embedding a sample cost more than the rest
        of a same-model sync."""
        if self._store_info is None:
            self._store_info = ask(self.memory_store, DescribeStore())
        info = self._store_info
        if not info.model or batch.model != info.model or not info.dimension:
            return []  # another model's vectors (or no store yet): embed here, as always
        sent = {(r.id, content_hash(r.content)): v for r, v in zip(batch.records, batch.vectors)}
        carried = [sent.get((r.id, content_hash(r.content))) for r in self._todo]
        if any(v is None for v in carried):
            return []  # the peer had no vector of this model for some: embed the batch here
        try:
            matrix = vectors_from_bytes(carried, info.dimension)
        except ValueError as exc:
            self._refuse(batch.stream, f"a vector it sent is unreadable ({exc})")
            return []
        self._reused += len(carried)
        self._unverified = tuple(r.id for r in self._todo)
        return matrix.tolist()

    def _refuse(self, stream: str, why: str) -> None:
        self._distrusted.add(stream)
        message = (f"the other machine's vectors are not used: {why}; everything it sends is embedded here "
                   "instead (slower, same result)")
        logger.warning(message)
        self._tell(stream, VectorsRefused(stream=stream, message=message))

    def _store_memories(self, batch: SpooledBatch) -> StoreResult:
        n = len(batch.records)
        if not self._todo:
            return StoreResult(skipped=n, kept_ids=self._kept)
        # In parts, each its own message: a search waits behind one part, not behind the whole
        # joined batch (Edge holds the GIL while it writes); flushed once, with the last part.
        inserted = updated = start = 0
        todo = tuple(self._todo)
        while start < len(todo):
            end = start + (STORE_PART_SEARCHED if self.reads.recent(SEARCHED_WINDOW) else STORE_PART)
            result = ask(self.memory_store, StoreMemories(
                records=todo[start:end], vectors=self._vectors[start:end],
                stored=self._stored, model=self._given_model,
                unverified=self._unverified if self._given_model else (), peer=batch.peer,
                flush=end >= len(todo)))
            inserted += result.inserted
            updated += result.updated
            start = end
        reused, self._reused = self._reused, 0
        return StoreResult(inserted=inserted, skipped=n - inserted, updated=updated, kept_ids=self._kept,
                           vectors_reused=reused)

    def _embedder(self) -> Any:
        if self.embedder is None:
            raise ImprintError("memories wait in the receive spool but no embedding model is running")
        return self.embedder

    def _tell_if_done(self, stream: str) -> None:
        """StreamStored, once, when `stream` is complete and none of its batches waits."""
        if self._spool.stream_done(stream):
            self._spool.forget_stream(stream)
            self._tell(stream, StreamStored(stream=stream))

    def _idle(self) -> None:
        self._busy = False
        for stream in [s for s in self._watchers if s]:
            self._tell_if_done(stream)
        # Streams an interrupted sync left unfinished: their batches are stored, nobody waits for them.
        self._spool.forget_streams(keep=set(self._watchers))
        if ALL_STREAMS in self._watchers:
            self._watchers[ALL_STREAMS].tell(SpoolIdle())

    def _tell(self, stream: str, message: Any) -> None:
        for key in (stream, ALL_STREAMS):
            listener = self._watchers.get(key)
            if listener is not None:
                listener.tell(message)

    def _again(self) -> None:
        try:
            self.actor_ref.tell(_Step())
        except pykka.ActorDeadError:
            pass


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
