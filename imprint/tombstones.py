"""Tombstones: what was forgotten, and when, in a small SQLite table.

Forgetting a record deletes it and leaves a tombstone ``(key, deleted_at)``
(:class:`~imprint.messages.records.Tombstone`). The stores consult it on every
write, so a forgotten record offered again — by an import, an older export or
a peer that has not heard yet — is skipped, unless it is a newer copy (a
memory added again on purpose). Sync v2 carries tombstones to the other
machines; the plaintext mode of Imprint's own clients cannot, but the skip
still holds there.

The MemoryStore keeps its tombstones in ``forgotten.db`` beside its shard;
the FactStore keeps them in the facts database, in the same transaction as
the delete.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from imprint import summaries
from imprint.protocol.items import item

#: Keys asked per query (SQLite's variable limit is far above).
_CHUNK = 500


class TombstoneTable:
    """The tombstones of one dataset in `db` (table `table`); `kind` is their
    reconciliation item kind (:mod:`imprint.protocol.items`)."""

    def __init__(self, db: sqlite3.Connection, table: str, kind: bytes, *, create: bool = True) -> None:
        self.db = db
        self.table = table
        self.kind = kind
        if create:
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, deleted_at REAL NOT NULL)")
            summaries.install(db, table)

    def add(self, tombstones: Iterable[tuple[str, float]]) -> int:
        """Record tombstones (a later time wins over an earlier one); how many are new or later.
        Runs inside the caller's transaction if one is open."""
        changed = 0
        for key, deleted_at in tombstones:
            cur = self.db.execute(
                f"INSERT INTO {self.table} (key, deleted_at, h0, h1, h2, h3) VALUES (?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT(key) DO UPDATE SET deleted_at = excluded.deleted_at, h0 = excluded.h0, "
                f"h1 = excluded.h1, h2 = excluded.h2, h3 = excluded.h3 "
                f"WHERE excluded.deleted_at > {self.table}.deleted_at",
                (key, deleted_at, *summaries.parts(item(self.kind, key, deleted_at))))
            changed += cur.rowcount
        return changed

    def get(self, keys: Iterable[str]) -> dict[str, float]:
        """key → deleted_at for those of `keys` that were forgotten."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, float] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(f"SELECT key, deleted_at FROM {self.table} WHERE key IN ({marks})", chunk))
        return out

    def all(self) -> Iterator[tuple[str, float]]:
        yield from self.db.execute(f"SELECT key, deleted_at FROM {self.table} ORDER BY key")

    def summary(self) -> tuple[int, int]:
        """(count, total) of these tombstones as reconciliation items (:mod:`imprint.summaries`)."""
        return summaries.summarize(self.db, self.table, "key, deleted_at", lambda k, at: item(self.kind, k, at))

    def count(self) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])


def forgets(tombstone_at: float | None, version: float) -> bool:
    """Whether a tombstone of `tombstone_at` removes a copy of `version` (not newer)."""
    return tombstone_at is not None and version <= tombstone_at
