"""The receive spool: batches a peer sent, on disk, until they are stored.

A receiver must never stop reading its socket while it embeds: a peer (or the
relay) that sees no reading stops answering keepalive pings, and Imprint's own
Python client then drops the connection after 20 s. So receiving is two
stages. The first (:class:`~imprint.actors.puller.Puller`) appends every
batch here, one SQLite transaction each, as fast as it arrives; the second
(:class:`~imprint.actors.storer.Storer`) embeds and stores from here, in
order, and removes each batch once it is stored.

A batch is therefore in the spool (whole) or stored (whole). A sync
interrupted after its transfer leaves batches here; the next command that
opens the store stores them first. Storing is idempotent (records are deduped
by identity), so a crash between storing a batch and removing it only means
that batch is skipped as "already there" next time.

The spool is bounded: :class:`SpoolFullError` beyond ``max_bytes`` of
batches waiting to be stored.

Layout: ``DATA_DIR/workspaces/NAME/spool.db``::

    batches(id, stream, dataset, count, body, size, received_at)
    streams(stream, peer, complete)

This class does no threading of its own: each stage opens its own
connection on its own thread (SQLite's WAL lets both work at once).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from imprint.diskspace import ensure_room
from imprint.errors import SpoolFullError, StoreError
from imprint.messages.records import FactRecord, MemoryRecord
from imprint.messages.wire import Dataset

#: Batches waiting to be stored may take this much disk before the receive
#: side refuses more (a day's sync of a large store fits many times over).
DEFAULT_MAX_BYTES = 2 * 1024**3

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    dataset TEXT NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL
);
-- what pending() sums, without reading the batches' rows (their bodies are megabytes)
CREATE INDEX IF NOT EXISTS batches_pending ON batches (dataset, count, size);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    peer TEXT NOT NULL DEFAULT '',
    complete INTEGER NOT NULL DEFAULT 0
);
"""

_encoder = msgspec.msgpack.Encoder()
_vectors_decoder = msgspec.msgpack.Decoder(tuple[bytes | None, ...])
_decoders = {
    "memories": msgspec.msgpack.Decoder(tuple[MemoryRecord, ...]),
    "facts": msgspec.msgpack.Decoder(tuple[FactRecord, ...]),
}


@dataclass(frozen=True)
class SpooledBatch:
    """One batch read back from the spool."""

    id: int
    stream: str
    dataset: Dataset
    records: tuple[MemoryRecord, ...] | tuple[FactRecord, ...]
    #: The peer's vectors for these memories (little-endian float32, None where it had none), and their model.
    vectors: tuple[bytes | None, ...] = ()
    model: str = ""
    #: The fingerprint of the peer that sent it ("" if unknown).
    peer: str = ""
    #: Every spooled batch it holds (see :meth:`Spool.next_batch`'s `join`); () means just `id`.
    ids: tuple[int, ...] = ()

    @property
    def batch_ids(self) -> tuple[int, ...]:
        return self.ids or (self.id,)


@dataclass(frozen=True)
class Pending:
    """What waits in the spool, per dataset."""

    memories: int = 0
    facts: int = 0
    bytes: int = 0

    @property
    def total(self) -> int:
        return self.memories + self.facts


def spool_path(workspace_dir: Path) -> Path:
    return workspace_dir / "spool.db"


def parse_size(text: str) -> int:
    """`2G`, `500M`, `1048576` → bytes (K, M, G, T are powers of 1024)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 500M)") from None
    if value <= 0:
        raise ValueError("the size must be positive")
    return int(value * scale)


def default_max_bytes() -> int:
    """The spool limit: IMPRINT_SPOOL_LIMIT if set (e.g. `4G`), else :data:`DEFAULT_MAX_BYTES`."""
    setting = os.environ.get("IMPRINT_SPOOL_LIMIT")
    if setting:
        try:
            return parse_size(setting)
        except ValueError as exc:
            from imprint.errors import ConfigError

            raise ConfigError(f"IMPRINT_SPOOL_LIMIT: {exc}") from None
    return DEFAULT_MAX_BYTES


class Spool:
    """One connection to a workspace's receive spool.

    Args:
        path: the spool database (created on first use).
        max_bytes: bytes of batches that may wait to be stored.
    """

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a batch we acknowledged survives a power cut
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
            if "vectors" not in columns:  # a spool from before vectors travelled
                self._db.execute("ALTER TABLE batches ADD COLUMN vectors BLOB")
                self._db.execute("ALTER TABLE batches ADD COLUMN model TEXT NOT NULL DEFAULT ''")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the receive spool {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    # ---------------------------------------------------------------- receive side

    def open_stream(self, stream: str, *, peer: str = "") -> None:
        self._write("INSERT OR IGNORE INTO streams (stream, peer) VALUES (?, ?)", (stream, peer))

    def append(self, stream: str, dataset: Dataset, records: tuple[MemoryRecord, ...] | tuple[FactRecord, ...],
               vectors: tuple[bytes | None, ...] = (), model: str = "") -> int:
        """Keep one batch (one transaction), with the vectors the peer sent beside its
        memories (as it sent them: checked when stored); returns its id.

        Raises:
            SpoolFullError: the batches waiting to be stored would pass ``max_bytes``.
            DiskFullError: the disk would be left with less than its floor free (imprint.diskspace).
            StoreError: the disk refused the write.
        """
        body = _encoder.encode(records)
        carried = _encoder.encode(vectors) if vectors else None
        waiting = self.pending().bytes
        ensure_room(self.path, len(body) + len(carried or b""))
        if waiting + len(body) + len(carried or b"") > self.max_bytes:
            raise SpoolFullError(
                f"the receive spool is full: {waiting / 2**20:,.0f} MiB wait to be stored and the limit is "
                f"{self.max_bytes / 2**20:,.0f} MiB; raise --spool-limit (or IMPRINT_SPOOL_LIMIT) and sync again"
            )
        cur = self._write(
            "INSERT INTO batches (stream, dataset, count, body, size, received_at, vectors, model) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, dataset, len(records), body, len(body) + len(carried or b""), time.time(), carried, model),
        )
        return int(cur.lastrowid)

    def complete_stream(self, stream: str) -> None:
        """The peer sent `done`: every batch of the stream is here."""
        self._write("UPDATE streams SET complete = 1 WHERE stream = ?", (stream,))

    # ---------------------------------------------------------------- store side

    def next_batch(self, datasets: tuple[Dataset, ...] = ("memories", "facts"), *, join: int = 0
                   ) -> SpooledBatch | None:
        """The oldest batch of `datasets` waiting to be stored, or None. With `join`, memory
        batches with vectors that follow it in the same stream (same model) are joined to it
        up to about `join` records: one store call, one flush, for all of them."""
        first = self._next_batch(datasets)
        if first is None or not join or first.dataset != "memories" or not first.vectors:
            return first
        joined = [first]
        count = len(first.records)
        after = first.id
        while count < join:
            nxt = self._next_batch(("memories",), after=after, stream=first.stream)
            if (nxt is None or nxt.stream != first.stream or not nxt.vectors or nxt.model != first.model
                    or count + len(nxt.records) > join):
                break
            joined.append(nxt)
            count += len(nxt.records)
            after = nxt.id
        if len(joined) == 1:
            return first
        return SpooledBatch(id=first.id, stream=first.stream, dataset="memories",
                            records=tuple(r for b in joined for r in b.records),
                            vectors=tuple(v for b in joined for v in b.vectors), model=first.model, peer=first.peer,
                            ids=tuple(b.id for b in joined))

    def _next_batch(self, datasets: tuple[Dataset, ...], *, after: int = 0, stream: str | None = None
                    ) -> SpooledBatch | None:
        marks = ",".join("?" * len(datasets))
        if after:
            row = self._read(
                "SELECT b.id, b.stream, b.dataset, b.body, b.vectors, b.model, s.peer FROM batches b "
                "LEFT JOIN streams s ON s.stream = b.stream WHERE b.id > ? ORDER BY b.id LIMIT 1", (after,)
            ).fetchone()
            if row is None or row[1] != stream or row[2] not in datasets:
                return None
            return self._decoded(row, datasets)
        row = self._read(
            f"SELECT b.id, b.stream, b.dataset, b.body, b.vectors, b.model, s.peer FROM batches b "
            f"LEFT JOIN streams s ON s.stream = b.stream WHERE b.dataset IN ({marks}) ORDER BY b.id LIMIT 1", datasets
        ).fetchone()
        if row is None:
            return None
        return self._decoded(row, datasets)

    def _decoded(self, row: tuple, datasets: tuple[Dataset, ...]) -> SpooledBatch | None:
        batch_id, stream, dataset, body, carried, model, peer = row
        try:
            records = _decoders[dataset].decode(body)
            vectors = _vectors_decoder.decode(carried) if carried else ()
            if vectors and len(vectors) != len(records):
                raise msgspec.DecodeError("vectors do not match the records")
        except (KeyError, msgspec.DecodeError) as exc:
            # Only we write the spool; a batch we cannot read is corrupt: drop it, loudly.
            from loguru import logger

            logger.error("dropping unreadable spool batch {} ({}): {}", batch_id, dataset, exc)
            self.remove(batch_id)
            return self._next_batch(datasets)
        return SpooledBatch(id=batch_id, stream=stream, dataset=dataset, records=records, vectors=vectors,
                            model=model or "", peer=peer or "")

    def remove(self, batch_id: int | tuple[int, ...]) -> None:
        """Remove a stored batch (or those of a joined one), in one transaction."""
        ids = batch_id if isinstance(batch_id, tuple) else (batch_id,)
        self._write(f"DELETE FROM batches WHERE id IN ({','.join('?' * len(ids))})", ids)

    def stream_done(self, stream: str) -> bool:
        """True when the stream is complete and none of its batches waits any more."""
        complete = self._read("SELECT complete FROM streams WHERE stream = ?", (stream,)).fetchone()
        if not complete or not complete[0]:
            return False
        return self._read("SELECT 1 FROM batches WHERE stream = ? LIMIT 1", (stream,)).fetchone() is None

    def forget_stream(self, stream: str) -> None:
        self._write("DELETE FROM streams WHERE stream = ?", (stream,))

    def forget_streams(self, *, keep: set[str]) -> None:
        """Forget every stream without waiting batches, except those in `keep` (still being received)."""
        for (stream,) in self._read("SELECT stream FROM streams").fetchall():
            if stream not in keep and self._read("SELECT 1 FROM batches WHERE stream = ? LIMIT 1", (stream,)).fetchone() is None:
                self.forget_stream(stream)

    def pending(self) -> Pending:
        rows = self._read("SELECT dataset, SUM(count), SUM(size) FROM batches GROUP BY dataset").fetchall()
        counts = {dataset: int(n or 0) for dataset, n, _ in rows}
        return Pending(memories=counts.get("memories", 0), facts=counts.get("facts", 0),
                       bytes=sum(int(size or 0) for _, _, size in rows))

    # ---------------------------------------------------------------- sqlite

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"the receive spool {self.path} refused a write: {exc}") from None

    def _read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the receive spool {self.path}: {exc}") from None


def read_pending(path: Path) -> Pending:
    """What waits in a spool, read without creating or changing anything (for `status`)."""
    if not path.exists():
        return Pending()
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    try:
        db = sqlite3.connect(f"{path.as_uri()}?{mode}", uri=True, timeout=30)
        try:
            rows = db.execute("SELECT dataset, SUM(count), SUM(size) FROM batches GROUP BY dataset").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return Pending()
    counts = {dataset: int(n or 0) for dataset, n, _ in rows}
    return Pending(memories=counts.get("memories", 0), facts=counts.get("facts", 0),
                   bytes=sum(int(size or 0) for _, _, size in rows))
