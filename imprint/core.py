"""The core API: the one place every front end calls to use the memory.

The CLI (through the service, :mod:`imprint.service`), the dashboard (inside
the service), and later the MCP server and the chat all go through a
:class:`Core`: remember, search, get, forget, facts, import/export pages,
status and sync sessions. A Core owns the running actors of one workspace
(stores, the spool's storer, the embedder); the service keeps one per
workspace and model for as long as it runs, so the model loads once.

Everything here checks its input (an :class:`~imprint.errors.InputError`
names what is wrong) and leaves stored data untouched when it refuses.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from imprint.chunks import MAX_DOCUMENT_BYTES
from imprint.config import Settings
from imprint.errors import InputError
from imprint.messages import events
from imprint.messages.records import FactRecord, MemoryRecord, dated_ahead
from imprint.messages.store import (
    AddFact,
    CountFacts,
    CountMemories,
    DescribeModel,
    DescribeStore,
    DescribeVectorChecks,
    Document,
    EndFact,
    FacetCount,
    FactCounts,
    FactPage,
    FindMissing,
    ForgetFact,
    ForgetMemories,
    Forgotten,
    IsModelLoaded,
    ListFacts,
    ListTrash,
    MemoryFilter,
    MemoryPage,
    ModelInfo,
    Overview,
    PageFacts,
    PageMemories,
    RemoveTrash,
    RetrieveMemories,
    SearchHit,
    SearchMemories,
    ShowFact,
    SplitTexts,
    StoredFact,
    StoredText,
    StoreInfo,
    StoreResult,
    TrashRestored,
    VectorChecks,
)
from imprint.trash import TrashEntry

#: A memory's id as search and export show it.
MEMORY_ID = re.compile(r"[0-9a-f]{16}")
#: Most results one search returns.
MAX_RESULTS = 1000
#: Seconds a search may take before the log says where the time went.
SLOW_SEARCH = 0.1
#: Most records one page of an export carries.
MAX_PAGE = 5000
#: Most chunks one source may be read back with.
MAX_SOURCE_CHUNKS = 10_000
#: The workspace's record of its last sync.
LAST_SYNC = "last_sync.json"

Note = Callable[[str], None]


def check_memory_ids(ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`ids` without repeats, or InputError naming the first that is not a memory id."""
    bad = [i for i in ids if not isinstance(i, str) or not MEMORY_ID.fullmatch(i)]
    if bad:
        raise InputError(f"not a memory id: {str(bad[0])[:40]!r} (16 hex digits, as search and export show)")
    return tuple(dict.fromkeys(ids))


def _quiet(text: str) -> None:
    pass


class Core:
    """The memory of one workspace, as every front end uses it.

    Args:
        settings: data dir, workspace, model and store of this core.
        local: running LocalActors to use (their owner stops them); by default the core's own.
        note: where start-up remarks go (moving an old store, a sync's leftovers stored first).
    """

    def __init__(self, settings: Settings, *, local: Any = None, note: Note | None = None) -> None:
        from imprint.local import LocalActors, say_on_stderr

        self.settings = settings
        #: Running LocalActors lent by the caller (who keeps owning them), or ours.
        self._last_request = time.monotonic()
        self.local = local if local is not None else LocalActors(settings, embedder=True, leftovers="background",
                                                                 note=note or say_on_stderr, quiet=self.quiet_for)
        self._owned = local is None
        #: Sync sessions under way, by a number of their own.
        self._syncs: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._next_sync = 0
        self._conversations: Any = None
        #: The model's QueryEncoder once the model is loaded; False when the model has none.
        self._query_encoder: Any = None
        #: The memory store's SearchLane (None: not asked yet; False: none, ask the actor).
        self._search_lane: Any = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Core:
        """Start the actors (a sync's leftovers in the spool are stored in the background: a
        read never waits for them, nor fails because storing them fails)."""
        if self._owned:
            self.local.__enter__()
        return self

    def close(self, *, interrupted: bool = False) -> None:
        """Cancel the syncs under way, then stop the actors."""
        for session in list(self._syncs.values()):
            try:
                session.cancel("the imprint service is stopping")
            except Exception:
                pass
        if self._owned:
            self.local.stop(interrupted=interrupted)
        if self._conversations is not None:
            self._conversations.close()

    def conversations(self) -> Any:
        """The chat's conversations of this workspace (imprint.chat.store; opened on first use)."""
        with self._lock:
            if self._conversations is None:
                from imprint.chat.store import Conversations

                self._conversations = Conversations(self.settings.workspace_dir / "chat.db")
            return self._conversations

    def quiet_for(self) -> float:
        """Seconds since the model last served a request (0 while a sync runs): background work that
        needs the model waits for quiet. Reads that need no model (status, pages) do not count."""
        if self.syncs_running:
            return 0.0
        return time.monotonic() - self._last_request

    def _ask(self, actor: str, message: Any, *, timeout: float | None = None) -> Any:
        from imprint.actors.base import ASK_TIMEOUT, ask

        return ask(self.local[actor], message, timeout=timeout or ASK_TIMEOUT)

    # ---------------------------------------------------------------- the model

    def model(self) -> ModelInfo:
        """Name, dimension and fingerprint of the model (read from its files: nothing loads)."""
        return self._ask("embedder", DescribeModel())

    def model_loaded(self) -> bool:
        return bool(self._ask("embedder", IsModelLoaded()))

    def embed(self, texts: tuple[str, ...], *, note: Note = _quiet) -> list[list[float]]:
        """Vectors of `texts`; says "loading the embedding model…" first when it is not loaded yet."""
        from imprint.local import START_TIMEOUT, embed_in_chunks

        if texts and not self.model_loaded():
            note("loading the embedding model…")
        self._last_request = time.monotonic()
        return embed_in_chunks(self.local["embedder"], texts, timeout=START_TIMEOUT)

    def embed_query(self, query: str, *, note: Note = _quiet) -> list[float]:
        """The vector of a search query: through the model's traced query encoder once the model
        is loaded (no queue, no GIL held through the model: see QueryEncoder), else the Embedder."""
        from imprint.actors.embedder import GetQueryEncoder

        if self._query_encoder is None:
            vector = self.embed((query,), note=note)[0]  # loads the model if need be
            self._query_encoder = self._ask("embedder", GetQueryEncoder()) or False
            return vector
        self._last_request = time.monotonic()
        if self._query_encoder is False:
            return self.embed((query,), note=note)[0]
        return self._query_encoder.encode((query,))[0]

    # ---------------------------------------------------------------- memories

    def remember(self, records: tuple[MemoryRecord, ...], *, given: dict[tuple[str, str], list[float]] | None = None,
                 note: Note = _quiet, chunk: bool = False) -> StoreResult:
        """Store finalized memory records; only texts not stored yet are embedded
        (`given` vectors, of this store's model, by :func:`imprint.local.given_key`, are used as they are).
        With `chunk`, a record longer than the model's window is stored as its chunks (imprint.chunks)."""
        from imprint.local import START_TIMEOUT, embed_and_store, given_key

        _refuse_dated_ahead(records)
        if chunk:
            records = self._chunked(records, note=note)
        self._last_request = time.monotonic()
        self._wake_storer()
        given = given or {}
        if any(given_key(r) not in given for r in records) and not self.model_loaded():
            note("loading the embedding model…")
        return embed_and_store(self.local["embedder"], self.local["memory_store"], records, given=given,
                               timeout=START_TIMEOUT)

    def _split(self, texts: tuple[str, ...], *, note: Note = _quiet) -> tuple[tuple[str, ...], ...]:
        """Each text in chunks of the model's window (texts that fit need no model)."""
        from imprint.actors.embedder import WINDOW_FLOOR
        from imprint.local import START_TIMEOUT

        if all(len(t) <= WINDOW_FLOOR for t in texts):
            return tuple((t,) for t in texts)
        if not self.model_loaded():
            note("loading the embedding model…")
        return self._ask("embedder", SplitTexts(texts=texts), timeout=START_TIMEOUT).chunks

    def _chunked(self, records: tuple[MemoryRecord, ...], *, note: Note = _quiet) -> tuple[MemoryRecord, ...]:
        """Records as stored: one longer than the model's window becomes its chunks, which share its
        source (`text:<hash>` if it had none), project, type, tags and times."""
        import msgspec

        from imprint.messages.records import content_hash, finalize_memory

        pieces = self._split(tuple(r.content for r in records), note=note)
        out: list[MemoryRecord] = []
        for record, chunks in zip(records, pieces):
            if len(chunks) == 1:
                out.append(record)
                continue
            source = record.source or f"text:{content_hash(record.content)}"
            out.extend(finalize_memory(msgspec.structs.replace(record, id="", content=c, source=source, chunk_index=i))
                       for i, c in enumerate(chunks))
        return tuple(out)

    def store_documents(self, documents: tuple[Document, ...], *, replace: bool = False,
                        note: Note = _quiet) -> tuple[StoredText, ...]:
        """Store texts as memories, each chunked to the model's window, in one pass of the model.
        With `replace`, each document's source then holds exactly its new chunks: older chunks of
        it are forgotten (with tombstones, so every synced machine follows)."""
        from imprint.messages.records import MemoryRecord, content_hash, finalize_memory

        for d in documents:
            if not d.content.strip():
                raise InputError("the content is empty; nothing was stored")
            if len(d.content.encode("utf-8")) > MAX_DOCUMENT_BYTES:
                raise InputError(f"a document is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB; nothing was stored")
        pieces = self._split(tuple(d.content for d in documents), note=note)
        per_doc: list[tuple[MemoryRecord, ...]] = []
        try:
            for d, chunks in zip(documents, pieces):
                source = d.source or (f"text:{content_hash(d.content)}" if len(chunks) > 1 else "")
                per_doc.append(tuple(finalize_memory(MemoryRecord(
                    content=c, project=d.project, type=d.type, tags=d.tags, source=source,
                    chunk_index=i if len(chunks) > 1 else 0, source_mtime=d.source_mtime)) for i, c in enumerate(chunks)))
        except ValueError as exc:
            raise InputError(f"cannot store it: {exc}; nothing was stored") from None
        everything = tuple(r for records in per_doc for r in records)
        before = self._ask("memory_store", FindMissing(ids=tuple(r.id for r in everything),
                                                       timestamps=tuple(r.timestamp for r in everything),
                                                       hashes=tuple(content_hash(r.content) for r in everything)))
        new = set(before.ids)
        held = set(before.stored)
        self.remember(everything, note=note)
        out = []
        for d, records in zip(documents, per_doc):
            forgotten = 0
            source = records[0].source
            if replace and source:
                kept = {r.id for r in records}
                old = tuple(r.id for r in self.source_chunks(source, project=d.project) if r.id not in kept)
                if old:
                    forgotten = len(self.forget(ids=old).forgotten)
            out.append(StoredText(ids=tuple(r.id for r in records), source=source,
                                  inserted=sum(r.id in new and r.id not in held for r in records),
                                  updated=sum(r.id in new and r.id in held for r in records), forgotten=forgotten))
        return tuple(out)

    def source_chunks(self, source: str, *, project: str | None = None, start: int = 0,
                      end: int | None = None) -> tuple[MemoryRecord, ...]:
        """A document's chunks (the memories of one source) in order, from `start` to `end` (inclusive)."""
        from imprint.messages.store import NewestMemories

        found = self._ask("memory_store", NewestMemories(where=MemoryFilter(project=project, source=source),
                                                         limit=MAX_SOURCE_CHUNKS))
        chosen = [r for r in found if r.chunk_index >= start and (end is None or r.chunk_index <= end)]
        return tuple(sorted(chosen, key=lambda r: (r.chunk_index, r.project, r.id)))

    def sources(self, *, project: str | None = None, limit: int = 50) -> tuple[FacetCount, ...]:
        """The sources (documents) held, most chunks first."""
        from imprint.messages.store import FacetMemories

        found = self._ask("memory_store", FacetMemories(key="source", limit=limit + 1, where=MemoryFilter(project=project)))
        return tuple(f for f in found if f.value)[:limit]

    def overview(self) -> Overview:
        """Counts, projects, model, last sync: what an agent's `status` shows."""
        from imprint.messages.store import FacetMemories

        store = self.describe_store()
        facts = self.count_facts()
        projects = self._ask("memory_store", FacetMemories(key="project", limit=20, where=MemoryFilter()))
        return Overview(workspace=self.settings.workspace, memories=store.count, facts_active=facts.active,
                        facts_ended=facts.ended, model=self.settings.model,
                        projects=tuple((f.value, f.count) for f in projects), last_sync=read_last_sync(self.settings))

    def _wake_storer(self) -> None:
        """What waits in the spool (a sync stopped by a full disk, say) is tried again on each write."""
        from imprint.messages.session import Wake

        if "storer" in self.local.group:
            self.local["storer"].tell(Wake())

    def search(self, query: str, *, k: int = 5, project: str | None = None, note: Note = _quiet,
               where: MemoryFilter | None = None) -> tuple[SearchHit, ...]:
        """The `k` memories nearest in meaning to `query`, best first."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("search query is empty")
        if not 1 <= k <= MAX_RESULTS:
            raise InputError(f"-k must be between 1 and {MAX_RESULTS}")
        started = time.perf_counter()
        vector = self.embed_query(query, note=note)
        embedded = time.perf_counter()
        hits = self._search_store(SearchMemories(vector=vector, limit=k, project=project, where=where)).hits
        done = time.perf_counter()
        if done - started > SLOW_SEARCH:
            from loguru import logger

            logger.debug("search took {:.0f} ms: embedding {:.0f} ms, the store {:.0f} ms", (done - started) * 1000,
                         (embedded - started) * 1000, (done - embedded) * 1000)
        return hits

    def _search_store(self, request: SearchMemories) -> Any:
        """Through the store's lane, beside the writes a sync queues in its mailbox (see
        bench_service); through the mailbox when the lane is closed (the store restarting)."""
        from imprint.actors.memory_store import GetSearchLane

        if self._search_lane is None:
            self._search_lane = self._ask("memory_store", GetSearchLane()) or False
        if self._search_lane is not False:
            hits = self._search_lane.search(request)
            if hits is not None:
                return hits
            self._search_lane = None  # closed: the next search asks the store (maybe a new one) again
        return self._ask("memory_store", request)

    def get(self, ids: tuple[str, ...]) -> tuple[MemoryRecord, ...]:
        """The memories of these ids that exist, in no particular order."""
        return tuple(self._ask("memory_store", RetrieveMemories(ids=check_memory_ids(ids))))

    def count(self, where: MemoryFilter = MemoryFilter()) -> int:
        return self._ask("memory_store", CountMemories(where=where))

    def forget(self, *, ids: tuple[str, ...] = (), where: MemoryFilter | None = None) -> Forgotten:
        """Forget memories by id or by filter, leaving tombstones that sync carries."""
        if ids and where is not None:
            raise InputError("give ids or a filter, not both")
        if not ids and where is None:
            raise InputError("forget what? give memory ids or a filter")
        if where is not None and where.project is None:
            raise InputError("a filter to forget by needs a project")
        request = ForgetMemories(deleted_at=time.time(), ids=check_memory_ids(ids)) if ids else \
            ForgetMemories(deleted_at=time.time(), where=where)
        return self._ask("memory_store", request)

    def memory_page(self, *, after: str | None = None, limit: int = 500, vectors: bool = False) -> MemoryPage:
        """One page of every memory, in the store's stable order (an export)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InputError(f"a page holds 1 to {MAX_PAGE} records")
        return self._ask("memory_store", PageMemories(limit=limit, after=after, vectors=vectors))

    def describe_store(self) -> StoreInfo:
        return self._ask("memory_store", DescribeStore())

    # ---------------------------------------------------------------- facts

    def add_fact(self, record: FactRecord) -> StoredFact:
        _refuse_dated_ahead((record,))
        return self._ask("fact_store", AddFact(record=record))

    def end_fact(self, ref: str) -> StoredFact:
        """End the fact ``ref`` names (its id, a unique prefix, or its old local number)."""
        return self._ask("fact_store", EndFact(fact=str(ref), ended=time.time()))

    def show_fact(self, ref: str) -> StoredFact:
        """The fact ``ref`` names, as :meth:`end_fact` finds it."""
        return self._ask("fact_store", ShowFact(fact=str(ref)))

    def forget_fact(self, ref: str) -> StoredFact:
        """Forget the fact ``ref`` names, as :meth:`end_fact`."""
        return self._ask("fact_store", ForgetFact(fact=str(ref), deleted_at=time.time()))

    def list_facts(self, *, subject: str | None = None, predicate: str | None = None, include_ended: bool = False,
                   limit: int = 1000, object: str | None = None, as_of: float | None = None) -> tuple[StoredFact, ...]:
        return tuple(self._ask("fact_store", ListFacts(subject=subject, predicate=predicate, object=object,
                                                       include_ended=include_ended, limit=limit, as_of=as_of)))

    def fact_page(self, *, after: tuple[str, str, str, float] | None = None, limit: int = 500) -> FactPage:
        if not 1 <= limit <= MAX_PAGE:
            raise InputError(f"a page holds 1 to {MAX_PAGE} records")
        return self._ask("fact_store", PageFacts(limit=limit, after=after))

    def count_facts(self) -> FactCounts:
        return self._ask("fact_store", CountFacts())

    def vector_checks(self) -> VectorChecks:
        """A peer's vectors waiting for the background check, and the peers found wrong."""
        return self._ask("memory_store", DescribeVectorChecks())

    # ---------------------------------------------------------------- the trash (imprint.trash)

    def trash(self, *, since: float = 0.0, peer: str = "", ids: tuple[str, ...] = (), limit: int = 1000
              ) -> tuple[TrashEntry, ...]:
        """What peers made this machine forget, oldest first: memories, then facts (ids `m12`, `f3`)."""
        wanted = _trash_ids(ids)
        out: list[TrashEntry] = []
        for dataset, actor in (("memories", "memory_store"), ("facts", "fact_store")):
            numbers = wanted.get(dataset, ()) if ids else ()
            if ids and not numbers:
                continue
            out.extend(self._ask(actor, ListTrash(since=since, peer=peer, ids=numbers, limit=limit)))
        return tuple(out[:limit])

    def restore(self, entries: tuple[TrashEntry, ...], *, note: Note = _quiet) -> TrashRestored:
        """Bring trashed records back as newer copies (a memory dated now wins over the
        tombstone here and, at the next sync, everywhere); then drop them from the trash."""
        import msgspec

        from imprint.messages.records import stored_time, vector_from_field
        from imprint.messages.store import StoreFacts

        now = time.time()
        memories: list[MemoryRecord] = []
        given: dict[tuple[str, str], list[float]] = {}
        facts: list[FactRecord] = []
        model = self.model()
        for e in entries:
            after = max(now, e.deleted_at + 0.001)  # newer than its tombstone, whatever its date
            if e.dataset == "memories":
                record = msgspec.msgpack.decode(e.record, type=MemoryRecord)
                record = msgspec.structs.replace(record, timestamp=stored_time(after))
                memories.append(record)
                if e.vector and e.model == model.fingerprint:
                    from imprint.local import given_key

                    given[given_key(record)] = vector_from_field(e.vector, model.dimension)
            else:
                fact = msgspec.msgpack.decode(e.record, type=FactRecord)
                # An open fact holds again from now; an ended one ends now (its tombstone covers the old end).
                fact = (msgspec.structs.replace(fact, valid_from=after) if fact.ended is None
                        else msgspec.structs.replace(fact, ended=after))
                facts.append(fact)
        result = StoreResult()
        if memories:
            result = self.remember(tuple(memories), given=given, note=note)
        facts_result = self._ask("fact_store", StoreFacts(records=tuple(facts))) if facts else StoreResult()
        for dataset, actor in (("memories", "memory_store"), ("facts", "fact_store")):
            numbers = tuple(e.id for e in entries if e.dataset == dataset)
            if numbers:
                self._ask(actor, RemoveTrash(ids=numbers))
        return TrashRestored(memories=result.inserted + result.updated, facts=facts_result.inserted)

    def empty_trash(self) -> int:
        return sum(self._ask(actor, RemoveTrash()) for actor in ("memory_store", "fact_store"))

    # ---------------------------------------------------------------- sync sessions

    def serve(self, *, report: Callable[[events.Event], None], approver: Any, on_session: Callable[[Any], None],
              **options: Any) -> events.Stats:
        """Provide one sync (as `imprint serve`), on this core's actors."""
        from imprint.sync.runner import run_serve

        track, untrack = self._tracked(on_session)
        report, peer = _watching_peer(report)
        try:
            stats = run_serve(self.settings, report=report, approver=approver, local=self.local, on_session=track,
                              **options)
        except BaseException as exc:
            if peer:  # a serve nobody joined is not a sync
                record_sync(self.settings, "serve", peer, error=exc)
            raise
        finally:
            untrack()
        write_last_sync(self.settings, stats, peer)
        record_sync(self.settings, "serve", peer, stats=stats)
        return stats

    def join(self, *, report: Callable[[events.Event], None], on_session: Callable[[Any], None],
             **options: Any) -> events.Stats:
        """Join one sync (as `imprint join`), on this core's actors."""
        from imprint.sync.runner import run_join

        track, untrack = self._tracked(on_session)
        report, peer = _watching_peer(report)
        try:
            stats = run_join(self.settings, report=report, local=self.local, on_session=track, **options)
        except BaseException as exc:
            record_sync(self.settings, "join", peer, error=exc)
            raise
        finally:
            untrack()
        write_last_sync(self.settings, stats, peer)
        record_sync(self.settings, "join", peer, stats=stats)
        return stats

    def _tracked(self, on_session: Callable[[Any], None]) -> tuple[Callable[[Any], None], Callable[[], None]]:
        """A session hook that counts the session as running until `untrack()`."""
        with self._lock:
            self._next_sync += 1
            key = self._next_sync

        def track(session: Any) -> None:
            with self._lock:
                self._syncs[key] = session
            on_session(session)

        def untrack() -> None:
            with self._lock:
                self._syncs.pop(key, None)

        return track, untrack

    @property
    def syncs_running(self) -> int:
        with self._lock:
            return sum(1 for s in self._syncs.values() if not getattr(s, "done", False))


def _watching_peer(report: Callable[[events.Event], None]) -> tuple[Callable[[events.Event], None], list[str]]:
    """`report`, noting who the peer is (for the last-sync line)."""
    peer: list[str] = []

    def watch(event: events.Event) -> None:
        if isinstance(event, events.PeerConnected) and event.hostname:
            peer[:] = [f"{event.hostname} ({event.fingerprint})"]
        report(event)

    return watch, peer


def write_last_sync(settings: Settings, stats: events.Stats, peer: list[str]) -> None:
    """Remember the last sync of a workspace (for `status` and the agents' status tool); best effort."""
    import json

    received = stats.received.memories.inserted + stats.received.facts.inserted
    sent = stats.sent.memories.sent + stats.sent.facts.sent
    line = {"at": time.time(), "role": stats.role, "peer": peer[0] if peer else "", "received": received,
            "sent": sent, "forgotten": stats.forgotten}
    try:
        (settings.workspace_dir / LAST_SYNC).write_text(json.dumps(line))
    except OSError:
        pass


#: The workspace's sync history (JSON lines, newest last), and how many entries it keeps.
SYNC_HISTORY = "sync_history.jsonl"
SYNC_HISTORY_KEEP = 500
_history_lock = threading.Lock()


def record_sync(settings: Settings, role: str, peer: list[str], *, stats: events.Stats | None = None,
                error: BaseException | None = None) -> None:
    """Add a sync, finished or failed, to the workspace's history (the dashboard's Sync tab); best effort."""

    try:
        _record_sync(settings, role, peer, stats, error)
    except Exception:  # the history is a convenience: it never fails a sync
        from loguru import logger

        logger.exception("could not record the sync in the history")


def _record_sync(settings: Settings, role: str, peer: list[str], stats: events.Stats | None,
                 error: BaseException | None) -> None:
    import json

    entry: dict[str, Any] = {"at": time.time(), "role": role, "peer": peer[0] if peer else ""}
    if stats is not None:
        r, t = stats.received, stats.sent
        entry.update(mode=stats.mode, received={"memories": r.memories.inserted, "facts": r.facts.inserted,
                                                "updated": r.memories.updated},
                     sent={"memories": t.memories.sent, "facts": t.facts.sent}, forgotten=stats.forgotten,
                     forgets_kept=stats.forgets_kept, forgets_refused=stats.forgets_refused,
                     vectors_reused=stats.vectors_reused)
    if error is not None:
        entry["error"] = (str(error).splitlines() or [type(error).__name__])[0][:300] or type(error).__name__
    path = settings.workspace_dir / SYNC_HISTORY
    try:
        with _history_lock:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
            if path.stat().st_size > SYNC_HISTORY_KEEP * 2 * 400:  # now and then, keep the newest
                lines = path.read_text(encoding="utf-8").splitlines()[-SYNC_HISTORY_KEEP:]
                tmp = path.with_suffix(".tmp")
                tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
                os.replace(tmp, path)
    except OSError:
        pass


def read_sync_history(settings: Settings, limit: int = 100) -> list[dict[str, Any]]:
    """The workspace's syncs, newest first (unreadable lines skipped)."""
    import json

    try:
        lines = (settings.workspace_dir / SYNC_HISTORY).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("at"), (int, float)):
            found.append(entry)
        if len(found) >= limit:
            break
    return found


def read_last_sync(settings: Settings) -> str:
    """The last sync in one line ("" if none)."""
    import json

    try:
        line = json.loads((settings.workspace_dir / LAST_SYNC).read_text())
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(line["at"])))
        with_ = f" with {line['peer']}" if line.get("peer") else ""
        return (f"{when}{with_} ({line.get('role', '?')}): received {int(line.get('received', 0)):,} new, "
                f"sent {int(line.get('sent', 0)):,}")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def trash_id(entry: TrashEntry) -> str:
    """How the user names a trash entry: `m12` (a memory), `f3` (a fact)."""
    return f"{entry.dataset[0]}{entry.id}"


def _trash_ids(ids: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out: dict[str, list[int]] = {"memories": [], "facts": []}
    for raw in ids:
        match = re.fullmatch(r"([mf])(\d{1,18})", raw.strip().lower())
        if match is None:
            raise InputError(f"not a trash id: {raw!r} (ids look like m12 or f3; see `imprint trash`)")
        out["memories" if match[1] == "m" else "facts"].append(int(match[2]))
    return {k: tuple(v) for k, v in out.items()}


def _refuse_dated_ahead(records: tuple[MemoryRecord | FactRecord, ...]) -> None:
    """Every front end (CLI, dashboard, MCP) stores nothing dated beyond the clock skew."""
    for record in records:
        why = dated_ahead(record)
        if why:
            name = "memory" if isinstance(record, MemoryRecord) else "fact"
            raise InputError(f"a {name} {why}; nothing was stored")
