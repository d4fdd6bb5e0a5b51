"""Inventory alone: real stores under tmp_path, a queue for the session it tells."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pykka
import pytest

from imprint.actors.base import QueueListener
from imprint.actors.fact_store import FactStore
from imprint.actors.inventory import Inventory
from imprint.actors.memory_store import MemoryStore
from imprint.messages.records import FactRecord, MemoryRecord, Tombstone, fact_key, finalize_memory
from imprint.messages.session import ItemsLoaded, StageFailed, SummaryLoaded, TombstonesStored
from imprint.messages.store import CountFacts, Ping, StoreFacts, StoreMemories
from imprint.protocol.flows import ApplyTombstones, LoadItems, LoadSummary

pytestmark = pytest.mark.timeout(60)

StartActor = Callable[..., pykka.ActorRef[Any]]
DIM = 4


@pytest.fixture
def stores(start_actor: StartActor, tmp_path: Path) -> tuple[pykka.ActorRef[Any], pykka.ActorRef[Any]]:
    memories = start_actor(MemoryStore, collection="imprint_default", path=tmp_path / "memories", dimension=DIM,
                           model="0123456789abcdef", model_name="test-model", forgotten_path=tmp_path / "forgotten.db")
    facts = start_actor(FactStore, path=tmp_path / "facts.db")
    assert memories.ask(Ping(), timeout=30) is True and facts.ask(Ping(), timeout=30) is True
    records = tuple(finalize_memory(MemoryRecord(content=f"memory {i}", timestamp=1_700_000_000.0 + i)) for i in range(3))
    memories.ask(StoreMemories(records=records, vectors=[[1.0, 0.0, 0.0, float(i)] for i in range(3)]), timeout=30)
    facts.ask(StoreFacts(records=(FactRecord(subject="a", predicate="b", object="c", valid_from=100.0),
                                  FactRecord(subject="d", predicate="e", object="f", valid_from=200.0))), timeout=30)
    return memories, facts


def test_it_tells_the_summary_the_items_and_what_tombstones_removed(start_actor: StartActor, stores: Any) -> None:
    memories, facts = stores
    listener = QueueListener()
    inventory = start_actor(Inventory, memory_store=memories, fact_store=facts, listener=listener)
    inventory.tell(LoadSummary())
    summary = listener.get(timeout=30)
    assert isinstance(summary, SummaryLoaded) and summary.count == 5
    inventory.tell(LoadItems())
    items = listener.get(timeout=30)
    assert isinstance(items, ItemsLoaded) and len(items.items) == 5
    gone = Tombstone(dataset="facts", key=fact_key(("a", "b", "c", 100.0)), deleted_at=150.0)
    inventory.tell(ApplyTombstones(tombstones=(gone,)))
    assert listener.get(timeout=30) == TombstonesStored(forgotten=1)
    assert facts.ask(CountFacts(), timeout=30).active == 1


def test_a_store_that_is_gone_is_a_stage_failure_told_at_once(start_actor: StartActor, stores: Any) -> None:
    memories, facts = stores
    listener = QueueListener()
    inventory = start_actor(Inventory, memory_store=memories, fact_store=facts, listener=listener)
    memories.stop(timeout=30)
    inventory.tell(LoadSummary())
    failed = listener.get(timeout=30)
    assert isinstance(failed, StageFailed) and failed.stage == "Inventory" and "MemoryStore" in failed.message
