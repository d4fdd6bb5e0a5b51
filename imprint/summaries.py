"""Set summaries kept by SQLite: what an unchanged re-sync compares instead of every item.

Reconciliation (:mod:`imprint.protocol.reconcile`) fingerprints a set of items
as the sum, modulo 2**128, of each item's 128-bit hash. The sum of a whole
dataset is all two machines need to see that nothing differs — but reading
100k items and hashing them in Python costs ~0.5 s a side. So each table that
holds items keeps its items' hashes beside them, as four 32-bit integer columns
(``h0`` the top): SQLite sums a column of 100k rows in a few milliseconds, and
the four sums make the 128-bit total exactly (each sum stays far below 2**63).

Inserts write a row's hash with it (:func:`parts`, ~2 µs); a write that
changes a row's version may instead set its hash columns to NULL
(:data:`STALE`), and :func:`summarize` hashes such rows first, so the total is
always that of the items as they are, at a cost in proportion to what changed
since the last summary. A row whose columns were never filled (a table from
before this) is simply one of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from imprint.protocol.reconcile import item_hash

#: The hash columns, top 32 bits first.
HASH_COLUMNS = ("h0", "h1", "h2", "h3")
#: SQL that marks a row's hash as to be recomputed (for UPDATE ... SET).
STALE = "h0 = NULL, h1 = NULL, h2 = NULL, h3 = NULL"
_M32 = (1 << 32) - 1
_MOD = 1 << 128


def parts(item: bytes) -> tuple[int, int, int, int]:
    """An item's 128-bit hash as four 32-bit integers, top first."""
    h = item_hash(item)
    return h >> 96, (h >> 64) & _M32, (h >> 32) & _M32, h & _M32


def add_columns(db: sqlite3.Connection, table: str) -> None:
    """Give `table` its hash columns if it lacks them (they start NULL: hashed on the next summary)."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column in HASH_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")


def summarize(db: sqlite3.Connection, table: str, columns: str, to_item: Callable[..., bytes],
              where: str = "") -> tuple[int, int]:
    """(count, 128-bit total) of the items in `table`'s rows (those matching `where`).

    `columns` are what `to_item` is called with, per row, to make the item
    (e.g. ``"key, deleted_at"``). Rows with no hash yet are hashed and written
    first, in one transaction (the caller's connection is in autocommit mode).
    """
    condition = f"({where}) AND h0 IS NULL" if where else "h0 IS NULL"
    stale = db.execute(f"SELECT rowid, {columns} FROM {table} WHERE {condition}").fetchall()
    if stale:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"UPDATE {table} SET h0 = ?, h1 = ?, h2 = ?, h3 = ? WHERE rowid = ?",
                           [(*parts(to_item(*row[1:])), row[0]) for row in stale])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    count, *sums = db.execute(f"SELECT COUNT(*), SUM(h0), SUM(h1), SUM(h2), SUM(h3) FROM {table}"
                              + (f" WHERE {where}" if where else "")).fetchone()
    s0, s1, s2, s3 = (int(s or 0) for s in sums)
    return count, ((s0 << 96) + (s1 << 64) + (s2 << 32) + s3) % _MOD


def combine(*summaries: tuple[int, int]) -> tuple[int, int]:
    """The summary of the union of disjoint sets."""
    return sum(c for c, _ in summaries), sum(t for _, t in summaries) % _MOD
