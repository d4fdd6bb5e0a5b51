"""Verifier: checks in the background every vector a peer sent that was stored unchecked.

A same-model peer's vectors are used as they arrive, so a sync costs no
embedding here. But one memory carrying the vector of "how do we deploy?"
among thousands would rank first for that question. So
every such vector is listed as unverified (:class:`~imprint.actors.memory_store.MemoryStore`
keeps the list; until checked, a vector never leaves this machine), and this
actor, whenever the service has been quiet for :data:`IDLE` seconds and no
sync runs, embeds their texts here a chunk at a time and compares. A vector
off by more than the canary tolerance is replaced by ours, and its peer is
distrusted for good: what is left from it is checked first, and nothing it
sends later is taken as it is (a warning names it; `imprint status` lists it).

One chunk (:data:`CHUNK` texts) at a time: a search or an `add` arriving
meanwhile waits at most one chunk's embedding.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor, ask, tell_later
from imprint.actors.storer import MIN_COSINE, cosine
from imprint.messages.records import content_hash
from imprint.messages.store import (
    EmbedTexts,
    ResolveUnverified,
    RetrieveMemories,
    TakeUnverified,
)

#: Seconds without a request (and without a sync) before the check runs (IMPRINT_VERIFY_IDLE).
IDLE = 3.0
#: Texts embedded per step.
CHUNK = 32
#: Seconds between looks when nothing waits.
POLL = 5.0


def idle_setting() -> float:
    try:
        return max(0.0, float(os.environ.get("IMPRINT_VERIFY_IDLE", IDLE)))
    except ValueError:
        return IDLE


class _Tick(msgspec.Struct, frozen=True):
    """Look for work (posted to self by a timer)."""


class Verifier(ImprintActor):
    """Answers nothing; ticks itself.

    Args:
        memory_store, embedder: the store whose unverified vectors it checks, and the model.
        quiet: seconds the service has been quiet (0 while a sync runs).
        idle: seconds of quiet before a step (default IMPRINT_VERIFY_IDLE or :data:`IDLE`).
    """

    def __init__(self, *, memory_store: Any, embedder: Any, quiet: Callable[[], float],
                 idle: float | None = None) -> None:
        super().__init__()
        self.memory_store = memory_store
        self.embedder = embedder
        self.quiet = quiet
        self.idle = idle_setting() if idle is None else idle
        self._timer: threading.Timer | None = None
        self.checked = 0
        self.replaced = 0

    def start_up(self) -> None:
        self._later(self.idle)

    def shut_down(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def handle(self, message: Any) -> Any:
        match message:
            case _Tick():
                self._later(self._step())
            case _:
                return super().handle(message)
        return None

    def _later(self, seconds: float) -> None:
        self._timer = tell_later(self.actor_ref, _Tick(), seconds)

    def _step(self) -> float:
        """Check one chunk if the service is quiet; the seconds until the next look."""
        waited = self.quiet()
        if waited < self.idle:
            return max(0.2, self.idle - waited)
        items = ask(self.memory_store, TakeUnverified(limit=CHUNK))
        if not items:
            return POLL
        page = ask(self.memory_store, RetrieveMemories(ids=tuple(i.id for i in items), vectors=True, unverified=True))
        stored = {r.id: (r, v) for r, v in zip(page.records, page.vectors)}
        wanted = {i.id: i for i in items}
        # What changed since (forgotten, or rewritten with our own vector) needs no check.
        todo = [(i, *stored[i.id]) for i in items
                if i.id in stored and stored[i.id][1] and content_hash(stored[i.id][0].content) == i.hash]
        ours = ask(self.embedder, EmbedTexts(texts=tuple(r.content for _, r, _ in todo))).vectors if todo else []
        wrong: dict[str, list[tuple[str, list[float], float]]] = {}
        for (item, _, theirs), mine in zip(todo, ours):
            similarity = cosine(mine, theirs)
            if similarity < MIN_COSINE:
                wrong.setdefault(item.peer, []).append((item.id, mine, similarity))
        bad = {i for found in wrong.values() for i, _, _ in found}
        ask(self.memory_store, ResolveUnverified(checked=tuple(i for i in wanted if i not in bad)))
        for peer, found in wrong.items():
            fixed = ask(self.memory_store, ResolveUnverified(replaced=tuple(i for i, _, _ in found),
                                                             vectors=[v for _, v, _ in found], distrust=peer))
            self.replaced += fixed
            logger.warning("device {} sent {} vector(s) that differ from this model's (cosine as low as {:.4f}): "
                           "replaced by vectors made here; its vectors are not used any more",
                           peer or "?", len(found), min(s for _, _, s in found))
        self.checked += len(todo)
        return 0.01

