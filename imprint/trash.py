"""The trash: what another machine made this one forget, kept here for 30 days.

A peer's tombstones remove records here (that is what forgetting across
machines means), but a peer can be wrong, wiped or hostile. So before a
tombstone from a peer removes a copy, the copy goes into this table, in the
same transaction as the tombstone: it is never lost, even if the process dies
between the two. Nothing here is synced, and nothing here counts as a record
(search, export and reconciliation do not see it).

`imprint trash` lists it; `imprint trash restore` brings records back as newer
copies (a memory dated now, so it wins over the tombstone here and, at the
next sync, everywhere); `imprint trash empty` drops it. Entries older than
:data:`KEEP_DAYS` go when the store opens.

The MemoryStore keeps its trash in ``forgotten.db`` (beside its tombstones),
the FactStore in the facts database.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Literal

import msgspec

#: Days a record a peer made us forget stays restorable.
KEEP_DAYS = 30
#: Entries read per query.
_CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS trash (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    record BLOB NOT NULL,
    vector BLOB,
    model TEXT NOT NULL DEFAULT '',
    peer TEXT NOT NULL DEFAULT '',
    trashed_at REAL NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trash_trashed ON trash (trashed_at);
"""


class TrashEntry(msgspec.Struct, frozen=True):
    """One trashed record: its MessagePack (a MemoryRecord or FactRecord), the vector
    it had (little-endian float32, memories only) and who made us forget it when."""

    dataset: Literal["memories", "facts"]
    id: int
    key: str
    record: bytes
    vector: bytes | None
    model: str
    peer: str
    trashed_at: float
    deleted_at: float


_COLUMNS = "id, key, record, vector, model, peer, trashed_at, deleted_at"


class TrashTable:
    """The trash of one store, in `db` (created unless `create` is False: read-only)."""

    def __init__(self, db: sqlite3.Connection, dataset: Literal["memories", "facts"], *, create: bool = True) -> None:
        self.db = db
        self.dataset = dataset
        self.exists = True
        if create:
            db.executescript(SCHEMA)
        else:
            self.exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'trash'").fetchone() is not None

    def add(self, entries: Iterable[tuple[str, bytes, bytes | None, str, float]], *, peer: str,
            now: float | None = None) -> int:
        """Keep `(key, record, vector, model, deleted_at)` entries; runs in the caller's transaction."""
        at = time.time() if now is None else now
        rows = [(key, record, vector, model, peer, at, deleted_at) for key, record, vector, model, deleted_at in entries]
        self.db.executemany("INSERT INTO trash (key, record, vector, model, peer, trashed_at, deleted_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def list(self, *, since: float = 0.0, peer: str = "", ids: tuple[int, ...] = (), limit: int = 1000,
             after: int = 0) -> list[TrashEntry]:
        """Entries, oldest first, filtered by time, peer (a fingerprint prefix) or ids."""
        if not self.exists:
            return []
        where = ["trashed_at >= ?", "id > ?"]
        params: list[object] = [since, after]
        if peer:
            where.append("peer LIKE ?")
            params.append(peer.replace(":", "").lower() + "%")
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM trash WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                               (*params, limit)).fetchall()
        return [TrashEntry(self.dataset, *row) for row in rows]

    def count(self) -> int:
        if not self.exists:
            return 0
        return int(self.db.execute("SELECT COUNT(*) FROM trash").fetchone()[0])

    def remove(self, ids: Iterable[int]) -> int:
        ids = list(ids)
        removed = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            removed += self.db.execute(f"DELETE FROM trash WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount
        return removed

    def empty(self) -> int:
        return self.db.execute("DELETE FROM trash").rowcount

    def expire(self, now: float | None = None) -> int:
        """Drop entries older than :data:`KEEP_DAYS`."""
        limit = (time.time() if now is None else now) - KEEP_DAYS * 86400
        return self.db.execute("DELETE FROM trash WHERE trashed_at < ?", (limit,)).rowcount
