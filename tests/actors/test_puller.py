"""Puller alone: scripted streams in, a real spool behind it, fakes for the relay,
the session and the Storer.

Each frame goes in as `StreamFrame`; a `Ping` afterwards makes sure everything
the Puller sent is recorded. What it kept is read back from the spool.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from imprint.actors.puller import Puller
from imprint.messages.records import (
    FactRecord,
    MemoryRecord,
    Tags,
    finalize_memory,
    memory_id,
)
from imprint.messages.session import (
    BatchSpooled,
    FrameHandled,
    SendFrame,
    StartPull,
    StreamFrame,
    StreamSpooled,
    TransferFailed,
    Wake,
)
from imprint.messages.store import Ping
from imprint.messages.wire import (
    DatasetCounts,
    Done,
    FactBatch,
    MemoryBatch,
    Meta,
    Request,
    StreamError,
)
from imprint.spool import Spool

from .fakes import Recorder, stopping_new_actors

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
STREAM = "s1"
#: What the consumer's session tells the Puller: ask the provider, then receive.
PULL = StartPull(stream=STREAM, batch_size=250, request=True)


def mem(content: str, *, timestamp: float = T0, project: str = "proj", id: str = "") -> MemoryRecord:
    return MemoryRecord(id=id, content=content, project=project, type="note", source="notes.md", timestamp=timestamp,
                        tags=Tags(lang="en", domain=("d",)))


def fact(subject: str, *, ended: float | None = None) -> FactRecord:
    return FactRecord(subject=subject, predicate="likes", object="obj", valid_from=T0, ended=ended, source="chat")


def meta(memories: int, facts: int) -> Meta:
    return Meta(datasets=DatasetCounts(memories=memories, facts=facts))


def mb(seq: int, *records: MemoryRecord, refused: int = 0) -> MemoryBatch:
    return MemoryBatch(dataset="memories", seq=seq, records=records, refused=refused,
                       refusals=tuple(f"reason {n}" for n in range(refused)))


def fb(seq: int, *records: FactRecord) -> FactBatch:
    return FactBatch(dataset="facts", seq=seq, records=records)


def spooled(dataset: str, received: int, refused: int = 0) -> BatchSpooled:
    return BatchSpooled(stream=STREAM, dataset=dataset, received=received, refused=refused,
                        refusals=tuple(f"reason {n}" for n in range(refused)))


class Rig:
    """A Puller with a real spool, a fake relay, session and Storer."""

    def __init__(self, tmp_path: Path, *, max_bytes: int = 2**30) -> None:
        self.spool_path = tmp_path / "spool.db"
        self.relay = Recorder("relay")
        self.listener = Recorder("session")
        self.storer = Recorder("storer")
        self.puller = Puller.start(relay=self.relay, listener=self.listener, storer=self.storer,
                                   spool_path=self.spool_path, spool_max_bytes=max_bytes)
        assert self.puller.ask(Ping(), timeout=30) is True

    def feed(self, *frames: Any, start: StartPull | None = PULL) -> None:
        if start is not None:
            self.puller.tell(start)
        for frame in frames:
            self.puller.tell(StreamFrame(frame=frame))
        assert self.puller.ask(Ping(), timeout=30) is True

    def spool(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Every batch in the spool, in order, as (dataset, records)."""
        spool = Spool(self.spool_path)
        try:
            batches = []
            while (batch := spool.next_batch()) is not None:
                batches.append((batch.dataset, batch.records))
                spool.remove(batch.id)
            return batches
        finally:
            spool.close()


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# ---------------------------------------------------------------- a good stream


@pytest.mark.parametrize("request_", [True, False], ids=["consumer-pulls", "provider-receives-push"])
def test_every_batch_goes_to_the_spool_as_it_arrives(rig: Rig, request_: bool) -> None:
    alpha = mem("Alpha: the deploy key lives in the vault.", id="ffffffffffffffff")  # a peer's id is not trusted
    beta = mem("Beta: standup moved to 9:30.", timestamp=T0 + 1)
    f1, f2 = fact("ana"), fact("bob", ended=T0 + 50)

    rig.feed(meta(2, 2), mb(1, alpha, beta), fb(1, f1), fb(2, f2), Done(),
             start=StartPull(stream=STREAM, batch_size=250, request=request_))

    assert rig.listener.messages == [
        spooled("memories", 2), spooled("facts", 1), spooled("facts", 1), StreamSpooled(stream=STREAM),
    ]
    request = [SendFrame(frame=Request.pull(batch_size=250))] if request_ else []
    # One credit back per batch frame, as soon as it is in the spool; none for meta or done.
    assert rig.relay.messages == request + [FrameHandled()] * 3
    assert rig.storer.messages == [Wake()] * 4  # each batch, and the end of the stream
    assert rig.spool() == [
        ("memories", (finalize_memory(alpha), finalize_memory(beta))),
        ("facts", (f1,)),
        ("facts", (f2,)),
    ]
    assert finalize_memory(alpha).id == memory_id("proj", "notes.md", alpha.content) != alpha.id


def test_refused_records_are_counted_and_never_spooled(rig: Rig) -> None:
    keep = mem("kept")
    rig.feed(meta(4, 0), mb(1, keep, refused=2), mb(2, refused=1), Done())

    assert rig.listener.messages == [
        spooled("memories", 3, refused=2), spooled("memories", 1, refused=1), StreamSpooled(stream=STREAM),
    ]
    assert rig.spool() == [("memories", (finalize_memory(keep),))]
    assert rig.relay.messages[-2:] == [FrameHandled(), FrameHandled()]


def test_the_stream_is_complete_in_the_spool_only_after_done(rig: Rig) -> None:
    rig.feed(meta(1, 0), mb(1, mem("one")))
    spool = Spool(rig.spool_path)
    try:
        batch = spool.next_batch()
        spool.remove(batch.id)
        assert not spool.stream_done(STREAM)  # all stored, but the peer has not said done
        rig.feed(Done(), start=None)
        assert spool.stream_done(STREAM)
    finally:
        spool.close()


# ---------------------------------------------------------------- bad streams

ALPHA = mem("alpha, from a whole earlier batch")
ANA = fact("ana")
#: Fed after every bad stream: a batch that would otherwise be acceptable.
LATE = mb(2, mem("late: anything after a failure is ignored"))

BAD_STREAMS = {
    "batch-before-meta": ([mb(1, mem("bad: batch before meta"))], [], "memories batch before meta"),
    "seq-gap": (
        [meta(3, 0), mb(1, ALPHA), mb(3, mem("bad: seq 3 after 1"))],
        [spooled("memories", 1)],
        "memories batch has seq 3, expected 2",
    ),
    "seq-repeat": (
        [meta(3, 0), mb(1, ALPHA), mb(1, mem("bad: seq 1 again"))],
        [spooled("memories", 1)],
        "memories batch has seq 1, expected 2",
    ),
    "more-memories-than-announced": (
        # Only one of the two would fit: neither may be kept.
        [meta(2, 0), mb(1, ALPHA), mb(2, mem("bad: one too"), mem("bad: many"))],
        [spooled("memories", 1)],
        "more than the 2 the meta announced",
    ),
    "refused-records-count-towards-the-announced": (
        [meta(2, 0), mb(1, ALPHA), mb(2, mem("bad: over"), refused=1)],
        [spooled("memories", 1)],
        "more than the 2 the meta announced",
    ),
    "more-facts-than-announced": (
        [meta(0, 1), fb(1, ANA), fb(2, fact("bad: extra fact"))],
        [spooled("facts", 1)],
        "more than the 1 the meta announced",
    ),
    "peer-error": (
        [meta(5, 5), mb(1, ALPHA), fb(1, ANA), StreamError(message="disk full on the provider")],
        [spooled("memories", 1), spooled("facts", 1)],
        "peer failed while streaming: disk full on the provider",
    ),
    "frame-after-done": (
        [meta(1, 1), mb(1, ALPHA), fb(1, ANA), Done(), mb(2, mem("bad: after done"))],
        [spooled("memories", 1), spooled("facts", 1), StreamSpooled(stream=STREAM)],
        "after done",
    ),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_stream_fails_once_and_keeps_only_the_whole_batches_before_it(rig: Rig, name: str) -> None:
    frames, expected_before, fragment = BAD_STREAMS[name]
    rig.feed(*frames, LATE)

    events = rig.listener.messages
    assert events[:-1] == expected_before
    failed = events[-1]
    assert isinstance(failed, TransferFailed)
    assert fragment in failed.message

    # Batches before the bad frame stay; nothing of the bad frame, nor after it.
    kept = [records for _, records in rig.spool()]
    earlier = [(finalize_memory(ALPHA),)] if any(ALPHA in getattr(f, "records", ()) for f in frames) else []
    earlier += [(ANA,)] if any(ANA in getattr(f, "records", ()) for f in frames) else []
    assert kept == earlier

    # A credit for every batch frame, the bad one and the ignored one included.
    batches = sum(isinstance(f, (MemoryBatch, FactBatch)) for f in (*frames, LATE))
    assert rig.relay.of_type(FrameHandled) == [FrameHandled()] * batches


def test_a_stream_frame_before_start_pull_fails(rig: Rig) -> None:
    rig.feed(meta(1, 0), mb(1, mem("bad: nobody asked")), start=None)

    assert [type(m) for m in rig.listener.messages] == [TransferFailed]
    assert "no transfer was requested" in rig.listener.messages[0].message
    assert rig.relay.messages == [FrameHandled()]


def test_a_full_spool_fails_the_transfer_with_a_clear_message(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_bytes=200)
    rig.feed(meta(2, 0), mb(1, mem("small")), mb(2, mem("x" * 500)))

    [first, failed] = rig.listener.messages
    assert first == spooled("memories", 1)
    assert isinstance(failed, TransferFailed)
    assert "receive spool is full" in failed.message and "--spool-limit" in failed.message
    assert [len(records) for _, records in rig.spool()] == [1]


def test_asked_to_count_it_tells_how_many_of_each_batch_are_already_here(tmp_path: Path) -> None:
    """What an early answer to a plaintext push says: new vs already here, by id (real stores)."""
    from imprint.actors.fact_store import FactStore
    from imprint.actors.memory_store import MemoryStore
    from imprint.messages.store import StoreFacts, StoreMemories

    memories = MemoryStore.start(collection="c", path=tmp_path / "edge", dimension=4, model="fp", model_name="m")
    facts = FactStore.start(path=tmp_path / "facts.db")
    held, new = finalize_memory(mem("held here")), finalize_memory(mem("new here"))
    memories.ask(StoreMemories(records=(held,), vectors=[[1.0, 0.0, 0.0, 0.0]]), timeout=60)
    facts.ask(StoreFacts(records=(fact("held"),)), timeout=30)
    listener = Recorder("session")
    puller = Puller.start(relay=Recorder("relay"), listener=listener, storer=Recorder("storer"),
                          spool_path=tmp_path / "spool.db", memory_store=memories, fact_store=facts)
    puller.tell(StartPull(stream=STREAM, count_known=True))
    # another copy of a held memory (same id, another time) is "here" too: by id
    edited = msgspec.structs.replace(held, timestamp=T0 + 5)
    for frame in (meta(3, 2), mb(1, held, new, edited), fb(1, fact("held"), fact("new")), Done()):
        puller.tell(StreamFrame(frame=frame))
    assert puller.ask(Ping(), timeout=30) is True
    said = [m for m in listener.messages if isinstance(m, BatchSpooled)]
    assert [(s.dataset, s.received, s.already) for s in said] == [("memories", 3, 2), ("facts", 2, 1)]

    # without being asked it counts nothing (and asks no store)
    listener = Recorder("session")
    puller = Puller.start(relay=Recorder("relay"), listener=listener, storer=Recorder("storer"),
                          spool_path=tmp_path / "spool2.db")
    puller.tell(StartPull(stream=STREAM, count_known=True))
    for frame in (meta(1, 0), mb(1, held), Done()):
        puller.tell(StreamFrame(frame=frame))
    assert puller.ask(Ping(), timeout=30) is True
    assert [s.already for s in listener.messages if isinstance(s, BatchSpooled)] == [0]
