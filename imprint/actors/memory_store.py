"""MemoryStore: the workspace's memories, in whichever Qdrant engine holds them.

It holds one :class:`~imprint.storage.Backend` — Qdrant Edge in the data dir
by default, a Qdrant server when a URL is given — and answers the same
messages either way. It guards what goes in: every vector comes from the
store's own model (checked by fingerprint), the earliest copy of a memory
wins, and an engine error becomes one clear line.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint import summaries
from imprint.actors.activity import ReadActivity, SearchLane
from imprint.actors.base import ImprintActor, tell_later
from imprint.diskspace import ensure_room
from imprint.errors import ImprintError, ModelError, StoreError
from imprint.messages.records import (
    MemoryRecord,
    MemoryVersion,
    Tombstone,
    content_hash,
    latest_allowed,
    replaces,
    stored_time,
    vector_to_bytes,
)
from imprint.messages.store import (
    CountMemories,
    DescribeStore,
    DescribeVectorChecks,
    FacetCount,
    FacetMemories,
    FindMissing,
    ForgetMemories,
    Forgotten,
    ListTrash,
    ListVersions,
    MemoryFilter,
    MemoryPage,
    MissingIds,
    NewestMemories,
    PageMemories,
    RemoveTrash,
    ResolveUnverified,
    RetrieveMemories,
    RetrieveTombstones,
    SearchHit,
    SearchHits,
    SearchMemories,
    StoreInfo,
    StoreMemories,
    StoreResult,
    StoreTombstones,
    SummarizeVersions,
    TakeUnverified,
    Unverified,
    VectorChecks,
    Versions,
    VersionSummary,
)
from imprint.protocol.items import FORGOTTEN_MEMORY, MEMORY, item
from imprint.protocol.reconcile import item_hash
from imprint.storage import Backend, StoredMemory, StoreMeta
from imprint.tombstones import TombstoneTable, forgets
from imprint.trash import KEEP_DAYS, TrashTable

_trash_encoder = msgspec.msgpack.Encoder()
_CHECKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS unverified (id TEXT PRIMARY KEY, hash TEXT NOT NULL, peer TEXT NOT NULL DEFAULT '',
                                       received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS unverified_order ON unverified (received_at);
CREATE TABLE IF NOT EXISTS distrusted (peer TEXT PRIMARY KEY, at REAL NOT NULL, replaced INTEGER NOT NULL DEFAULT 0);
"""


def open_backend(*, path: Path | None, url: str | None, collection: str) -> Backend:
    """The Qdrant server at `url` if given, else the Edge shard at `path`."""
    if url:
        from imprint.storage.server import ServerBackend

        return ServerBackend(url, collection)
    from imprint.storage.edge import EdgeBackend

    assert path is not None
    return EdgeBackend(path)


#: An upsert, not INSERT OR REPLACE: a replace deletes without firing the delete trigger
#: that keeps the index's hash sums (imprint.summaries).
_UPSERT_VERSION = ("INSERT INTO memory_versions (id, ts, hash, h0, h1, h2, h3) VALUES (?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT(id) DO UPDATE SET ts = excluded.ts, hash = excluded.hash, h0 = excluded.h0, "
                   "h1 = excluded.h1, h2 = excluded.h2, h3 = excluded.h3")


def _version_row(version: tuple[str, float, str]) -> tuple[Any, ...]:
    """A row of the version index: the version and its item's hash (imprint.summaries)."""
    return (*version, *summaries.parts(item(MEMORY, *version)))


#: While searches come, a write's flush waits for a moment without one (FLUSH_QUIET seconds),
#: FLUSH_AFTER seconds at most: Edge holds the GIL through a flush's ~20 fsyncs (10-200 ms,
#: more while the disk is busy) and every search of the service would wait behind each (with a
#: flush every 10 s, one search in 60 waited for one under bench_service's load). Until it is
#: flushed, a write is safe from a crash of the process (Edge's write-ahead log is mapped
#: memory: tests/storage/test_edge_pin.py kills one), and the kernel writes those pages back
#: within its own 30 s (dirty_expire_centisecs) anyway.
FLUSH_WINDOW = 5.0
FLUSH_QUIET = 0.5
FLUSH_AFTER = 30.0


class _FlushNow(msgspec.Struct, frozen=True):
    """Flush the store if it is quiet, or has waited long enough (posted to self)."""


class GetSearchLane(msgspec.Struct, frozen=True):
    """The store's :class:`SearchLane`: SearchMemories answered in the asking thread, beside the
    writes queued in the mailbox. In-process only: the answer is a live object."""


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
        forgotten_path: the SQLite file of its tombstones (:mod:`imprint.tombstones`);
            None keeps none (tests of the store alone).
        read_only: change nothing and create nothing (`imprint status`).
    """

    def __init__(self, *, collection: str, path: Path | None = None, url: str | None = None, dimension: int | None,
                 model: str = "", model_name: str = "", forgotten_path: Path | None = None, read_only: bool = False,
                 reads: ReadActivity | None = None) -> None:
        super().__init__()
        self.reads = reads or ReadActivity()
        self.collection = collection
        self.path = path
        self.url = url
        self.dimension = dimension
        self.model = model
        self.model_name = model_name
        self.forgotten_path = forgotten_path
        self.read_only = read_only
        self._backend: Backend | None = None
        self._meta: StoreMeta | None = None
        self._tombstones: TombstoneTable | None = None
        self._trash: TrashTable | None = None
        self._counts: dict[Any, Any] = {}
        #: Read-only media: the store is read from a private copy (imprint.readonly).
        self._snapshot: Any = None
        #: Statements of the write in hand, committed together (one fsync, not one per table).
        self._grouped: list[tuple[str, list[tuple[Any, ...]]]] | None = None
        #: Searches from any thread, beside this mailbox (see GetSearchLane).
        self._lane = SearchLane()
        #: When the oldest write not flushed yet was made (monotonic), and the timer that flushes it.
        self._unflushed: float | None = None
        self._flush_timer: threading.Timer | None = None

    @property
    def location(self) -> str:
        return self._backend.location if self._backend is not None else (self.url or str(self.path))

    def start_up(self) -> None:
        if self.read_only and self.url is None and self.path is not None and self.path.exists():
            from imprint.readonly import Snapshot, read_only_media

            if read_only_media(self.path):
                extra = [self.forgotten_path, Path(f"{self.forgotten_path}-wal")] if self.forgotten_path else []
                self._snapshot = Snapshot([self.path, *extra], what=f"the memory store at {self.path}")
                self.path = self._snapshot.path(self.path)
                if self.forgotten_path is not None:
                    self.forgotten_path = self._snapshot.path(self.forgotten_path)
        try:
            self._backend = open_backend(path=self.path, url=self.url, collection=self.collection)
            self._meta = self._backend.meta()
            created = False
            if self._meta is None and self.dimension is not None and not self.read_only:
                self._meta = StoreMeta(dimension=self.dimension, model=self.model, model_name=self.model_name)
                self._backend.create(self._meta)
                created = True
                logger.debug("created the memory store at {} ({} dims, model {})", self.location, self.dimension,
                             self.model or "?")
        except ImprintError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot open the memory store at {self.location}: {str(exc).strip()[:300]}") from None
        if self._meta is not None and not created:
            self._check_model(self._meta)
        self._open_tombstones()
        self._finish_forgetting()
        self._check_versions()
        self._repair_dates()
        if self._backend is not None:
            self._lane.open(self._lane_search)

    def _open_tombstones(self) -> None:
        path = self.forgotten_path
        if path is None:
            return
        try:
            if self.read_only or self._meta is None:  # reading only: create nothing
                if not path.exists():
                    return
                db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)
                self._tombstones = TombstoneTable(db, "forgotten", FORGOTTEN_MEMORY, create=False)
                self._trash = TrashTable(db, "memories", create=False)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._tombstones = TombstoneTable(db, "forgotten", FORGOTTEN_MEMORY)
            db.executescript(_CHECKS_SCHEMA)
            self._trash = TrashTable(db, "memories")
            expired = self._trash.expire()
            if expired:
                logger.info("dropped {} memories forgotten more than {} days ago from the trash", expired, KEEP_DAYS)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None

    # ------------------------------------------------------------ the version index
    #
    # Reconciliation reads every memory's (id, timestamp, content hash). Reading them
    # from Edge's payloads costs ~0.6-1.5 s at 100k; this index beside the tombstones (same SQLite
    # file) answers in ~0.07 s. It is written after every Edge write and cleared before
    # every Edge delete, so it never lists a memory the store lacks (that would make a
    # peer hold back a record we need); the reverse, after a crash between the two, only
    # costs a record sent again, and the count check on open rebuilds it. Only for the
    # embedded store: a Qdrant server may have other writers.

    def _indexed(self) -> bool:
        return self._tombstones is not None and not self.read_only and self.url is None and self._meta is not None

    def _check_versions(self) -> None:
        if not self._indexed():
            return
        db = self._tombstones.db
        columns = [row[1] for row in db.execute("PRAGMA table_info(memory_versions)")]
        if columns and "hash" not in columns:  # an index from before content hashes: made again
            db.execute("DROP TABLE memory_versions")
        db.execute("CREATE TABLE IF NOT EXISTS memory_versions (id TEXT PRIMARY KEY, ts REAL NOT NULL, hash TEXT NOT NULL)")
        summaries.install(db, "memory_versions")
        (indexed,) = db.execute("SELECT COUNT(*) FROM memory_versions").fetchone()
        if indexed == self._backend.count(MemoryFilter()):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM memory_versions")
            db.executemany(_UPSERT_VERSION, map(_version_row, self._backend.versions(MemoryFilter())))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        logger.debug("rebuilt the version index of {} ({} memories)", self.location, indexed)

    def _index(self, rows: list[tuple[str, float, str]]) -> None:
        if self._indexed() and rows:
            self._in_transaction(_UPSERT_VERSION, [_version_row(r) for r in rows])

    def _unindex(self, ids: tuple[str, ...]) -> None:
        if self._indexed() and ids:
            self._in_transaction("DELETE FROM memory_versions WHERE id = ?", [(i,) for i in ids])

    def _in_transaction(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._grouped is not None:  # one transaction for a whole write (see _store)
            self._grouped.append((sql, rows))
            return
        self._commit([(sql, rows)])

    def _commit(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        if not statements:
            return
        db = self._tombstones.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _versions(self) -> tuple[tuple[str, float, str], ...]:
        if self._indexed():
            return tuple(self._tombstones.db.execute("SELECT id, ts, hash FROM memory_versions"))
        return tuple(self._backend.versions(MemoryFilter()))

    def _summary(self) -> tuple[int, int]:
        """(count, total) of the memories' reconciliation items (see :mod:`imprint.summaries`)."""
        if self._indexed():
            return summaries.summarize(self._tombstones.db, "memory_versions", "id, ts, hash",
                                       lambda i, ts, h: item(MEMORY, i, ts, h))
        versions = self._versions() if self._backend is not None else ()
        return len(versions), sum(item_hash(item(MEMORY, *v)) for v in versions) % (1 << 128)

    def _delete(self, ids: tuple[str, ...]) -> None:
        self._unindex(ids)
        self._backend.delete(ids, flush=self._flush_now(True))
        self._mark_checked(ids)

    def _upsert(self, points: list[StoredMemory], *, flush: bool = True) -> None:
        """Durable when it returns, but while searches come: see FLUSH_WINDOW."""
        self._backend.upsert(points, flush=self._flush_now(flush))

    def _flush_now(self, flush: bool) -> bool:
        """Whether a write flushes as it is made; if not, it is flushed later (by this or a later write)."""
        if flush and not self.reads.recent(FLUSH_WINDOW):
            self._unflushed = None  # this flush takes every write before it along
            return True
        if self._unflushed is None:
            self._unflushed = time.monotonic()
        if flush and self._flush_timer is None:
            self._flush_later()
        return False

    def _flush_later(self) -> None:
        self._flush_timer = tell_later(self.actor_ref, _FlushNow(), FLUSH_QUIET)

    def _flush_when_quiet(self) -> None:
        self._flush_timer = None
        if self._unflushed is None or self._backend is None:
            return
        if self.reads.recent(FLUSH_QUIET) and time.monotonic() - self._unflushed < FLUSH_AFTER:
            self._flush_later()
            return
        try:
            self._backend.flush()
        except Exception as exc:  # a full disk, say: the write-ahead log keeps the writes; the next one tries again
            logger.warning("the memory store could not be flushed ({}); it is tried again with the next write",
                           str(exc).strip()[:200])
            return
        self._unflushed = None

    # ------------------------------------------------------------ vectors not checked yet
    #
    # A peer's vectors are stored as it sent them and listed in
    # `unverified` until the background check (imprint.actors.verifier) has embedded their
    # texts here and compared. Until then they never leave this machine: reads for a sync or
    # an export get no vector for them (the other side embeds). Peers whose vectors were found
    # wrong are in `distrusted`: nothing they send is taken as it is again.

    def _checks(self) -> sqlite3.Connection | None:
        return self._tombstones.db if self._tombstones is not None and not self.read_only else None

    def _mark_unverified(self, ids: list[tuple[str, str]], peer: str) -> None:
        db = self._checks()
        if db is not None and ids:
            now = time.time()
            self._in_transaction("INSERT OR REPLACE INTO unverified (id, hash, peer, received_at) VALUES (?, ?, ?, ?)",
                                 [(i, h, peer, now) for i, h in ids])

    def _mark_checked(self, ids: tuple[str, ...] | list[str]) -> None:
        db = self._checks()
        if db is not None and ids:
            self._in_transaction("DELETE FROM unverified WHERE id = ?", [(i,) for i in ids])

    def _unverified_among(self, ids: list[str]) -> set[str]:
        db = self._tombstones.db if self._tombstones is not None else None
        if db is None or not ids or not self._has_checks(db):
            return set()
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out.update(i for (i,) in db.execute(
                f"SELECT id FROM unverified WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    @staticmethod
    def _has_checks(db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'unverified'").fetchone() is not None

    def _hide_unverified(self, memories: list[StoredMemory]) -> list[StoredMemory]:
        """What leaves through a sync or an export: no vector for those not checked yet."""
        hidden = self._unverified_among([m.record.id for m in memories if m.vector])
        if not hidden:
            return memories
        return [StoredMemory(record=m.record) if m.record.id in hidden else m for m in memories]

    def _take_unverified(self, limit: int) -> tuple[Unverified, ...]:
        db = self._checks()
        if db is None:
            return ()
        rows = db.execute("SELECT u.id, u.hash, u.peer FROM unverified u LEFT JOIN distrusted d ON d.peer = u.peer "
                          "ORDER BY d.peer IS NULL, u.received_at, u.id LIMIT ?", (limit,)).fetchall()
        return tuple(Unverified(id=i, hash=h, peer=p) for i, h, p in rows)

    def _resolve(self, checked: tuple[str, ...], replaced: tuple[str, ...], vectors: list[list[float]],
                 distrust: str) -> int:
        db = self._checks()
        if db is None:
            return 0
        if distrust:
            db.execute("INSERT INTO distrusted (peer, at) VALUES (?, ?) ON CONFLICT(peer) DO NOTHING",
                       (distrust, time.time()))
        fixed = 0
        if replaced:
            ours = dict(zip(replaced, vectors))
            found = self._backend.retrieve(replaced)
            points = [StoredMemory(record=m.record, vector=ours[m.record.id], model=self._meta.model) for m in found]
            self._ensure_room(sum(len(p.record.content) + 4 * len(p.vector) + 512 for p in points))
            self._upsert(points)
            fixed = len(points)
            if distrust:
                db.execute("UPDATE distrusted SET replaced = replaced + ? WHERE peer = ?", (fixed, distrust))
        self._mark_checked(list(dict.fromkeys((*checked, *replaced))))
        return fixed

    def _vector_checks(self) -> VectorChecks:
        db = self._tombstones.db if self._tombstones is not None else None
        if db is None or not self._has_checks(db):
            return VectorChecks()
        (waiting,) = db.execute("SELECT COUNT(*) FROM unverified").fetchone()
        return VectorChecks(waiting=waiting, distrusted=tuple(p for (p,) in db.execute(
            "SELECT peer FROM distrusted ORDER BY at")))

    def _finish_forgetting(self) -> None:
        """A crash between writing tombstones and deleting the copies leaves copies
        behind: remove every stored copy a tombstone covers."""
        if self._tombstones is None or self._backend is None or self.read_only:
            return
        marks = list(self._tombstones.all())
        for start in range(0, len(marks), 1000):
            chunk = dict(marks[start:start + 1000])
            stored = self._backend.stored_versions(tuple(chunk))
            doomed = tuple(i for i, (ts, _) in stored.items() if forgets(chunk[i], ts))
            if doomed:
                self._delete(doomed)
                logger.info("removed {} forgotten memories left by an interrupted forget", len(doomed))

    def _repair_dates(self) -> None:
        """Memories and tombstones dated more than a day ahead (written before such dates were
        refused, or by a clock gone wrong) would win every merge for good: clamp them to now, once."""
        if not self._indexed():  # (a Qdrant server's store is not scanned on every open)
            return
        now = time.time()
        limit = latest_allowed(now)
        db = self._tombstones.db
        marks = db.execute(f"UPDATE forgotten SET deleted_at = ?, {summaries.STALE} WHERE deleted_at > ?",
                           (now, limit)).rowcount
        ids = tuple(i for (i,) in db.execute("SELECT id FROM memory_versions WHERE ts > ?", (limit,)))
        for start in range(0, len(ids), 500):
            found = self._backend.retrieve(ids[start:start + 500], vectors=True)
            points = [StoredMemory(record=msgspec.structs.replace(m.record, timestamp=stored_time(now)),
                                   vector=m.vector, model=m.model) for m in found]
            self._upsert(points)
            self._index([(p.record.id, p.record.timestamp, content_hash(p.record.content)) for p in points])
        if marks or ids:
            logger.warning("repaired {} memories and {} tombstones dated more than a day ahead of this machine's "
                           "clock: they are dated now", len(ids), marks)

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
                "cannot be mixed: run `imprint reembed` to re-embed the store with this model, or use the model it "
                "was built with, or another --workspace"
            )

    def shut_down(self) -> None:
        self._lane.close()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._unflushed is not None and self._backend is not None:
            try:
                self._backend.flush()
            except Exception:  # the write-ahead log still holds it
                logger.opt(exception=True).debug("flushing the memory store on the way out failed")
        if self._tombstones is not None:
            self._tombstones.db.close()
            self._tombstones = None
        if self._backend is not None:
            backend, self._backend = self._backend, None
            try:
                backend.close()
            except Exception:  # closing is best effort; the lock goes with the process
                logger.debug("closing the memory store failed", exc_info=True)
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def handle(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except (ImprintError, TypeError):
            raise
        except Exception as exc:  # the engine (disk full, server down, …): one clear line for the user
            raise StoreError(f"memory store error at {self.location}: {str(exc).strip()[:300] or type(exc).__name__}") from None

    def _cached(self, message: Any, compute: Any) -> Any:
        """Counts and facets, remembered until the next write (the dashboard asks
        for the same ones on every page; this actor is the store's only writer)."""
        if message not in self._counts:
            if len(self._counts) > 256:
                self._counts.clear()
            self._counts[message] = compute()
        return self._counts[message]

    def _dispatch(self, message: Any) -> Any:
        b = self._backend
        match message:
            case FindMissing(ids=ids, timestamps=timestamps, hashes=hashes):
                return self._to_write(ids, timestamps, hashes)
            case PageMemories(limit=limit, after=after, vectors=vectors):
                return self._page(limit, after, vectors)
            case SearchMemories():
                return self._search(message)
            case GetSearchLane():
                return self._lane
            case _FlushNow():
                self._flush_when_quiet()
                return None
            case CountMemories(where=where):
                return self._cached(message, lambda: b.count(where))
            case FacetMemories(key=key, limit=limit, where=where):
                return self._cached(message, lambda: tuple(FacetCount(value=v, count=n) for v, n in b.facet(key, limit, where)))
            case NewestMemories(where=where, offset=offset, limit=limit, oldest_first=oldest_first):
                return tuple(b.newest(where, offset, limit, oldest_first))
            case StoreMemories() | ForgetMemories() | StoreTombstones() | RemoveTrash() | ResolveUnverified():
                self._counts.clear()
                return self._write(message)
            case SummarizeVersions():
                return VersionSummary(*summaries.combine(self._summary(), self._tombstones.summary()
                                                         if self._tombstones is not None else (0, 0)))
            case ListVersions():
                marks = tuple(self._tombstones.all()) if self._tombstones is not None else ()
                return Versions(records=self._versions() if b is not None else (), tombstones=marks)
            case RetrieveTombstones(keys=keys):
                found = self._tombstones.get(keys) if self._tombstones is not None else {}
                return tuple(Tombstone("memories", k, at) for k, at in found.items())
            case TakeUnverified(limit=limit):
                return self._take_unverified(limit)
            case DescribeVectorChecks():
                return self._vector_checks()
            case ListTrash(since=since, peer=peer, ids=ids, limit=limit, after=after):
                if self._trash is None:
                    return ()
                return tuple(self._trash.list(since=since, peer=peer, ids=ids, limit=limit, after=after))
            case RetrieveMemories(ids=ids, vectors=False):
                return tuple(m.record for m in b.retrieve(ids)) if b is not None else ()
            case RetrieveMemories(ids=ids, vectors=True, unverified=unverified):
                found = b.retrieve(ids, vectors=True) if b is not None else []
                found = found if unverified else self._hide_unverified(found)
                return MemoryPage(records=tuple(m.record for m in found), next_after=None,
                                  vectors=tuple(m.vector or [] for m in found), models=tuple(m.model for m in found))
            case DescribeStore():
                meta = self._meta
                return StoreInfo(location=self.location, kind=b.kind, dimension=meta.dimension if meta else None,
                                 count=b.count(MemoryFilter()), model=meta.model if meta else "",
                                 model_name=meta.model_name if meta else "")
        return super().handle(message)

    def _lane_search(self, message: SearchMemories) -> SearchHits:
        """A search in a client's thread: reads only, and its errors worded as the mailbox's are."""
        if not isinstance(message, SearchMemories):
            raise TypeError(f"the search lane takes SearchMemories, not {type(message).__name__}")
        return self.handle(message)

    def _search(self, message: SearchMemories) -> SearchHits:
        """Called in this actor's thread or, through the lane, in a client's: reads only."""
        self.reads.saw_search()
        where = message.where or MemoryFilter()
        if where.project is None and message.project is not None:
            where = msgspec.structs.replace(where, project=message.project)
        hits = self._backend.search(message.vector, message.limit, where)
        return SearchHits(hits=tuple(SearchHit(score=score, record=record) for score, record in hits))

    def _write(self, message: Any) -> Any:
        match message:
            case StoreMemories(records=records, vectors=vectors, stored=stored, model=model, unverified=unverified,
                               peer=peer, flush=flush):
                return self._store(records, vectors, stored, model, unverified, peer, flush=flush)
            case ResolveUnverified(checked=checked, replaced=replaced, vectors=vectors, distrust=distrust):
                return self._resolve(checked, replaced, vectors, distrust)
            case ForgetMemories(deleted_at=deleted_at, ids=ids, where=where):
                return self._forget(deleted_at, ids, where)
            case StoreTombstones(tombstones=tombstones, peer=peer):
                return self._store_tombstones(tombstones, peer)
            case RemoveTrash(ids=ids):
                trash = self._writable_trash()
                return trash.empty() if ids is None else trash.remove(ids)

    def _to_write(self, ids: tuple[str, ...], timestamps: tuple[float, ...], hashes: tuple[str, ...]) -> MissingIds:
        stored = self._backend.stored_versions(ids)
        marks = self._tombstones.get(ids) if self._tombstones is not None else {}
        result: dict[str, None] = {}
        kept: dict[str, None] = {}
        forgotten: dict[str, None] = {}
        for n, memory_id_ in enumerate(ids):
            given = stored_time(timestamps[n]) if n < len(timestamps) else 0.0
            if forgets(marks.get(memory_id_), given or float("inf")):
                forgotten[memory_id_] = None  # forgotten here, and this copy is not newer
            elif memory_id_ not in stored:
                result[memory_id_] = None
            elif given:
                mine = stored[memory_id_]
                offered = (given, hashes[n] if n < len(hashes) else mine[1])
                if replaces(offered, mine):
                    result[memory_id_] = None  # an earlier copy of the text, or a newer edit: wins everywhere
                elif offered != mine:
                    kept[memory_id_] = None
        return MissingIds(ids=tuple(r for r in result if r not in forgotten),
                          kept=tuple(k for k in kept if k not in result), stored=stored, forgotten=tuple(forgotten))

    def _store(self, records: tuple[MemoryRecord, ...], vectors: list[list[float]],
               stored: dict[str, MemoryVersion] | None, model: str | None, unverified: tuple[str, ...] = (),
               peer: str = "", *, flush: bool = True) -> StoreResult:
        if len(records) != len(vectors):
            raise StoreError(f"{len(records)} records but {len(vectors)} vectors")
        if self._meta is None:
            raise StoreError("the memory store was opened read-only")
        model = self.model if model is None else model
        if model != self._meta.model:
            raise StoreError(f"vectors of model {model or '?'} cannot go into a store of model {self._meta.model or '?'}")
        self._ensure_room(sum(len(r.content) + 4 * len(v) + 512 for r, v in zip(records, vectors)))
        if stored is None:
            stored = self._backend.stored_versions(tuple(r.id for r in records))
        marks = self._tombstones.get(r.id for r in records) if self._tombstones is not None else {}
        points: list[StoredMemory] = []
        seen: set[str] = set()
        updated = forgotten = 0
        for record, vector in zip(records, vectors):
            if record.id in seen:
                continue
            if record.timestamp != stored_time(record.timestamp):
                record = msgspec.structs.replace(record, timestamp=stored_time(record.timestamp))
            if forgets(marks.get(record.id), record.timestamp or float("inf")):
                forgotten += 1
                continue
            if record.id in stored and not replaces((record.timestamp, content_hash(record.content)), stored[record.id]):
                continue
            updated += record.id in stored
            seen.add(record.id)
            points.append(StoredMemory(record=record, vector=vector, model=model))
        # Durable when upsert returns: the batch is whole on disk before we report it stored (while
        # searches come, safe from a crash and on disk within seconds: see FLUSH_WINDOW).
        self._upsert(points, flush=flush)
        hashes = [content_hash(m.record.content) for m in points]
        self._grouped = []
        try:
            self._index([(m.record.id, m.record.timestamp, h) for m, h in zip(points, hashes)])
            if unverified:
                doubtful = set(unverified)
                self._mark_unverified([(m.record.id, h) for m, h in zip(points, hashes) if m.record.id in doubtful],
                                      peer)
                self._mark_checked([m.record.id for m in points if m.record.id not in doubtful])
            else:
                self._mark_checked([m.record.id for m in points])  # our own vectors now
        finally:
            grouped, self._grouped = self._grouped, None
        self._commit(grouped)
        inserted = len(points) - updated
        return StoreResult(inserted=inserted, skipped=len(records) - inserted, updated=updated, forgotten=forgotten)

    def _ensure_room(self, payload: int) -> None:
        """No write of ours meets a full disk (imprint.diskspace); a server has its own disk."""
        if self.url is None and self.path is not None:
            ensure_room(self.path, payload)

    def _writable_tombstones(self) -> TombstoneTable:
        if self._tombstones is None or self._meta is None or self.read_only:
            raise StoreError("the memory store was opened read-only (or keeps no tombstones)")
        return self._tombstones

    def _forget(self, deleted_at: float, ids: tuple[str, ...], where: MemoryFilter | None) -> Forgotten:
        if self._meta is None:  # no store: nothing to forget
            return Forgotten(forgotten=(), unknown=tuple(dict.fromkeys(ids)))
        table = self._writable_tombstones()
        if where is not None:
            stored = {key: ts for key, ts, _ in self._backend.versions(where)}
            unknown: tuple[str, ...] = ()
        else:
            stored = {key: ts for key, (ts, _) in self._backend.stored_versions(ids).items()}
            unknown = tuple(i for i in dict.fromkeys(ids) if i not in stored)
        if not stored:
            return Forgotten(forgotten=(), unknown=unknown)
        # The tombstones first, durably; then the copies. A crash in between is
        # finished by the next open (_finish_forgetting).
        table.db.execute("BEGIN IMMEDIATE")
        try:
            table.add((i, max(deleted_at, ts)) for i, ts in stored.items())
            table.db.execute("COMMIT")
        except BaseException:
            table.db.execute("ROLLBACK")
            raise
        doomed = tuple(stored)
        for start in range(0, len(doomed), 1000):
            self._delete(doomed[start:start + 1000])
        logger.info("forgot {} memories", len(doomed))
        return Forgotten(forgotten=doomed, unknown=unknown)

    def _writable_trash(self) -> TrashTable:
        self._writable_tombstones()
        assert self._trash is not None
        return self._trash

    def _store_tombstones(self, tombstones: tuple[Tombstone, ...], peer: str) -> StoreResult:
        table = self._writable_tombstones()
        trash = self._writable_trash()
        marks = {t.key: t.deleted_at for t in tombstones if t.dataset == "memories"}
        stored = self._backend.stored_versions(tuple(marks))
        doomed = tuple(i for i, (ts, _) in stored.items() if forgets(marks[i], ts))
        self._ensure_room(len(marks) * 64 + len(doomed) * 4096)  # tombstones, and the trash's copies
        # What they remove goes to the trash in the tombstones' transaction: a crash after it
        # leaves copies that the next open removes (_finish_forgetting), never a loss.
        kept = [(m.record.id, _trash_encoder.encode(m.record),
                 vector_to_bytes(m.vector) if m.vector else None, m.model, marks[m.record.id])
                for start in range(0, len(doomed), 1000)
                for m in self._backend.retrieve(doomed[start:start + 1000], vectors=True)]
        table.db.execute("BEGIN IMMEDIATE")
        try:
            changed = table.add(marks.items())
            trash.add(kept, peer=peer)
            table.db.execute("COMMIT")
        except BaseException:
            table.db.execute("ROLLBACK")
            raise
        if doomed:
            self._delete(doomed)
            logger.info("forgot {} memories the other machine {} had forgotten (kept in the trash for {} days)",
                        len(doomed), peer[:16] or "?", KEEP_DAYS)
        return StoreResult(inserted=changed, skipped=len(tombstones) - changed, forgotten=len(doomed))

    def _page(self, limit: int, after: str | None, vectors: bool) -> MemoryPage:
        memories, next_after = self._backend.page(limit, after, vectors=vectors)
        records = tuple(m.record for m in memories)
        if vectors:
            memories = self._hide_unverified(memories)
        if not vectors:
            return MemoryPage(records=records, next_after=next_after)
        return MemoryPage(records=records, next_after=next_after, vectors=tuple(m.vector or [] for m in memories),
                          models=tuple(m.model for m in memories))
