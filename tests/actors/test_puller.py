"""Puller alone: scripted streams in, real stores behind it, fakes for the relay and the session.

The Puller is wired to a real MemoryStore (embedded Qdrant under tmp_path), a
real FactStore (SQLite under tmp_path) and the session's shared Embedder. The
relay and the session are Recorders; each frame goes in as `StreamFrame`, and
a `Ping` afterwards makes sure everything the Puller sent is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from imprint.actors.fact_store import FactStore
from imprint.actors.memory_store import MemoryStore
from imprint.actors.puller import Puller
from imprint.local import embed_and_store
from imprint.messages.records import FactRecord, MemoryRecord, Tags, finalize_memory, memory_id
from imprint.messages.session import (
    FrameHandled,
    Progress,
    SendFrame,
    StartPull,
    StreamFrame,
    TransferFailed,
    TransferFinished,
)
from imprint.messages.store import DescribeModel, PageFacts, PageMemories, Ping, StoreFacts
from imprint.messages.wire import (
    DatasetCounts,
    Done,
    FactBatch,
    MemoryBatch,
    Meta,
    Request,
    RequestBody,
    StreamError,
)

from .fakes import Recorder, stopping_new_actors

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
#: What the consumer's session tells the Puller: ask the provider, then consume.
PULL = StartPull(batch_size=250, request=True)


# ---------------------------------------------------------------- records and frames


def mem(content: str, *, timestamp: float = T0, project: str = "proj", source: str = "notes.md", id: str = "") -> MemoryRecord:
    return MemoryRecord(
        id=id,
        content=content,
        project=project,
        type="note",
        tags=Tags(lang="en", layer="l1", kind="k", domain=("d",), topics=("t1", "t2")),
        source=source,
        chunk_index=3,
        source_mtime=T0 - 5,
        timestamp=timestamp,
    )


def fact(subject: str, *, valid_from: float = T0, ended: float | None = None, obj: str = "obj") -> FactRecord:
    return FactRecord(subject=subject, predicate="likes", object=obj, valid_from=valid_from, ended=ended, source="chat")


def meta(memories: int, facts: int) -> Meta:
    return Meta(datasets=DatasetCounts(memories=memories, facts=facts))


def mb(seq: int, *records: MemoryRecord) -> MemoryBatch:
    return MemoryBatch(seq=seq, records=records)


def fb(seq: int, *records: FactRecord) -> FactBatch:
    return FactBatch(seq=seq, records=records)


def progress(dataset: str, done: int, total: int, phase: str = "pull") -> Progress:
    return Progress(phase=phase, dataset=dataset, done=done, total=total)


# ---------------------------------------------------------------- fixtures


class Rig:
    """A Puller with real stores, a fake relay and a fake session listener."""

    def __init__(self, *, embedder: pykka.ActorRef[Any], tmp_path: Path) -> None:
        dimension = embedder.ask(DescribeModel(), timeout=30).dimension
        self.embedder = embedder
        self.memory_store = MemoryStore.start(collection="imprint_test", path=tmp_path / "qdrant", dimension=dimension)
        self.fact_store = FactStore.start(path=tmp_path / "facts.db")
        assert self.memory_store.ask(Ping(), timeout=60) is True
        assert self.fact_store.ask(Ping(), timeout=60) is True
        self.relay = Recorder("relay")
        self.listener = Recorder("session")
        self.puller = Puller.start(
            relay=self.relay,
            listener=self.listener,
            embedder=embedder,
            memory_store=self.memory_store,
            fact_store=self.fact_store,
        )
        assert self.puller.ask(Ping(), timeout=30) is True

    def feed(self, *frames: Any, start: StartPull | None = PULL) -> None:
        if start is not None:
            self.puller.tell(start)
        for frame in frames:
            self.puller.tell(StreamFrame(frame=frame))
        # The Puller handles messages in order: once it answers, every frame
        # above was handled and everything it told or asked was recorded.
        assert self.puller.ask(Ping(), timeout=60) is True

    def memories(self) -> dict[str, MemoryRecord]:
        page = self.memory_store.ask(PageMemories(limit=1000), timeout=30)
        return {r.content: r for r in page.records}

    def facts(self) -> dict[str, FactRecord]:
        page = self.fact_store.ask(PageFacts(limit=1000), timeout=30)
        return {f.record.subject: f.record for f in page.facts}

    def store_locally(self, memories: tuple[MemoryRecord, ...] = (), facts: tuple[FactRecord, ...] = ()) -> None:
        if memories:
            embed_and_store(self.embedder, self.memory_store, tuple(finalize_memory(m) for m in memories))
        if facts:
            self.fact_store.ask(StoreFacts(records=facts), timeout=30)


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


@pytest.fixture
def rig(embedder: pykka.ActorRef[Any], tmp_path: Path) -> Rig:
    return Rig(embedder=embedder, tmp_path=tmp_path)


# ---------------------------------------------------------------- a good stream


@pytest.mark.parametrize("request_", [True, False], ids=["consumer-pulls", "provider-receives-push"])
def test_good_stream_reports_progress_then_stats_and_stores_every_record(rig: Rig, request_: bool) -> None:
    phase = "pull" if request_ else "push"
    alpha = mem("Alpha: the deploy key lives in the vault.", id="ffffffffffffffff")  # a peer's id is not trusted
    beta = mem("Beta: standup moved to 9:30.", timestamp=T0 + 1)
    gamma = mem("Gamma: the cat's name is Miso.", timestamp=T0 + 2, project="home")
    f1, f2, f3 = fact("ana"), fact("bob", ended=T0 + 50), fact("cid", valid_from=T0 - 100)

    rig.feed(
        meta(3, 3),
        mb(1, alpha, beta),
        mb(2, gamma),
        fb(1, f1, f2),
        fb(2, f3),
        Done(),
        start=StartPull(batch_size=250, request=request_),
    )

    assert rig.listener.messages == [
        progress("memories", 0, 3, phase),
        progress("facts", 0, 3, phase),
        progress("memories", 2, 3, phase),
        progress("memories", 3, 3, phase),
        progress("facts", 2, 3, phase),
        progress("facts", 3, 3, phase),
        TransferFinished(
            phase=phase,
            stats={"memories": {"inserted": 3, "skipped": 0}, "facts": {"inserted": 3, "skipped": 0}},
        ),
    ]
    request = [SendFrame(frame=Request(method="GET", path="/sync/pull", body=RequestBody(batch_size=250)))]
    # One credit back per batch frame, none for meta or done.
    assert rig.relay.messages == (request if request_ else []) + [FrameHandled()] * 4

    stored = rig.memories()
    assert stored == {r.content: finalize_memory(r) for r in (alpha, beta, gamma)}
    assert stored[alpha.content].id == memory_id("proj", "notes.md", alpha.content) != alpha.id
    assert rig.facts() == {"ana": f1, "bob": f2, "cid": f3}


def test_the_same_stream_again_inserts_nothing(rig: Rig) -> None:
    frames = (meta(2, 1), mb(1, mem("one"), mem("two")), fb(1, fact("ana")), Done())
    rig.feed(*frames)
    first = rig.listener.messages[-1]
    rig.puller.stop()
    rig.listener = Recorder("session")
    rig.puller = Puller.start(
        relay=rig.relay, listener=rig.listener, embedder=rig.embedder,
        memory_store=rig.memory_store, fact_store=rig.fact_store,
    )
    rig.feed(*frames)

    assert first == TransferFinished(phase="pull", stats={"memories": {"inserted": 2, "skipped": 0}, "facts": {"inserted": 1, "skipped": 0}})
    assert rig.listener.messages[-1] == TransferFinished(
        phase="pull", stats={"memories": {"inserted": 0, "skipped": 2}, "facts": {"inserted": 0, "skipped": 1}}
    )
    assert len(rig.memories()) == 2 and len(rig.facts()) == 1


# ---------------------------------------------------------------- bad streams

ALPHA = mem("alpha, from a whole earlier batch")
ANA = fact("ana")
#: Fed after every bad stream: a batch that would otherwise be acceptable.
LATE = mb(2, mem("late: anything after a failure is ignored"))

BAD_STREAMS = {
    "batch-before-meta": (
        [mb(1, mem("bad: batch before meta"))],
        [],
        "memories batch before meta",
    ),
    "seq-gap": (
        [meta(3, 0), mb(1, ALPHA), mb(3, mem("bad: seq 3 after 1"))],
        [progress("memories", 0, 3), progress("facts", 0, 0), progress("memories", 1, 3)],
        "memories batch has seq 3, expected 2",
    ),
    "seq-repeat": (
        [meta(3, 0), mb(1, ALPHA), mb(1, mem("bad: seq 1 again"))],
        [progress("memories", 0, 3), progress("facts", 0, 0), progress("memories", 1, 3)],
        "memories batch has seq 1, expected 2",
    ),
    "more-memories-than-announced": (
        # Only one of the two would fit: neither may be stored.
        [meta(2, 0), mb(1, ALPHA), mb(2, mem("bad: one too"), mem("bad: many"))],
        [progress("memories", 0, 2), progress("facts", 0, 0), progress("memories", 1, 2)],
        "more than the 2 the meta announced",
    ),
    "more-facts-than-announced": (
        [meta(0, 1), fb(1, ANA), fb(2, fact("bad: extra fact"))],
        [progress("memories", 0, 0), progress("facts", 0, 1), progress("facts", 1, 1)],
        "more than the 1 the meta announced",
    ),
    "peer-error": (
        [meta(5, 5), mb(1, ALPHA), fb(1, ANA), StreamError(message="disk full on the provider")],
        [progress("memories", 0, 5), progress("facts", 0, 5), progress("memories", 1, 5), progress("facts", 1, 5)],
        "peer failed while streaming: disk full on the provider",
    ),
    "frame-after-done": (
        [meta(1, 1), mb(1, ALPHA), fb(1, ANA), Done(), mb(2, mem("bad: after done"))],
        [
            progress("memories", 0, 1),
            progress("facts", 0, 1),
            progress("memories", 1, 1),
            progress("facts", 1, 1),
            TransferFinished(phase="pull", stats={"memories": {"inserted": 1, "skipped": 0}, "facts": {"inserted": 1, "skipped": 0}}),
        ],
        "after done",
    ),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_stream_fails_once_and_stores_only_the_whole_batches_before_it(rig: Rig, name: str) -> None:
    frames, expected_before, fragment = BAD_STREAMS[name]
    rig.feed(*frames, LATE)

    events = rig.listener.messages
    assert events[:-1] == expected_before
    failed = events[-1]
    assert isinstance(failed, TransferFailed) and failed.phase == "pull"
    assert fragment in failed.message

    # Batches before the bad frame stay; nothing of the bad frame, nor after it.
    earlier_memories = {ALPHA.content} if any(ALPHA in getattr(f, "records", ()) for f in frames) else set()
    earlier_facts = {"ana"} if any(ANA in getattr(f, "records", ()) for f in frames) else set()
    assert set(rig.memories()) == earlier_memories
    assert set(rig.facts()) == earlier_facts

    # A credit for every batch frame, the bad one and the ignored one included.
    batches = sum(isinstance(f, (MemoryBatch, FactBatch)) for f in (*frames, LATE))
    assert rig.relay.of_type(FrameHandled) == [FrameHandled()] * batches


def test_a_stream_frame_before_start_pull_fails(rig: Rig) -> None:
    rig.feed(meta(1, 0), mb(1, mem("bad: nobody asked")), start=None)

    assert [type(m) for m in rig.listener.messages] == [TransferFailed]
    assert "no transfer was requested" in rig.listener.messages[0].message
    assert rig.memories() == {}
    assert rig.relay.messages == [FrameHandled()]


# ---------------------------------------------------------------- merge rules


def test_imported_memories_keep_their_timestamp(rig: Rig) -> None:
    old = mem("written long ago", timestamp=1_234_567_890.25)
    undated = mem("sent without a timestamp", timestamp=0.0)
    before = time.time()
    rig.feed(meta(2, 0), mb(1, old, undated), Done())
    after = time.time()

    stored = rig.memories()
    assert stored[old.content].timestamp == 1_234_567_890.25
    assert before <= stored[undated.content].timestamp <= after


def test_a_memory_id_collision_keeps_the_earliest_timestamp(rig: Rig) -> None:
    rig.store_locally(memories=(mem("ours is later", timestamp=2000.0), mem("ours is earlier", timestamp=1000.0)))

    rig.feed(
        meta(4, 0),
        mb(1, mem("ours is later", timestamp=1000.0), mem("ours is earlier", timestamp=2000.0)),
        # The same memory twice in one batch: the earlier copy wins here too.
        mb(2, mem("twice in a batch", timestamp=3000.0), mem("twice in a batch", timestamp=1500.0)),
        Done(),
    )

    stored = rig.memories()
    assert {c: r.timestamp for c, r in stored.items()} == {
        "ours is later": 1000.0,
        "ours is earlier": 1000.0,
        "twice in a batch": 1500.0,
    }
    assert rig.listener.messages[-1] == TransferFinished(
        phase="pull", stats={"memories": {"inserted": 1, "skipped": 3}, "facts": {"inserted": 0, "skipped": 0}}
    )


def test_an_incoming_end_time_ends_our_open_copy_and_nothing_else(rig: Rig) -> None:
    rig.store_locally(
        facts=(
            fact("open-here", valid_from=100.0),
            fact("ended-here", valid_from=200.0, ended=500.0),
            fact("ended-both", valid_from=300.0, ended=500.0),
        )
    )

    rig.feed(
        meta(0, 4),
        fb(
            1,
            fact("open-here", valid_from=100.0, ended=900.0),  # ends ours
            fact("ended-here", valid_from=200.0),  # an open copy does not reopen ours
            fact("ended-both", valid_from=300.0, ended=700.0),  # ours ended first: kept
            fact("new", valid_from=400.0, ended=300.0),
        ),
        Done(),
    )

    assert {s: f.ended for s, f in rig.facts().items()} == {
        "open-here": 900.0,
        "ended-here": 500.0,
        "ended-both": 500.0,
        "new": 300.0,
    }
    assert rig.listener.messages[-1] == TransferFinished(
        phase="pull",
        stats={"memories": {"inserted": 0, "skipped": 0}, "facts": {"inserted": 1, "skipped": 3, "ended": 1}},
    )
