"""The memories' text filter (the dashboard's Memories tab): contents holding the text as typed,
with the other filters, a time range and either order."""

from __future__ import annotations

from pathlib import Path

from imprint.messages.records import MemoryRecord, finalize_memory
from imprint.messages.store import MemoryFilter
from imprint.storage import StoredMemory, StoreMeta
from imprint.storage.edge import EdgeBackend

TEXTS = ["The staging database listens on port 5433", "Deploys need AWS credentials from the vault",
         "the staging database replica lags", "Lunch on Fridays"]


def test_contents_holding_the_text_newest_or_oldest_first(tmp_path: Path) -> None:
    backend = EdgeBackend(tmp_path / "m")
    backend.create(StoreMeta(dimension=4, model="m", model_name="m"))
    backend.upsert([StoredMemory(record=finalize_memory(MemoryRecord(content=t, timestamp=1_700_000_000.0 + i)),
                                 vector=[1.0, 0.0, 0.0, float(i)], model="m") for i, t in enumerate(TEXTS)])
    oldest = [r.content for r in backend.newest(MemoryFilter(text="staging database"), 0, 50, True)]
    newest = [r.content for r in backend.newest(MemoryFilter(text="staging database"), 0, 50)]
    assert oldest == [TEXTS[0], TEXTS[2]] and newest == oldest[::-1]
    assert backend.count(MemoryFilter(text="5433")) == 1
    assert backend.count(MemoryFilter(text="database staging")) == 0  # as typed, not any order
    assert backend.count(MemoryFilter(text="staging", after=1_700_000_001.0)) == 1
    assert backend.count(MemoryFilter(text="staging", before=1_700_000_001.0)) == 1
    backend.close()
