"""Starting and stopping the local actors a command needs, and the one path
by which memories are written (dedup → embed new texts → store).

Like Mopidy's `_app`: start in dependency order, confirm each `on_start`
worked with a Ping, stop in reverse in a `finally`, then stop and log any
leftover actor as a bug — no thread outlives a command.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pykka
from loguru import logger

from imprint.actors.base import ASK_TIMEOUT, QueueListener, ask
from imprint.actors.embedder import Embedder
from imprint.actors.fact_store import FactStore
from imprint.actors.memory_store import MemoryStore
from imprint.actors.storer import ALL_STREAMS, Storer
from imprint.cli_output import note
from imprint.config import Settings
from imprint.errors import StoreError
from imprint.messages.records import MemoryRecord, earliest_copies
from imprint.messages.session import BatchStored, SpoolIdle, StoreFailed, Unwatch, Wake, Watch
from imprint.spool import Pending, read_pending, spool_path
from imprint.messages.store import (
    EmbedTexts,
    FindMissing,
    ModelInfo,
    DescribeModel,
    Ping,
    StoreMemories,
    StoreResult,
)

#: Seconds a model may take to load (torch import included) before we give up.
START_TIMEOUT = 180.0


def embed_and_store(
    embedder: pykka.ActorRef[Any], memory_store: pykka.ActorRef[Any], records: tuple[MemoryRecord, ...], *, timeout: float = ASK_TIMEOUT
) -> StoreResult:
    """Store finalized memory records: only texts not stored yet are embedded."""
    if not records:
        return StoreResult()
    request = FindMissing(ids=tuple(r.id for r in records), timestamps=tuple(r.timestamp for r in records))
    fresh = earliest_copies(records, ask(memory_store, request, timeout=timeout).ids)
    if not fresh:
        return StoreResult(skipped=len(records))
    vectors = ask(embedder, EmbedTexts(texts=tuple(r.content for r in fresh)), timeout=timeout).vectors
    result = ask(memory_store, StoreMemories(records=fresh, vectors=vectors), timeout=timeout)
    return StoreResult(inserted=result.inserted, skipped=len(records) - result.inserted, updated=result.updated)


@dataclass
class LocalActors:
    """The local actors of one command, started on enter and stopped on exit.

    Args:
        settings: resolved options.
        embedder: start the model (needed to write or search memories).
        memories: start the MemoryStore; without the embedder it is read-only.
        facts: start the FactStore.
        read_only: open what exists for reading and create nothing (`status`).
    """

    settings: Settings
    embedder: bool = False
    memories: bool = True
    facts: bool = True
    read_only: bool = False
    refs: dict[str, pykka.ActorRef[Any]] = field(default_factory=dict)
    model: ModelInfo | None = None

    def __enter__(self) -> "LocalActors":
        try:
            self._start()
        except BaseException as exc:
            self.stop(interrupted=isinstance(exc, KeyboardInterrupt))
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))

    def _start(self) -> None:
        s = self.settings
        # What an interrupted sync left in the receive spool is stored before the
        # command runs, by any command that opens the store (so export, search…
        # see it): all of it when the command opens the memory store (which may
        # need the model and the fact store too), the facts alone for a facts command.
        pending = Pending() if self.read_only else read_pending(spool_path(s.workspace_dir))
        if not self.memories:
            pending = Pending(facts=pending.facts) if self.facts else Pending()
        if self.embedder or pending.memories:
            self.refs["embedder"] = Embedder.start(model_name=s.model)
            ask(self.refs["embedder"], Ping(), timeout=START_TIMEOUT)
            self.model = ask(self.refs["embedder"], DescribeModel())
        if self.memories:
            self.refs["memory_store"] = MemoryStore.start(
                collection=s.collection,
                path=s.qdrant_path,
                url=s.qdrant_url,
                dimension=self.model.dimension if self.model else None,
            )
            ask(self.refs["memory_store"], Ping(), timeout=START_TIMEOUT)
        if self.facts or pending.total:
            self.refs["fact_store"] = FactStore.start(path=s.facts_path, read_only=self.read_only)
            ask(self.refs["fact_store"], Ping(), timeout=START_TIMEOUT)
        if "fact_store" in self.refs and not self.read_only and (self.memories or pending.total):
            # The spool's store stage: it stores what sessions receive, and first what is left.
            self.refs["storer"] = Storer.start(
                spool_path=spool_path(s.workspace_dir),
                memory_store=self.refs.get("memory_store"),
                fact_store=self.refs["fact_store"],
                embedder=self.refs.get("embedder"),
            )
            ask(self.refs["storer"], Ping(), timeout=START_TIMEOUT)
            if pending.total:
                self._finish_interrupted_sync(pending)

    def _finish_interrupted_sync(self, pending: Pending) -> None:
        from tqdm import tqdm

        note(
            f"imprint: storing {pending.total:,} records an interrupted sync received earlier "
            "(kept in the receive spool), before anything else…"
        )
        listener = QueueListener()
        storer = self.refs["storer"]
        storer.tell(Watch(stream=ALL_STREAMS, listener=listener))
        storer.tell(Wake())
        with tqdm(total=pending.total, desc="storing", unit="rec", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
            try:
                while True:
                    event = listener.get(timeout=ASK_TIMEOUT)
                    match event:
                        case BatchStored(count=count):
                            bar.update(count)
                        case SpoolIdle():
                            return
                        case StoreFailed(message=message):
                            raise StoreError(f"could not store what an interrupted sync received: {message}")
            finally:
                storer.tell(Unwatch(stream=ALL_STREAMS))

    def __getitem__(self, name: str) -> pykka.ActorRef[Any]:
        return self.refs[name]

    def store_memories(self, records: tuple[MemoryRecord, ...]) -> StoreResult:
        return embed_and_store(self.refs["embedder"], self.refs["memory_store"], records)

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop in reverse order. After Ctrl-C or SIGTERM, within about 2 s in all: a store
        finishes the write in hand (a batch is whole or absent), a model still loading is
        left to die with the process (its thread is a daemon)."""
        deadline = time.monotonic() + (2.0 if interrupted else 60.0 * max(1, len(self.refs)))
        for name in reversed(list(self.refs)):
            try:
                self.refs[name].stop(timeout=max(0.1, min(60.0, deadline - time.monotonic())))
            except pykka.Timeout:
                (logger.debug if interrupted else logger.error)("{} did not stop in time", name)
            except pykka.ActorDeadError:
                pass
        self.refs.clear()


def stop_leftovers(*, interrupted: bool = False) -> None:
    """Stop any actor still running at the end of a command, and say so: it is a bug
    (unless the command was interrupted, when a model may still be loading)."""
    leftovers = pykka.ActorRegistry.get_all()
    if leftovers:
        names = [ref.actor_class.__name__ for ref in leftovers]
        if interrupted:
            logger.debug("actors left after an interrupt: {}", names)
        else:
            logger.error("bug: actors still running at exit: {}", names)
        pykka.ActorRegistry.stop_all(block=not interrupted, timeout=2 if interrupted else 30)
