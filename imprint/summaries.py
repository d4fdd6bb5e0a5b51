"""Set summaries kept by SQLite: what an unchanged re-sync compares instead of every item.

Reconciliation (:mod:`imprint.protocol.reconcile`) fingerprints a set of items
as the sum, modulo 2**128, of each item's 128-bit hash. The sum of a whole
dataset is all two machines need to see that nothing differs — but reading
100k items and hashing them in Python costs ~0.5 s a side, and even summing
stored hashes scans every row (~40 ms a table at 100k). So each table that
holds items keeps its items' hashes beside them, as four 32-bit integer
columns (``h0`` the top), and SQLite triggers keep their running sums in
``item_sums`` on every insert, update and delete: a summary costs the same at
100 rows and at a million (each sum stays far below 2**63).

Inserts write a row's hash with it (:func:`parts`, ~2 µs); a write that
changes a row's version may instead set its hash columns to NULL
(:data:`STALE`), and :func:`summarize` hashes such rows first (found through a
partial index), so the total is always that of the items as they are, at a
cost in proportion to what changed. A row whose columns were never filled (a
table from before this) is simply one of them.
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


def install(db: sqlite3.Connection, table: str) -> None:
    """Give `table` its hash columns, the index of stale rows, its running sums and the
    triggers that keep them (idempotent; the caller's connection is in autocommit mode)."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column in HASH_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")
    db.execute(f"CREATE INDEX IF NOT EXISTS {table}_stale ON {table} (h0) WHERE h0 IS NULL")
    db.execute("CREATE TABLE IF NOT EXISTS item_sums (tbl TEXT PRIMARY KEY, n INTEGER NOT NULL, "
               "s0 INTEGER NOT NULL, s1 INTEGER NOT NULL, s2 INTEGER NOT NULL, s3 INTEGER NOT NULL)")
    triggers = {f"{table}_sum_insert", f"{table}_sum_delete", f"{table}_sum_update"}
    found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                                          (table,))}
    if triggers <= found and db.execute("SELECT 1 FROM item_sums WHERE tbl = ?", (table,)).fetchone():
        return
    add = ", ".join(f"s{i} = s{i} + COALESCE(NEW.h{i}, 0)" for i in range(4))
    sub = ", ".join(f"s{i} = s{i} - COALESCE(OLD.h{i}, 0)" for i in range(4))
    both = ", ".join(f"s{i} = s{i} - COALESCE(OLD.h{i}, 0) + COALESCE(NEW.h{i}, 0)" for i in range(4))
    db.execute("BEGIN IMMEDIATE")
    try:
        for name in triggers:
            db.execute(f"DROP TRIGGER IF EXISTS {name}")
        db.execute(f"CREATE TRIGGER {table}_sum_insert AFTER INSERT ON {table} BEGIN UPDATE item_sums SET "
                   f"n = n + (NEW.h0 IS NOT NULL), {add} WHERE tbl = '{table}'; END")
        db.execute(f"CREATE TRIGGER {table}_sum_delete AFTER DELETE ON {table} BEGIN UPDATE item_sums SET "
                   f"n = n - (OLD.h0 IS NOT NULL), {sub} WHERE tbl = '{table}'; END")
        db.execute(f"CREATE TRIGGER {table}_sum_update AFTER UPDATE OF h0, h1, h2, h3 ON {table} BEGIN "
                   f"UPDATE item_sums SET n = n - (OLD.h0 IS NOT NULL) + (NEW.h0 IS NOT NULL), {both} "
                   f"WHERE tbl = '{table}'; END")
        db.execute("INSERT OR REPLACE INTO item_sums (tbl, n, s0, s1, s2, s3) SELECT ?, COUNT(h0), "
                   f"COALESCE(SUM(h0), 0), COALESCE(SUM(h1), 0), COALESCE(SUM(h2), 0), COALESCE(SUM(h3), 0) FROM {table}",
                   (table,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def summarize(db: sqlite3.Connection, table: str, columns: str, to_item: Callable[..., bytes]) -> tuple[int, int]:
    """(count, 128-bit total) of the items in `table` (made :func:`install`-ed).

    `columns` are what `to_item` is called with, per row, to make the item
    (e.g. ``"key, deleted_at"``). Rows with no hash yet are hashed and written
    first, in one transaction; then the sums are read, not computed.
    """
    stale = db.execute(f"SELECT rowid, {columns} FROM {table} WHERE h0 IS NULL").fetchall()
    if stale:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"UPDATE {table} SET h0 = ?, h1 = ?, h2 = ?, h3 = ? WHERE rowid = ?",
                           [(*parts(to_item(*row[1:])), row[0]) for row in stale])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    count, s0, s1, s2, s3 = db.execute("SELECT n, s0, s1, s2, s3 FROM item_sums WHERE tbl = ?", (table,)).fetchone()
    return count, ((s0 << 96) + (s1 << 64) + (s2 << 32) + s3) % _MOD


def combine(*summaries: tuple[int, int]) -> tuple[int, int]:
    """The summary of the union of disjoint sets."""
    return sum(c for c, _ in summaries), sum(t for _, t in summaries) % _MOD
