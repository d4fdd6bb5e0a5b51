"""FactStore: owns the workspace's SQLite facts database.

Dedup is the database's job: a UNIQUE constraint on SPEC's identity
(subject, predicate, object, valid_from). A batch is one transaction, so an
interrupted sync leaves whole batches only.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint import summaries
from imprint.actors.base import ImprintActor
from imprint.diskspace import ensure_room
from imprint.errors import InputError, StoreError
from imprint.messages.records import FactRecord, Tombstone, fact_key, fact_version, latest_allowed
from imprint.messages.store import (
    AddFact,
    CountFacts,
    EndFact,
    FactCounts,
    FactPage,
    ForgetFact,
    ListFacts,
    ListTrash,
    ListVersions,
    PageFacts,
    RemoveTrash,
    RetrieveFacts,
    RetrieveTombstones,
    ShowFact,
    StoredFact,
    StoreFacts,
    StoreResult,
    StoreTombstones,
    SummarizeVersions,
    Versions,
    VersionSummary,
)
from imprint.protocol.items import FACT, FORGOTTEN_FACT, item
from imprint.tombstones import TombstoneTable, forgets
from imprint.trash import TrashTable

_trash_encoder = msgspec.msgpack.Encoder()

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    predicate TEXT NOT NULL,
    object TEXT NOT NULL,
    valid_from REAL NOT NULL,
    ended REAL,
    source TEXT NOT NULL DEFAULT '',
    UNIQUE (subject, predicate, object, valid_from)
);
CREATE INDEX IF NOT EXISTS facts_open ON facts (ended, subject);
"""
#: Added later: each fact's :func:`~imprint.messages.records.fact_key`, for
#: tombstones and reconciliation; filled in for older databases on open.
KEY_COLUMN = "ALTER TABLE facts ADD COLUMN key TEXT"
KEY_INDEX = "CREATE INDEX IF NOT EXISTS facts_key ON facts (key)"
_COLUMNS = "id, subject, predicate, object, valid_from, ended, source"
#: What a fact id typed by a user may look like: hex digits (a key or a prefix of one)
#: or, for one release, the local number older versions printed.
FACT_REF = re.compile(r"[0-9a-f]{1,16}")


def _open_read_only(path: Path) -> tuple[sqlite3.Connection, Any]:
    """Open for reading only, creating nothing; an absent database reads as empty. Returns the
    connection and the :class:`~imprint.readonly.Snapshot` it reads (read-only media), if any."""
    from imprint.readonly import Snapshot, read_only_media

    if not path.exists():
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(SCHEMA)
        return db, None
    wal = Path(f"{path}-wal")
    if wal.exists() and read_only_media(path):
        if wal.stat().st_size:
            # Facts wait in the log, and SQLite cannot read a log where it cannot write: read a copy.
            snapshot = Snapshot([path, wal], what=f"the fact store at {path}")
            return sqlite3.connect(snapshot.path(path), timeout=30, isolation_level=None), snapshot
    elif wal.exists():
        # Another process has it open (or left a log behind): read through its WAL.
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None), None
    # Fully checkpointed: read the file as it is, without even a -shm file beside it.
    return sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True, isolation_level=None), None


def _row_to_fact(row: tuple) -> StoredFact:
    return StoredFact(
        fact_id=row[0],
        record=FactRecord(subject=row[1], predicate=row[2], object=row[3], valid_from=row[4], ended=row[5], source=row[6]),
    )


class FactStore(ImprintActor):
    """Answers StoreFacts, PageFacts, ListFacts, AddFact, EndFact, CountFacts."""

    def __init__(self, *, path: Path, read_only: bool = False) -> None:
        super().__init__()
        self.path = path
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._tombstones: TombstoneTable | None = None
        self._trash: TrashTable | None = None
        self._snapshot: Any = None

    def _add_keys(self) -> None:
        db = self._db
        columns = {row[1] for row in db.execute("PRAGMA table_info(facts)")}
        if "key" in columns:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(KEY_COLUMN)
            rows = db.execute("SELECT id, subject, predicate, object, valid_from FROM facts").fetchall()
            db.executemany("UPDATE facts SET key = ? WHERE id = ?", [(fact_key(r[1:]), r[0]) for r in rows])
            db.execute(KEY_INDEX)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def start_up(self) -> None:
        try:
            if self.read_only:
                self._db, self._snapshot = _open_read_only(self.path)
                self._trash = TrashTable(self._db, "facts", create=False)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._add_keys()
            summaries.install(self._db, "facts")
            self._tombstones = TombstoneTable(self._db, "forgotten_facts", FORGOTTEN_FACT)
            self._trash = TrashTable(self._db, "facts")
            self._trash.expire()
            self._repair_dates()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the fact store {self.path}: {exc}") from None

    def _repair_dates(self) -> None:
        """Facts and tombstones dated more than a day ahead would win every merge for good:
        clamp them to now, once (a start moved to now is a new fact key)."""
        now = time.time()
        limit = latest_allowed(now)
        db = self._db
        rows = db.execute(f"SELECT {_COLUMNS} FROM facts WHERE valid_from > ? OR ended > ?", (limit, limit)).fetchall()
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = db.execute(f"UPDATE forgotten_facts SET deleted_at = ?, {summaries.STALE} WHERE deleted_at > ?",
                               (now, limit)).rowcount
            for row in rows:
                r = _row_to_fact(row).record
                valid_from = min(r.valid_from, now)
                ended = None if r.ended is None else max(min(r.ended, now), valid_from)
                clash = db.execute("SELECT 1 FROM facts WHERE subject = ? AND predicate = ? AND object = ? AND "
                                   "valid_from = ? AND id != ?", (r.subject, r.predicate, r.object, valid_from,
                                                                 row[0])).fetchone()
                if clash:
                    db.execute("DELETE FROM facts WHERE id = ?", (row[0],))
                    continue
                db.execute(f"UPDATE facts SET valid_from = ?, ended = ?, key = ?, {summaries.STALE} WHERE id = ?",
                           (valid_from, ended, fact_key((r.subject, r.predicate, r.object, valid_from)), row[0]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if rows or marks:
            logger.warning("repaired {} facts and {} tombstones dated more than a day ahead of this machine's clock: "
                           "they are dated now", len(rows), marks)

    def shut_down(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def handle(self, message: Any) -> Any:
        try:
            return self._dispatch(message)
        except sqlite3.Error as exc:
            raise StoreError(f"fact store error: {exc}") from None

    def _dispatch(self, message: Any) -> Any:
        match message:
            case StoreFacts(records=records):
                return self._store(records)
            case PageFacts(limit=limit, after=after):
                return self._page(limit, after)
            case ListFacts(subject=subject, predicate=predicate, include_ended=include_ended, limit=limit,
                           object=object_, as_of=as_of):
                return self._list(subject, predicate, include_ended, limit, object_, as_of)
            case AddFact(record=record):
                return self._add(record)
            case EndFact(fact=ref, ended=ended):
                return self._end(ref, ended)
            case ShowFact(fact=ref):
                return _row_to_fact(self._find(ref))
            case ForgetFact(fact=ref, deleted_at=deleted_at):
                return self._forget(ref, deleted_at)
            case StoreTombstones(tombstones=tombstones, peer=peer):
                return self._store_tombstones(tombstones, peer)
            case ListTrash(since=since, peer=peer, ids=ids, limit=limit, after=after):
                return tuple(self._trash.list(since=since, peer=peer, ids=ids, limit=limit, after=after)) \
                    if self._trash is not None else ()
            case RemoveTrash(ids=ids):
                self._writable_tombstones()
                return self._trash.empty() if ids is None else self._trash.remove(ids)
            case SummarizeVersions():
                facts = summaries.summarize(self._db, "facts", "key, ended", lambda k, e: item(FACT, k, e or 0.0))
                marks = self._tombstones.summary() if self._tombstones is not None else (0, 0)
                return VersionSummary(*summaries.combine(facts, marks))
            case ListVersions():
                rows = self._db.execute("SELECT key, ended FROM facts").fetchall()
                marks = tuple(self._tombstones.all()) if self._tombstones is not None else ()
                return Versions(records=tuple((k, e or 0.0) for k, e in rows), tombstones=marks)
            case RetrieveTombstones(keys=keys):
                found = self._tombstones.get(keys) if self._tombstones is not None else {}
                return tuple(Tombstone("facts", k, at) for k, at in found.items())
            case RetrieveFacts(keys=keys):
                return self._retrieve(keys)
            case CountFacts():
                active, ended = self._db.execute(
                    "SELECT COUNT(*) FILTER (WHERE ended IS NULL), COUNT(*) FILTER (WHERE ended IS NOT NULL) FROM facts"
                ).fetchone()
                return FactCounts(active=active, ended=ended)
        return super().handle(message)

    def _store(self, records: tuple[FactRecord, ...]) -> StoreResult:
        ensure_room(self.path, sum(len(r.subject) + len(r.predicate) + len(r.object) + len(r.source) + 256
                                   for r in records))
        inserted = ended = forgotten = 0
        kept: dict[tuple[str, str, str, float], None] = {}
        db = self._db
        keys = [fact_key(r.identity) for r in records]
        marks = self._tombstones.get(keys) if self._tombstones is not None else {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for r, key in zip(records, keys):
                if forgets(marks.get(key), fact_version(r)):
                    forgotten += 1  # forgotten here, and this copy is not newer
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO facts (subject, predicate, object, valid_from, ended, source, key, "
                    "h0, h1, h2, h3) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (r.subject, r.predicate, r.object, r.valid_from, r.ended, r.source, key,
                     *summaries.parts(item(FACT, key, r.ended or 0.0))),
                )
                if cur.rowcount:
                    inserted += 1
                    continue
                (ours,) = db.execute(
                    "SELECT ended FROM facts WHERE subject = ? AND predicate = ? AND object = ? AND valid_from = ?",
                    r.identity,
                ).fetchone()
                if r.ended is not None and ours is None:
                    # An invalidation on the other machine ends our open copy too.
                    db.execute(
                        f"UPDATE facts SET ended = ?, {summaries.STALE} "
                        "WHERE subject = ? AND predicate = ? AND object = ? AND valid_from = ?",
                        (r.ended, *r.identity),
                    )
                    ended += 1
                elif ours != r.ended:
                    kept[r.identity] = None  # ours is ended (otherwise): the sender lacks that
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        logger.debug("stored facts: {} inserted, {} ended, {} skipped", inserted, ended, len(records) - inserted)
        return StoreResult(inserted=inserted, skipped=len(records) - inserted, ended=ended, kept_facts=tuple(kept),
                           forgotten=forgotten)

    def _writable_tombstones(self) -> TombstoneTable:
        if self._tombstones is None:
            raise StoreError("the fact store was opened read-only")
        return self._tombstones

    def _find(self, ref: str) -> tuple:
        """The row of the fact ``ref`` names: its key or a unique prefix of it (4+ hex
        digits), else, for one release, the local number older versions printed."""
        ref = ref.strip().lower()
        if not FACT_REF.fullmatch(ref):
            raise InputError(f"{ref!r} is not a fact id: a fact id is 4 to 16 hex digits, as 'fact list' shows")
        if len(ref) >= 4:
            rows = self._db.execute(f"SELECT {_COLUMNS}, key FROM facts WHERE key >= ? AND key < ? LIMIT 6",
                                    (ref, ref + "g")).fetchall()
            if len(rows) == 1:
                return rows[0][:-1]
            if len(rows) > 1:
                shown = ", ".join(r[-1][:len(ref) + 4] for r in rows[:5])
                raise InputError(f"fact id {ref} matches {'more than 5' if len(rows) > 5 else len(rows)} facts "
                                 f"({shown}…): type more of it")
        elif not ref.isdigit():
            raise InputError(f"fact id {ref} is too short: type at least 4 of its hex digits")
        if ref.isdigit():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM facts WHERE id = ?", (int(ref),)).fetchone()
            if row is not None:
                return row
        raise InputError(f"no fact with id {ref}")

    def _forget(self, ref: str, deleted_at: float) -> StoredFact:
        """Delete a fact and leave its tombstone, in one transaction."""
        table = self._writable_tombstones()
        row = self._find(ref)
        fact_id = row[0]
        fact = _row_to_fact(row)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            table.add([(fact_key(fact.record.identity), max(deleted_at, fact_version(fact.record)))])
            self._db.execute("DELETE FROM facts WHERE id = ?", (fact_id,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return fact

    def _store_tombstones(self, tombstones: tuple[Tombstone, ...], peer: str = "") -> StoreResult:
        table = self._writable_tombstones()
        marks = {t.key: t.deleted_at for t in tombstones if t.dataset == "facts"}
        removed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            changed = table.add(marks.items())
            keys = list(marks)
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self._db.execute(
                    f"SELECT {_COLUMNS}, key FROM facts WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                gone = [(_row_to_fact(r).record, r[-1]) for r in rows]
                gone = [(f, k) for f, k in gone if forgets(marks[k], fact_version(f))]
                # Kept in the trash, in the same transaction as the delete (imprint.trash).
                self._trash.add(((k, _trash_encoder.encode(f), None, "", marks[k]) for f, k in gone), peer=peer)
                doomed = [(fact_key(f.identity),) for f, _ in gone]
                self._db.executemany("DELETE FROM facts WHERE key = ?", doomed)
                removed += len(doomed)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return StoreResult(inserted=changed, skipped=len(tombstones) - changed, forgotten=removed)

    def _retrieve(self, keys: tuple[str, ...]) -> tuple[FactRecord, ...]:
        out: list[FactRecord] = []
        keys = tuple(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM facts WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
            out.extend(_row_to_fact(r).record for r in rows)
        return tuple(out)

    def _page(self, limit: int, after: tuple[str, str, str, float] | None) -> FactPage:
        if after is None:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM facts ORDER BY subject, predicate, object, valid_from LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM facts WHERE (subject, predicate, object, valid_from) > (?, ?, ?, ?) "
                "ORDER BY subject, predicate, object, valid_from LIMIT ?",
                (*after, limit),
            ).fetchall()
        facts = tuple(_row_to_fact(r) for r in rows)
        next_after = facts[-1].record.identity if len(facts) == limit else None
        return FactPage(facts=facts, next_after=next_after)

    def _list(self, subject: str | None, predicate: str | None, include_ended: bool, limit: int,
              object_: str | None = None, as_of: float | None = None) -> tuple[StoredFact, ...]:
        clauses, params = [], []
        if object_ is not None:
            clauses.append("object = ?")
            params.append(object_)
        if as_of is not None:
            clauses.append("valid_from <= ? AND (ended IS NULL OR ended > ?)")
            params += [as_of, as_of]
            include_ended = True
        if subject is not None:
            clauses.append("subject = ?")
            params.append(subject)
        if predicate is not None:
            clauses.append("predicate = ?")
            params.append(predicate)
        if not include_ended:
            clauses.append("ended IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM facts {where} ORDER BY valid_from, id LIMIT ?", (*params, limit)
        ).fetchall()
        return tuple(_row_to_fact(r) for r in rows)

    def _add(self, record: FactRecord) -> StoredFact:
        self._store((record,))
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM facts WHERE subject = ? AND predicate = ? AND object = ? AND valid_from = ?",
            record.identity,
        ).fetchone()
        if row is None:
            raise InputError("that fact was forgotten (the same subject, predicate, object and start); "
                             "add it with a later start time")
        return _row_to_fact(row)

    def _end(self, ref: str, ended: float) -> StoredFact:
        row = self._find(ref)
        fact_id = row[0]
        if row[5] is not None:
            raise InputError(f"fact {_row_to_fact(row).short_id} already ended")
        self._db.execute(f"UPDATE facts SET ended = ?, {summaries.STALE} WHERE id = ?", (ended, fact_id))
        return _row_to_fact((*row[:5], ended, row[6]))
