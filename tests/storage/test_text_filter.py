"""The memories' word filter (the dashboard's Memories tab): answered by the content's full-text
index in Qdrant Edge, which new stores have and older ones get once on open."""

from __future__ import annotations

from pathlib import Path

from imprint.messages.records import MemoryRecord, finalize_memory
from imprint.messages.store import MemoryFilter
from imprint.storage import StoredMemory, StoreMeta
from imprint.storage.edge import TEXT_INDEX_MARK, EdgeBackend

TEXTS = ["The staging database listens on port 5433", "Deploys need AWS credentials from the vault",
         "the DATABASE replica lags in staging", "Lunch on Fridays"]


def _store(path: Path) -> EdgeBackend:
    backend = EdgeBackend(path)
    backend.create(StoreMeta(dimension=4, model="m", model_name="m"))
    backend.upsert([StoredMemory(record=finalize_memory(MemoryRecord(content=t, timestamp=1_700_000_000.0 + i)),
                                 vector=[1.0, 0.0, 0.0, float(i)], model="m") for i, t in enumerate(TEXTS)])
    return backend


def contents(backend: EdgeBackend, text: str, *, oldest_first: bool = False) -> list[str]:
    return [r.content for r in backend.newest(MemoryFilter(text=text), 0, 50, oldest_first)]


def test_every_word_in_any_order_and_case(tmp_path: Path) -> None:
    backend = _store(tmp_path / "m")
    assert (tmp_path / "m" / TEXT_INDEX_MARK).exists()
    assert contents(backend, "staging database", oldest_first=True) == [TEXTS[0], TEXTS[2]]
    assert backend.count(MemoryFilter(text="database staging")) == 2
    assert contents(backend, "5433") == [TEXTS[0]]
    assert contents(backend, "credentials vault") == [TEXTS[1]]
    assert contents(backend, "staging lunch") == [] and backend.count(MemoryFilter(text="zebra")) == 0
    # With the other filters and a time range.
    assert backend.count(MemoryFilter(text="staging", after=1_700_000_001.0)) == 1
    backend.close()


def test_a_store_made_before_the_index_gets_it_once(tmp_path: Path) -> None:
    backend = _store(tmp_path / "m")
    backend.close()
    (tmp_path / "m" / TEXT_INDEX_MARK).unlink()  # as a store of the previous version has no mark
    reopened = EdgeBackend(tmp_path / "m")
    reopened.ensure_text_index()
    assert (tmp_path / "m" / TEXT_INDEX_MARK).exists()
    assert contents(reopened, "replica") == [TEXTS[2]]
    reopened.ensure_text_index()  # once: the mark says it is there
    reopened.close()
