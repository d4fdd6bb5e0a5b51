"""StreamValidator: meta → batch… → done, fed frames without any I/O."""

from __future__ import annotations

import pytest

from imprint.errors import PeerStreamError, ProtocolError
from imprint.messages.records import FactRecord, MemoryRecord
from imprint.messages.wire import (
    DatasetCounts,
    Done,
    FactBatch,
    Hello,
    MemoryBatch,
    Meta,
    Request,
    Response,
    StreamError,
    decode_frame,
    encode_frame,
)
from imprint.protocol.stream import StreamFinished, StreamValidator


def memories(n: int, start: int = 0) -> tuple[MemoryRecord, ...]:
    return tuple(MemoryRecord(content=f"memory {i}") for i in range(start, start + n))


def facts(n: int) -> tuple[FactRecord, ...]:
    return tuple(FactRecord(subject=f"s{i}", predicate="p", object="o", valid_from=float(i)) for i in range(n))


def mb(seq: int, n: int = 1) -> MemoryBatch:
    return MemoryBatch(dataset="memories", seq=seq, records=memories(n))


def fb(seq: int, n: int = 1) -> FactBatch:
    return FactBatch(dataset="facts", seq=seq, records=facts(n))


HELLO = Hello(hostname="h", user="u", os="o", fingerprint="0a1b2c3d")


def meta(m: int, f: int) -> Meta:
    return Meta(datasets=DatasetCounts(memories=m, facts=f))


def started(m: int = 5, f: int = 3) -> StreamValidator:
    validator = StreamValidator()
    validator.feed(meta(m, f))
    return validator


def test_good_stream_returns_each_event_in_order():
    validator = StreamValidator()
    assert validator.announced is None
    assert validator.received == DatasetCounts(memories=0, facts=0)
    assert not validator.finished

    frames = [
        meta(5, 3),
        MemoryBatch(dataset="memories", seq=1, records=memories(2)),
        FactBatch(dataset="facts", seq=1, records=facts(1)),
        MemoryBatch(dataset="memories", seq=2, records=memories(3, start=2)),
        FactBatch(dataset="facts", seq=2, records=facts(2)),
        Done(),
    ]
    events = [validator.feed(frame) for frame in frames]

    assert events[:-1] == frames[:-1]  # the meta, then the batches to store
    assert events[-1] == StreamFinished(
        announced=DatasetCounts(memories=5, facts=3),
        received=DatasetCounts(memories=5, facts=3),
        short=DatasetCounts(memories=0, facts=0),
    )
    assert events[-1].complete
    assert validator.finished
    assert validator.announced == DatasetCounts(memories=5, facts=3)
    assert validator.received == DatasetCounts(memories=5, facts=3)


def test_good_stream_through_the_codec():
    validator = StreamValidator()
    frames = [meta(2, 0), MemoryBatch(dataset="memories", seq=1, records=memories(2)), Done()]
    events = [validator.feed(decode_frame(encode_frame(frame))) for frame in frames]
    assert isinstance(events[-1], StreamFinished) and events[-1].complete


def test_empty_stream():
    validator = started(0, 0)
    finished = validator.feed(Done())
    assert finished == StreamFinished(
        announced=DatasetCounts(memories=0, facts=0),
        received=DatasetCounts(memories=0, facts=0),
        short=DatasetCounts(memories=0, facts=0),
    )


def test_fewer_records_than_announced_is_accepted_and_reported():
    validator = started(5, 3)
    validator.feed(MemoryBatch(dataset="memories", seq=1, records=memories(4)))
    finished = validator.feed(Done())
    assert finished.received == DatasetCounts(memories=4, facts=0)
    assert finished.short == DatasetCounts(memories=1, facts=3)
    assert not finished.complete


def test_meta_vectors_flag_is_accepted():
    validator = StreamValidator()
    frame = Meta(datasets=DatasetCounts(memories=1, facts=0), vectors=True)
    assert validator.feed(frame) is frame


# Bad order and counts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([mb(1)], "memories batch before meta"),
        ([fb(1)], "facts batch before meta"),
        ([Done()], "done frame before meta"),
        ([meta(1, 1), meta(1, 1)], "second meta"),
        ([meta(5, 0), mb(2)], "memories batch has seq 2, expected 1"),
        ([meta(5, 0), mb(1), mb(1)], "seq 1, expected 2"),
        ([meta(5, 0), mb(1), mb(3)], "seq 3, expected 2"),
        ([meta(0, 5), fb(1), fb(5)], "facts batch has seq 5, expected 2"),
        # seq counts per dataset: a facts batch does not advance the memories seq
        ([meta(5, 5), fb(1), mb(2)], "seq 2, expected 1"),
        ([meta(2, 0), mb(1, 3)], "memories batch 1 brings the total to 3, more than the 2 the meta announced"),
        ([meta(3, 0), mb(1, 2), mb(2, 2)], "total to 4, more than the 3"),
        ([meta(3, 0), fb(1)], "facts batch 1 brings the total to 1, more than the 0"),
        ([meta(3, 0), MemoryBatch(dataset="memories", seq=1, records=())], "memories batch 1 is empty"),
        ([meta(0, 0), Done(), Done()], "unexpected done frame after done"),
        ([meta(1, 0), Done(), mb(1)], "unexpected memories batch frame after done"),
        ([meta(0, 0), Done(), meta(0, 0)], "unexpected meta frame after done"),
        ([meta(0, 0), Done(), StreamError(message="late")], "unexpected error frame after done"),
        ([Request.pull()], "unexpected request frame before meta"),
        ([Response.ok()], "unexpected response frame before meta"),
        ([meta(1, 0), HELLO], "unexpected HELLO frame in a stream"),
        ([meta(1, 0), Response.not_found()], "unexpected response frame in a stream"),
        ([meta(1, 0), Request.push()], "unexpected request frame in a stream"),
    ],
)
def test_bad_streams(frames, match):
    validator = StreamValidator()
    *good, bad = frames
    for frame in good:
        validator.feed(frame)
    with pytest.raises(ProtocolError, match=match) as info:
        validator.feed(bad)
    assert not isinstance(info.value, PeerStreamError)


@pytest.mark.parametrize("before", [[], [meta(2, 0)], [meta(2, 0), MemoryBatch(dataset="memories", seq=1, records=memories(1))]])
def test_peer_error_frame(before):
    validator = StreamValidator()
    for frame in before:
        validator.feed(frame)
    with pytest.raises(PeerStreamError, match="peer failed while streaming: disk full") as info:
        validator.feed(StreamError(message="disk full"))
    assert isinstance(info.value, ProtocolError)
    assert info.value.message == "disk full"


def test_nothing_is_accepted_after_a_failure():
    validator = started(5, 0)
    with pytest.raises(ProtocolError):
        validator.feed(MemoryBatch(dataset="memories", seq=2, records=memories(1)))
    # even the batch that would have been right is refused now
    with pytest.raises(ProtocolError, match="stream already failed: memories batch has seq 2"):
        validator.feed(MemoryBatch(dataset="memories", seq=1, records=memories(1)))
    with pytest.raises(ProtocolError, match="already failed"):
        validator.feed(Done())
    assert not validator.finished
    assert validator.received == DatasetCounts(memories=0, facts=0)


def test_rejected_batch_is_not_counted():
    validator = started(2, 0)
    validator.feed(MemoryBatch(dataset="memories", seq=1, records=memories(1)))
    with pytest.raises(ProtocolError):
        validator.feed(MemoryBatch(dataset="memories", seq=2, records=memories(2)))
    assert validator.received == DatasetCounts(memories=1, facts=0)
