"""Re-embedding a store made with another model (`imprint reembed`).

A store records the fingerprint of the model its vectors come from, and
refuses to mix in another model's vectors: switching models (or a model
whose files changed) leaves a store that search and sync will not use. This
converts it: every memory is read from the old shard, embedded with the
running model and written into a new shard beside it (``memories.reembed``),
which then takes the old one's place in two renames. The old shard is
untouched until then, so an interrupted run leaves the store as it was (the
next run starts over); a crash between the two renames is undone on the next
open (:func:`recover`). Tombstones and the version index stay as they are:
ids, times and texts do not change, only vectors.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from imprint.errors import StoreError
from imprint.messages.store import MemoryFilter
from imprint.storage import StoredMemory, StoreMeta

#: Memories read, embedded and written at a time.
CHUNK = 256


def staging_of(path: Path) -> Path:
    return path.with_name(path.name + ".reembed")


def previous_of(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def recover(path: Path) -> None:
    """Undo a swap a crash cut in half: the old shard is put back (run reembed again)."""
    previous = previous_of(path)
    if previous.exists() and not path.exists():
        os.rename(previous, path)


def pages(backend: Any, limit: int = CHUNK) -> Iterator[list[StoredMemory]]:
    after = None
    while True:
        memories, after = backend.page(limit, after)
        if memories:
            yield memories
        if after is None:
            return


def reembed(path: Path, *, fingerprint: str, model_name: str, dimension: int,
            embed: Callable[[list[str]], Iterable[list[float]]], progress: Callable[[int], None]) -> int:
    """Re-embed the Edge store at `path` with the running model; how many memories.

    `embed` turns texts into vectors (this model's); `progress` is told how many were done.
    """
    from imprint.storage.edge import EdgeBackend, read_meta

    recover(path)
    meta = read_meta(path)
    if meta is None:
        return 0
    staging = staging_of(path)
    shutil.rmtree(staging, ignore_errors=True)
    old = EdgeBackend(path)
    new = EdgeBackend(staging)
    done = 0
    try:
        new.create(StoreMeta(dimension=dimension, model=fingerprint, model_name=model_name,
                             migrated_from=meta.migrated_from))
        for memories in pages(old):
            vectors = list(embed([m.record.content for m in memories]))
            if len(vectors) != len(memories):
                raise StoreError("the model returned fewer vectors than texts")
            new.upsert([StoredMemory(record=m.record, vector=v, model=fingerprint) for m, v in zip(memories, vectors)])
            done += len(memories)
            progress(len(memories))
        copied, held = new.count(MemoryFilter()), old.count(MemoryFilter())
        if copied != held:
            raise StoreError(f"re-embedding copied {copied} of {held} memories; nothing was changed")
    except BaseException:
        new.close()
        old.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    new.close()
    old.close()
    previous = previous_of(path)
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(path, previous)
    os.rename(staging, path)
    shutil.rmtree(previous, ignore_errors=True)
    return done
