"""Inventory: what reconciliation reads from and writes to both stores, as a stage.

Summing, listing every item's version and recording the peer's tombstones
are long store asks (up to minutes at 100k). Made here, on this actor's
thread, they leave the session's loop free to see a cancel or a dead peer;
each answer goes up to the session as the event its flow waits for.
"""

from __future__ import annotations

from typing import Any

import pykka

from imprint.actors.base import ImprintActor, ask
from imprint.messages.session import (
    ItemsLoaded,
    Listener,
    SummaryLoaded,
    TombstonesStored,
)
from imprint.messages.store import ListVersions, StoreTombstones, SummarizeVersions
from imprint.protocol.flows import ApplyTombstones, LoadItems, LoadSummary
from imprint.protocol.items import items_of
from imprint.summaries import combine

#: Seconds one store may take to answer a whole-store read or write.
STORE_TIMEOUT = 600.0


class Inventory(ImprintActor):
    """Answers LoadSummary, LoadItems and ApplyTombstones by telling `listener` their results.

    Args:
        memory_store, fact_store: the stores of this side.
        listener: the session (also told StageFailed if a read fails).
    """

    def __init__(self, *, memory_store: pykka.ActorRef[Any], fact_store: pykka.ActorRef[Any], listener: Listener) -> None:
        super().__init__(boss=listener)
        self.memory_store = memory_store
        self.fact_store = fact_store
        self.listener = listener

    def handle(self, message: Any) -> Any:
        match message:
            case LoadSummary():
                memories = ask(self.memory_store, SummarizeVersions(), timeout=STORE_TIMEOUT)
                facts = ask(self.fact_store, SummarizeVersions(), timeout=STORE_TIMEOUT)
                count, total = combine((memories.count, memories.total), (facts.count, facts.total))
                self.listener.tell(SummaryLoaded(count=count, total=total))
            case LoadItems():
                memories = ask(self.memory_store, ListVersions(), timeout=STORE_TIMEOUT)
                facts = ask(self.fact_store, ListVersions(), timeout=STORE_TIMEOUT)
                items = items_of(memories.records, facts.records, memories.tombstones, facts.tombstones)
                self.listener.tell(ItemsLoaded(items=tuple(items)))
            case ApplyTombstones(tombstones=tombstones, peer=peer):
                forgotten = 0
                for dataset, store in (("memories", self.memory_store), ("facts", self.fact_store)):
                    mine = tuple(t for t in tombstones if t.dataset == dataset)
                    if mine:
                        forgotten += ask(store, StoreTombstones(tombstones=mine, peer=peer),
                                         timeout=STORE_TIMEOUT).forgotten
                self.listener.tell(TombstonesStored(forgotten=forgotten))
            case _:
                return super().handle(message)
        return None
