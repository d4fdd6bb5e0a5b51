"""The two role flows alone: events in, exact commands out (magic-wormhole's
test_machines pattern). No actors, no sockets, a fake clock."""

from __future__ import annotations

import pytest

from imprint.errors import INTERRUPTED, ProtocolError, RejectedError, SyncError
from imprint.messages import events
from imprint.messages.session import (
    ApprovalRequired,
    AutoAccepted,
    BatchSpooled,
    BatchStored,
    FrameReceived,
    HandshakeSucceeded,
    HelloSent,
    JoinDecision,
    PeerArrived,
    PeerInfo,
    StartPush,
    StreamSpooled,
    StreamStored,
    TransferFinished,
)
from imprint.messages.store import StoreResult
from imprint.messages.wire import (
    Ack,
    DatasetCounts,
    Done,
    FactStats,
    MemoryBatch,
    MemoryStats,
    Meta,
    Request,
    Response,
    StreamError,
    SyncStats,
)
from imprint.protocol.flows import (
    DECLINED,
    AskToJoin,
    ConsumerFlow,
    Fail,
    Finish,
    ProviderFlow,
    Push,
    Receive,
    Report,
    Send,
    ToPuller,
)

PEER = PeerInfo(hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d")
CODE = "4f2a-91c0-7d3b"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counts(memories: int, facts: int) -> DatasetCounts:
    return DatasetCounts(memories=memories, facts=facts)


def progress(direction: str, dataset: str, done: int, total: int, confirmed: bool = True) -> Report:
    return Report(event=events.Progress(direction=direction, dataset=dataset, done=done, total=total,
                                        confirmed=confirmed))


def only(commands: list, kind: type) -> list:
    return [c for c in commands if isinstance(c, kind)]


# ---------------------------------------------------------------- provider


def test_provider_from_approval_to_stats_encrypted() -> None:
    clock = Clock()
    flow = ProviderFlow(mode="encrypted", clock=clock)
    assert flow.wait == "peer"
    assert flow.handle(PeerArrived()) == [] and flow.wait == ""
    assert flow.handle(ApprovalRequired(peer=PEER)) == [Report(event=events.ApprovalRequired(
        hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d"))]
    assert flow.wait == "approval"
    assert flow.handle(HandshakeSucceeded(peer=PEER, verification=CODE)) == [Report(event=events.PeerConnected(
        mode="encrypted", hostname="laptop", user="ann", os="Linux", fingerprint="0a1b2c3d", verification=CODE))]
    assert flow.wait == ""

    # The consumer pulls: we push; what left the socket is not shown (acks will say).
    assert flow.handle(FrameReceived(frame=Request.pull(batch_size=250))) == [Push(start=StartPush(batch_size=250))]
    assert flow.handle(events.Progress(direction="send", dataset="memories", done=3, total=3, confirmed=False)) == []
    assert flow.handle(FrameReceived(frame=Ack(received=counts(3, 0), stored=counts(1, 0)))) == [
        progress("send", "memories", 3, 3), progress("peer_store", "memories", 1, 3),
        progress("send", "facts", 0, 0), progress("peer_store", "facts", 0, 0),
    ]
    final = SyncStats(memories=MemoryStats(inserted=2, skipped=1))
    assert len(flow.handle(FrameReceived(frame=Ack(received=counts(3, 0), stored=counts(3, 0), stats=final)))) == 4
    assert flow.handle(TransferFinished(sent={"memories": 3, "facts": 0})) == []

    # Then it pushes: we receive into the spool, and ack as we go.
    [receive] = flow.handle(FrameReceived(frame=Request.push()))
    assert receive == Receive(stream=receive.stream, batch_size=500, request=False) and flow.incoming is not None
    meta = Meta(datasets=counts(2, 0))
    assert flow.handle(FrameReceived(frame=meta)) == [
        progress("receive", "memories", 0, 2), progress("receive", "facts", 0, 0), ToPuller(frame=meta)]
    spooled = flow.handle(BatchSpooled(stream=receive.stream, dataset="memories", received=2))
    ack = Ack(received=counts(2, 0), stored=counts(0, 0))
    assert spooled == [progress("receive", "memories", 2, 2), Send(frame=ack, quiet=True)]
    clock.now += 0.1  # within ACK_INTERVAL: no second ack
    stored = flow.handle(BatchStored(stream=receive.stream, dataset="memories", count=2,
                                     result=StoreResult(inserted=2)))
    assert stored == [progress("store", "memories", 2, 2)]
    assert flow.handle(FrameReceived(frame=Done())) == [ToPuller(frame=Done())]
    flow.handle(StreamSpooled(stream=receive.stream))
    assert flow.handle(StreamStored(stream="another stream")) == []

    out = flow.handle(StreamStored(stream=receive.stream))
    received = SyncStats(memories=MemoryStats(inserted=2), facts=FactStats())
    stats = events.Stats(role="provider", mode="encrypted", received=received,
                         sent=events.SentStats.of({"memories": 3, "facts": 0}, final))
    final_ack = Ack(received=counts(2, 0), stored=counts(2, 0), stats=received)
    assert out == [Send(frame=final_ack, quiet=True), Send(frame=Response.with_stats(received)), Report(event=stats),
                   Finish(stats=stats, linger=True)]


def test_provider_plaintext_shows_what_left_the_socket_and_refuses_acks() -> None:
    flow = ProviderFlow(mode="plaintext")
    flow.handle(AutoAccepted(peer=PEER))
    flow.handle(HandshakeSucceeded(peer=PEER))
    assert flow.handle(events.Progress(direction="send", dataset="facts", done=1, total=4, confirmed=False)) == [
        progress("send", "facts", 1, 4, confirmed=False)]
    flow.handle(TransferFinished(sent={"memories": 10, "facts": 4}))
    assert flow.unacknowledged == 14  # the peer may still be storing them: the boss waits longer
    [fail] = flow.handle(FrameReceived(frame=Ack(received=counts(1, 0), stored=counts(1, 0))))
    assert isinstance(fail, Fail) and isinstance(fail.error, ProtocolError)


def test_a_plaintext_push_is_answered_once_spooled_with_what_is_new_by_id_and_stored_after() -> None:
    """Imprint's own clients give up 300 s after their push: answer once it is safe in the spool."""
    flow = ProviderFlow(mode="plaintext")
    flow.handle(AutoAccepted(peer=PEER))
    flow.handle(HandshakeSucceeded(peer=PEER))
    [receive] = flow.handle(FrameReceived(frame=Request.push()))
    assert receive.count_known  # the Puller counts what is already here as it spools
    flow.handle(FrameReceived(frame=Meta(datasets=counts(5, 2))))
    flow.handle(BatchSpooled(stream=receive.stream, dataset="memories", received=5, refused=1, already=2))
    flow.handle(BatchSpooled(stream=receive.stream, dataset="facts", received=2, already=0))
    flow.handle(BatchStored(stream=receive.stream, dataset="facts", count=2, result=StoreResult(inserted=2)))
    assert not flow.holding
    out = flow.handle(StreamSpooled(stream=receive.stream))
    told = SyncStats(memories=MemoryStats(inserted=2, skipped=2, rejected=1), facts=FactStats(inserted=2))
    assert out[0] == Send(frame=Response.with_stats(told))
    assert isinstance(out[1].event, events.Notice) and "4 records are still being stored" in out[1].event.message
    assert flow.holding  # the peer leaving now is the normal end

    out = flow.handle(StreamStored(stream=receive.stream))
    assert not only(out, Send)  # it has its answer already
    [finish] = only(out, Finish)
    assert finish.linger is False and finish.stats.received.facts.inserted == 2


def test_an_encrypted_push_or_one_stored_by_the_time_it_is_spooled_gets_the_exact_answer() -> None:
    flow = ProviderFlow(mode="plaintext")
    flow.handle(AutoAccepted(peer=PEER))
    flow.handle(HandshakeSucceeded(peer=PEER))
    [receive] = flow.handle(FrameReceived(frame=Request.push()))
    flow.handle(BatchSpooled(stream=receive.stream, dataset="memories", received=1, already=1))
    flow.handle(BatchStored(stream=receive.stream, dataset="memories", count=1, result=StoreResult(skipped=1)))
    assert flow.handle(StreamSpooled(stream=receive.stream)) == []
    assert only(flow.handle(StreamStored(stream=receive.stream)), Send) == [
        Send(frame=Response.with_stats(SyncStats(memories=MemoryStats(skipped=1))))]

    flow = ProviderFlow(mode="encrypted")
    flow.handle(AutoAccepted(peer=PEER))
    flow.handle(HandshakeSucceeded(peer=PEER))
    [receive] = flow.handle(FrameReceived(frame=Request.push()))
    assert not receive.count_known
    flow.handle(BatchSpooled(stream=receive.stream, dataset="memories", received=3))
    assert not only(flow.handle(StreamSpooled(stream=receive.stream)), Send) and not flow.holding


def test_provider_answers_an_unknown_request_with_404_and_a_second_pull_too() -> None:
    flow = ProviderFlow(mode="encrypted")
    flow.handle(HandshakeSucceeded(peer=PEER))
    assert only(flow.handle(FrameReceived(frame=Request.pull())), Push)
    assert flow.handle(FrameReceived(frame=Request.pull())) == [Send(frame=Response.not_found())]
    assert flow.handle(FrameReceived(frame=Request(method="GET", path="/sync/status"))) == [
        Send(frame=Response.not_found())]


@pytest.mark.parametrize(("message", "says"), [
    (INTERRUPTED, "interrupted by its user"),
    ("disk full\x1b[2J", "the other machine failed: disk full\\x1b[2J"),
])
def test_an_error_frame_from_the_peer_ends_the_session_with_its_words_made_safe(message: str, says: str) -> None:
    flow = ProviderFlow(mode="encrypted")
    flow.handle(HandshakeSucceeded(peer=PEER))
    [fail] = flow.handle(FrameReceived(frame=StreamError(message=message)))
    assert isinstance(fail, Fail) and isinstance(fail.error, SyncError) and says in str(fail.error)


def test_a_frame_before_the_handshake_is_a_protocol_error() -> None:
    [fail] = ProviderFlow(mode="encrypted").handle(FrameReceived(frame=Request.pull()))
    assert isinstance(fail.error, ProtocolError)


# ---------------------------------------------------------------- consumer


def test_consumer_pulls_stores_then_pushes_what_the_provider_lacks() -> None:
    flow = ConsumerFlow(mode="encrypted", batch_size=100)
    [waiting] = flow.handle(HelloSent(verification=CODE))
    assert flow.wait == "approval" and CODE in waiting.event.message

    out = flow.handle(HandshakeSucceeded(peer=PEER, verification=CODE))
    assert [type(c) for c in out] == [Report, Receive]
    receive = out[1]
    assert receive == Receive(stream=receive.stream, batch_size=100, request=True)
    batch = MemoryBatch.of(1, ())
    assert flow.handle(FrameReceived(frame=batch)) == [ToPuller(frame=batch)]
    flow.handle(BatchStored(stream=receive.stream, dataset="memories", count=3, result=StoreResult(inserted=2, skipped=1),
                            same_ids=("a", "b", "c")))
    flow.handle(BatchStored(stream=receive.stream, dataset="facts", count=1, result=StoreResult(skipped=1),
                            same_facts=(("s", "p", "o", 1.0),)))

    out = flow.handle(StreamStored(stream=receive.stream))
    received = SyncStats(memories=MemoryStats(inserted=2, skipped=1), facts=FactStats(skipped=1))
    assert out == [
        # The last ack tells the provider what became of its records.
        Send(frame=Ack(received=counts(0, 0), stored=counts(3, 1), stats=received), quiet=True),
        Push(start=StartPush(batch_size=100, request=True, skip_ids=frozenset({"a", "b", "c"}),
                             skip_facts=frozenset({("s", "p", "o", 1.0)}))),
    ]
    [waiting] = flow.handle(TransferFinished(sent={"memories": 5, "facts": 0}))
    assert waiting.event.for_ == "peer"

    body = '{"memories": {"inserted": 5, "skipped": 0}, "facts": {"inserted": 0, "skipped": 0}}'
    out = flow.handle(FrameReceived(frame=Response(status=200, body=body)))  # a JSON string, as Imprint's Python sends
    stats = events.Stats(role="consumer", mode="encrypted", received=received,
                         sent=events.SentStats.of({"memories": 5, "facts": 0},
                                                  SyncStats(memories=MemoryStats(inserted=5))))
    assert out == [Report(event=stats), Finish(stats=stats)]


def test_consumer_refuses_an_answer_where_a_stream_should_be() -> None:
    flow = ConsumerFlow(mode="plaintext")
    flow.handle(HandshakeSucceeded(peer=None))
    [fail] = flow.handle(FrameReceived(frame=Response(status=404, body="unknown path")))
    assert isinstance(fail.error, ProtocolError) and "404" in str(fail.error)


def test_a_dashboard_join_asks_before_anything_moves() -> None:
    flow = ConsumerFlow(mode="encrypted", confirm=True)
    out = flow.handle(HandshakeSucceeded(peer=PEER, verification=CODE))
    assert out[1] == Report(event=events.ConfirmRequired(mode="encrypted", verification=CODE, hostname="laptop",
                                                         user="ann", os="Linux", fingerprint="0a1b2c3d"))
    assert out[2] == AskToJoin(peer=PEER, verification=CODE)
    assert not only(out, Receive) and flow.wait == "approval"
    [receive] = flow.handle(JoinDecision(decision="accept"))
    assert isinstance(receive, Receive) and receive.request


def test_declining_a_join_tells_the_provider_then_fails() -> None:
    flow = ConsumerFlow(mode="encrypted", confirm=True)
    flow.handle(HandshakeSucceeded(peer=PEER, verification=CODE))
    out = flow.handle(JoinDecision(decision="reject"))
    assert out[0] == Send(frame=StreamError(message=DECLINED), quiet=True)
    assert isinstance(out[1], Fail) and isinstance(out[1].error, RejectedError)
