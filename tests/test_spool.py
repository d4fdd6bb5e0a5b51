"""The receive spool alone: batches in, in order, out; bounded; read-only reads create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from imprint.errors import SpoolFullError
from imprint.messages.records import FactRecord, MemoryRecord, finalize_memory
from imprint.spool import Pending, Spool, parse_size, read_pending


def mem(content: str) -> MemoryRecord:
    return finalize_memory(MemoryRecord(content=content, timestamp=1.0))


def test_batches_come_back_whole_and_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.open_stream("a")
    spool.append("a", "memories", (mem("one"), mem("two")))
    spool.append("a", "facts", (FactRecord(subject="s", predicate="p", object="o", valid_from=1.0),))
    assert spool.pending() == Pending(memories=2, facts=1, bytes=spool.pending().bytes)
    first = spool.next_batch()
    assert (first.stream, first.dataset, [r.content for r in first.records]) == ("a", "memories", ["one", "two"])
    assert spool.next_batch() == first  # nothing is taken until it is removed
    spool.remove(first.id)
    assert spool.next_batch().dataset == "facts"
    spool.close()
    # A new connection (the next command) sees the same.
    again = Spool(tmp_path / "spool.db")
    assert again.pending().facts == 1 and again.pending().memories == 0
    again.close()


def test_a_stream_is_done_once_complete_and_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.open_stream("a")
    batch_id = spool.append("a", "memories", (mem("one"),))
    spool.complete_stream("a")
    assert not spool.stream_done("a")
    spool.remove(batch_id)
    assert spool.stream_done("a")
    spool.forget_stream("a")
    assert not spool.stream_done("a")


def test_the_spool_is_bounded_and_keeps_what_fit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1000)
    spool.append("a", "memories", (mem("small"),))
    with pytest.raises(SpoolFullError, match="receive spool is full.*--spool-limit"):
        spool.append("a", "memories", (mem("x" * 2000),))
    assert spool.pending().memories == 1


def test_pending_is_read_without_creating_anything(tmp_path: Path) -> None:
    assert read_pending(tmp_path / "nothing.db") == Pending()
    assert not (tmp_path / "nothing.db").exists()
    spool = Spool(tmp_path / "spool.db")
    spool.append("a", "memories", (mem("one"),))
    spool.close()
    assert read_pending(tmp_path / "spool.db").memories == 1


@pytest.mark.parametrize(("text", "size"), [("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("1.5k", 1536),
                                            ("4GiB", 4 * 1024**3), ("1048576", 1048576)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_batch_that_would_leave_the_disk_below_its_floor_is_refused_and_nothing_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imprint.errors import ConfigError, DiskFullError
    from imprint.messages.records import FactRecord

    spool = Spool(tmp_path / "spool.db")
    facts = (FactRecord(subject="a", predicate="b", object="c", valid_from=1.0),)
    spool.open_stream("s")
    monkeypatch.setenv("IMPRINT_MIN_DISK_FREE", "99.999%")  # as if the disk were all but full
    with pytest.raises(DiskFullError, match=r"disk nearly full: [\d,]+ MB free at .*, [\d,]+ MB needed"):
        spool.append("s", "facts", facts)
    assert spool.pending().total == 0
    monkeypatch.setenv("IMPRINT_MIN_DISK_FREE", "0")
    spool.append("s", "facts", facts)
    assert spool.pending().facts == 1
    monkeypatch.setenv("IMPRINT_MIN_DISK_FREE", "lots")
    with pytest.raises(ConfigError, match="IMPRINT_MIN_DISK_FREE"):
        spool.append("s", "facts", facts)
    spool.close()


def test_memory_batches_with_vectors_are_joined_up_to_a_size_within_one_stream_and_model(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for stream in ("a", "b"):
        spool.open_stream(stream)
    v = b"\x00\x00\x80\x3f" * 4

    def add(stream: str, *texts: str, vectors: bool = True, model: str = "fp") -> int:
        records = tuple(mem(t) for t in texts)
        return spool.append(stream, "memories", records, vectors=(v,) * len(records) if vectors else (), model=model)

    one = add("a", "1", "2")
    two = add("a", "3", "4")
    three = add("a", "5", "6")  # past the size asked for
    four = add("b", "7")  # another stream
    five = add("b", "8", vectors=False)  # no vectors: never joined
    six = add("b", "9", model="other")

    joined = spool.next_batch(join=4)
    assert joined.batch_ids == (one, two) and [r.content for r in joined.records] == ["1", "2", "3", "4"]
    assert joined.vectors == (v,) * 4 and joined.model == "fp" and joined.stream == "a"
    spool.remove(joined.batch_ids)
    assert spool.next_batch(join=4).batch_ids == (three,)  # stops at the stream's end
    spool.remove(three)
    assert spool.next_batch(join=4).batch_ids == (four,)  # stops before a batch without vectors
    spool.remove(four)
    assert spool.next_batch(join=4).batch_ids == (five,)
    spool.remove(five)
    assert spool.next_batch(join=4).batch_ids == (six,)
    assert spool.next_batch().batch_ids == (six,)  # without join: one batch, as always
    spool.close()
