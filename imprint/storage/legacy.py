"""The store older versions kept, and its migration to Qdrant Edge.

Up to this version memories lived in qdrant-client's *local mode* under
``DATA_DIR/qdrant/``: one SQLite file per workspace collection
(``collection/imprint_NAME/storage.sqlite``, one pickled point per row, the
latest row of an id winning) and a ``meta.json`` naming the collections. Its
own reader loads every collection of the folder into memory (12 s and 2.5 GB
at 100k memories), so this module reads the one collection it needs row by
row instead, under the same lock file local mode takes.

Migration, all or nothing:

1. lock the old store (as local mode does, so no older imprint writes meanwhile);
2. copy every point — payload and vector as they are, nothing re-embedded — into
   a new Edge shard beside the final place (``memories.migrating``);
3. verify: the counts equal, and a sample of records and vectors equal;
4. rename the shard into place, then remove the old collection (and the old
   folder once it holds no collection).

A crash before 4 leaves the old store as it was (the half-made shard is
thrown away by the next attempt); a crash inside 4 leaves the verified new
store, and the next open removes the old collection.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pickle
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.errors import StoreError
from imprint.messages.records import MemoryRecord
from imprint.storage import VECTOR_NAME, StoredMemory, StoreMeta

#: Points written to the new store per call.
BATCH = 500
#: Records (and vectors) compared one by one after the copy.
VERIFY_SAMPLE = 256
MIGRATED_FROM = "qdrant-client local mode"

Progress = Callable[[int, int], None]


class LegacyStore:
    """One workspace's collection in an old local-mode folder (read-only)."""

    def __init__(self, root: Path, collection: str) -> None:
        self.root = root
        self.collection = collection
        self.sqlite_path = root / "collection" / collection / "storage.sqlite"

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.root / "meta.json").read_text())
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def exists(self) -> bool:
        return self.collection in (self._meta().get("collections") or {}) and self.sqlite_path.is_file()

    def dimension(self) -> int:
        config = (self._meta().get("collections") or {}).get(self.collection) or {}
        vectors = config.get("vectors") or {}
        try:
            return int(vectors[VECTOR_NAME]["size"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"the old memory store in {self.root} has no {VECTOR_NAME!r} vectors; "
                             "it was not made by imprint") from None

    def rows(self) -> int:
        """Rows in the file (a point written by a very old version may count twice)."""
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the old memory store {self.sqlite_path}: {exc}") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold local mode's own lock file, as a running older imprint would."""
        try:
            fh = open(self.root / ".lock", "a+")
        except OSError as exc:
            raise StoreError(f"cannot lock the old memory store in {self.root}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StoreError(f"the old memory store in {self.root} is open in another process "
                                 "(an older imprint still running?); stop it and try again") from None
            yield
        finally:
            fh.close()

    def points(self) -> Iterator[tuple[MemoryRecord, list[float]]]:
        """Every memory with its vector, the latest row of each point."""
        seen: set[str] = set()
        with self._connect() as db:
            for rowid, blob in db.execute("SELECT rowid, point FROM points ORDER BY rowid DESC"):
                try:
                    point = pickle.loads(blob)  # noqa: S301 - the user's own store, as local mode reads it
                    key = str(point.id)
                    if key in seen:
                        continue
                    seen.add(key)
                    vector = point.vector.get(VECTOR_NAME) if isinstance(point.vector, dict) else point.vector
                    record = msgspec.convert(point.payload or {}, MemoryRecord)
                except Exception as exc:
                    raise StoreError(f"the old memory store has an unreadable point (row {rowid}): {exc}") from None
                yield record, [float(x) for x in vector]

    def remove(self) -> None:
        """Drop this collection; the whole folder once no collection is left."""
        meta = self._meta()
        collections = meta.get("collections") or {}
        collections.pop(self.collection, None)
        shutil.rmtree(self.root / "collection" / self.collection, ignore_errors=True)
        if not collections:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        meta["collections"] = collections
        meta.setdefault("aliases", {})
        tmp = self.root / ".meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.root / "meta.json")


def _same_vector(a: list[float], b: list[float]) -> bool:
    """Equal up to normalisation (Edge stores cosine vectors normalised) and float32 rounding."""
    if len(a) != len(b):
        return False
    na, nb = math.sqrt(sum(x * x for x in a)) or 1.0, math.sqrt(sum(x * x for x in b)) or 1.0
    return all(abs(x / na - y / nb) < 1e-5 for x, y in zip(a, b))


def migrate(legacy: LegacyStore, target: Path, *, model: str, model_name: str, progress: Progress | None = None) -> int:
    """Copy `legacy` into a new Edge store at `target`, verify, swap; the number of memories.

    Raises StoreError (the old store untouched) if anything does not add up.
    """
    from imprint.storage.edge import EdgeBackend

    staging = target.with_name(target.name + ".migrating")
    with legacy.locked():
        total = legacy.rows()
        shutil.rmtree(staging, ignore_errors=True)
        meta = StoreMeta(dimension=legacy.dimension(), model=model, model_name=model_name,
                         migrated_from=f"{MIGRATED_FROM} ({legacy.root})")
        new = EdgeBackend(staging)
        try:
            new.create(meta)
            copied: list[str] = []
            batch: list[StoredMemory] = []
            step = max(1, total // VERIFY_SAMPLE)
            sample: dict[str, tuple[MemoryRecord, list[float]]] = {}
            for record, vector in legacy.points():
                batch.append(StoredMemory(record=record, vector=vector, model=model))
                if len(copied) % step == 0:
                    sample[record.id] = (record, vector)
                copied.append(record.id)
                if len(batch) >= BATCH:
                    new.upsert(batch)
                    batch = []
                    if progress:
                        progress(len(copied), total)
            new.upsert(batch)
            if progress:
                progress(len(copied), len(copied))
            _verify(new, copied, sample)
        except BaseException:
            new.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        new.close()
        os.rename(staging, target)
        logger.info("migrated {} memories from {} to {}", len(copied), legacy.root, target)
        legacy.remove()
    return len(copied)


def _verify(new: Any, copied: list[str], sample: dict[str, tuple[MemoryRecord, list[float]]]) -> None:
    from imprint.messages.store import MemoryFilter

    count = new.count(MemoryFilter())
    if count != len(copied) or len(set(copied)) != len(copied):
        raise StoreError(f"migration check failed: {len(copied)} memories read, {count} in the new store; "
                         "the old store is kept as it was")
    stored = {m.record.id: m for m in new.retrieve(tuple(sample), vectors=True)}
    for memory_id_, (record, vector) in sample.items():
        got = stored.get(memory_id_)
        if got is None or got.record != record or got.vector is None or not _same_vector(vector, got.vector):
            raise StoreError(f"migration check failed on memory {memory_id_}: the copy differs; "
                             "the old store is kept as it was")


def finish_interrupted(legacy: LegacyStore, target_meta: StoreMeta | None) -> None:
    """A migration that verified and swapped but did not remove the old collection: remove it now."""
    if target_meta is not None and target_meta.migrated_from.startswith(MIGRATED_FROM) and legacy.exists():
        with legacy.locked():
            legacy.remove()
        logger.info("removed the old memory store's collection {} (migrated earlier)", legacy.collection)
