"""RelayConnection against a real RelayServer on 127.0.0.1, with a websocket-client peer.

The actor under test takes the consumer role; the test itself is the
provider, speaking through a plain websocket-client connection. The
session's listener is a Recorder.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from imprint.actors.relay_connection import RelayConnection
from imprint.errors import RelayError
from imprint.messages.records import MemoryRecord
from imprint.messages.session import (
    BadFrame,
    CloseConnection,
    ConnectionLost,
    DeliverRawTo,
    FrameHandled,
    FrameReceived,
    RawFrameReceived,
    SendFrame,
    SendRaw,
    UseCodec,
)
from imprint.messages.store import Ping
from imprint.messages.wire import (
    MAX_PLAINTEXT_FRAME_BYTES,
    DatasetCounts,
    Done,
    MemoryBatch,
    Meta,
    Request,
    encode_frame,
)
from imprint.protocol.codec import PlainCodec
from imprint.relay.server import RelayServer

from .fakes import Recorder, stopping_new_actors

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def relay_port() -> Iterator[int]:
    relay = RelayServer(host="127.0.0.1", port=0)
    port = relay.start_in_thread()
    try:
        yield port
    finally:
        relay.stop()


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


class Rig:
    """The actor (consumer role) and a websocket-client peer (provider role) in a fresh room."""

    def __init__(self, port: int, *, window: int = 4, **kw: Any) -> None:
        self.room = uuid.uuid4().hex[:12]
        base = f"ws://127.0.0.1:{port}/{self.room}"
        self.listener = Recorder("session")
        self.actor = RelayConnection.start(url=f"{base}?role=consumer", listener=self.listener, window=window,
                                           attempts=2, **kw)
        assert self.actor.ask(Ping(), timeout=30) is True
        self.actor.tell(DeliverRawTo(target=self.listener))  # here the test stands in for the handshake
        self.peer = websocket.create_connection(f"{base}?role=provider", timeout=10)
        self._open = True

    def use_plain_codec(self) -> None:
        # Asked, so it is installed before any frame sent after it arrives.
        self.actor.ask(UseCodec(codec=PlainCodec()), timeout=10)

    def send(self, frame: Any) -> None:
        self.peer.send(encode_frame(frame).decode("utf-8"))

    def close(self) -> None:
        if self._open:
            self._open = False
            self.peer.close()
            # close() does nothing once a close frame was read; free the socket anyway.
            self.peer.shutdown()


@pytest.fixture
def rig(relay_port: int) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rigs.append(Rig(relay_port, **kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def batch(seq: int) -> MemoryBatch:
    return MemoryBatch(dataset="memories", seq=seq, records=(MemoryRecord(content=f"memory {seq}"),))


def test_frames_go_up_raw_until_a_codec_is_installed(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.peer.send('{"imprint":1,"pake":"x"}')
    r.peer.send_binary(b"\x00\x01sealed\xff")

    assert r.listener.next() == RawFrameReceived(data='{"imprint":1,"pake":"x"}')
    assert r.listener.next() == RawFrameReceived(data=b"\x00\x01sealed\xff")

    # And down: text stays text, bytes stay bytes.
    r.actor.ask(SendRaw(data='{"imprint":1,"confirm":"y"}'), timeout=10)
    r.actor.ask(SendRaw(data=b"\x07sealed"), timeout=10)
    assert r.peer.recv_data() == (websocket.ABNF.OPCODE_TEXT, b'{"imprint":1,"confirm":"y"}')
    assert r.peer.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x07sealed")


def test_after_use_codec_frames_go_up_typed_and_down_as_specs_json(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.use_plain_codec()
    meta = Meta(datasets=DatasetCounts(memories=1, facts=0))
    r.send(meta)
    r.send(batch(1))
    r.send(Done())

    assert r.listener.next() == FrameReceived(frame=meta)
    assert r.listener.next() == FrameReceived(frame=batch(1))
    assert r.listener.next() == FrameReceived(frame=Done())

    r.actor.ask(SendFrame(frame=Request.pull()), timeout=10)
    assert r.peer.recv() == '{"method":"GET","path":"/sync/pull","body":{"batch_size":500}}'


def test_a_bad_frame_after_use_codec_is_reported_once_and_nothing_more_is_delivered(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.use_plain_codec()
    r.peer.send("this is not JSON")

    bad = r.listener.next()
    assert isinstance(bad, BadFrame) and "not valid JSON" in bad.message

    r.send(Meta(datasets=DatasetCounts(memories=0, facts=0)))
    r.send(Done())
    r.listener.assert_quiet()
    assert r.listener.messages == [bad]


def test_the_peer_leaving_is_a_connection_lost(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.close()

    lost = r.listener.next()
    assert isinstance(lost, ConnectionLost) and lost.expected is False
    assert "peer disconnected" in lost.reason
    with pytest.raises(RelayError):
        r.actor.ask(SendRaw(data="anyone there?"), timeout=10)


def test_our_own_close_is_an_expected_connection_lost(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.actor.tell(CloseConnection(reason="sync complete"))

    lost = r.listener.next()
    assert isinstance(lost, ConnectionLost) and lost.expected is True
    # The relay closes the peer too, at once (not after its 10 s close timeout).
    r.peer.settimeout(5)
    opcode, data = r.peer.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and data[2:] == b"peer disconnected"


def test_an_unreachable_relay_fails_ping_after_its_attempts() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = Recorder("session")
    ref = RelayConnection.start(url=f"ws://127.0.0.1:{port}/room1?role=consumer", listener=listener, attempts=2)

    with pytest.raises(RelayError, match=rf"cannot reach the relay at ws://127\.0\.0\.1:{port}/room1"):
        ref.ask(Ping(), timeout=30)
    assert listener.messages == []


def test_batch_frames_wait_for_credits(rig: Callable[..., Rig]) -> None:
    r = rig(window=2)
    r.use_plain_codec()
    meta = Meta(datasets=DatasetCounts(memories=4, facts=0))
    for frame in (meta, batch(1), batch(2), batch(3), batch(4), Done()):
        r.send(frame)

    # Meta does not hold a credit; two batches use up the window.
    assert [r.listener.next() for _ in range(3)] == [FrameReceived(meta), FrameReceived(batch(1)), FrameReceived(batch(2))]
    r.listener.assert_quiet()

    r.actor.tell(FrameHandled())
    assert r.listener.next() == FrameReceived(batch(3))
    r.listener.assert_quiet()

    r.actor.tell(FrameHandled())
    assert r.listener.next() == FrameReceived(batch(4))
    r.listener.assert_quiet()  # batches 3 and 4 hold the window: even done waits

    r.actor.tell(FrameHandled())
    assert r.listener.next() == FrameReceived(Done())


# ---------------------------------------------------------------- a hostile relay

class HostileRelay:
    """A websockets server that plays a script at whoever connects, as a hostile relay would."""

    def __init__(self, script: Callable[[Any], None]) -> None:
        import threading

        from websockets.sync.server import serve

        self.server = serve(lambda ws: script(ws), "127.0.0.1", 0, max_size=None, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/room1?role=consumer"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def _wait_closed(ws: Any) -> None:
    try:
        for _ in ws:
            pass
    except Exception:
        pass


@pytest.mark.parametrize("fragments", [3, 60])
def test_a_fragmented_message_is_refused_as_soon_as_its_total_passes_the_cap(fragments: int) -> None:
    """Fragments are counted as they come, not once reassembled (60 x 8 MiB cost 800 MB before)."""
    limit = 1024 * 1024
    piece = "x" * (limit // 2 + 1)

    def script(ws: Any) -> None:
        try:
            ws.send(iter([piece] * fragments))  # one text message in fragments
        except Exception:
            pass  # we hang up part way, as we should
        _wait_closed(ws)

    relay = HostileRelay(script)
    listener = Recorder("session")
    try:
        ref = RelayConnection.start(url=relay.url(), listener=listener, attempts=1, max_frame_bytes=limit)
        assert ref.ask(Ping(), timeout=30) is True
        lost = listener.wait_for(ConnectionLost)
        assert "fragmented message of more than 1,048,576 bytes" in lost.reason
        assert listener.of_type(RawFrameReceived, FrameReceived) == []
    finally:
        relay.stop()


def test_a_frame_announced_over_the_cap_is_refused_before_it_is_read() -> None:
    limit = 1024 * 1024

    def script(ws: Any) -> None:
        try:
            ws.send(b"\0" * (limit + 1))
        except Exception:
            pass
        _wait_closed(ws)

    relay = HostileRelay(script)
    listener = Recorder("session")
    try:
        ref = RelayConnection.start(url=relay.url(), listener=listener, attempts=1, max_frame_bytes=limit)
        assert ref.ask(Ping(), timeout=30) is True
        lost = listener.wait_for(ConnectionLost)
        assert "announced a frame of 1,048,577 bytes, over the limit of 1,048,576" in lost.reason
    finally:
        relay.stop()


def test_a_big_plaintext_frame_is_read_whole_and_decoded(rig: Callable[..., Rig]) -> None:
    """Frames Imprint's own clients send (tens of MB) pass in the plaintext mode."""
    r = rig(max_frame_bytes=MAX_PLAINTEXT_FRAME_BYTES)
    r.use_plain_codec()
    records = tuple(MemoryRecord(content=f"memory {i} " + "z" * 90_000) for i in range(400))
    frame = MemoryBatch(dataset="memories", seq=1, records=records)
    data = encode_frame(frame)
    assert len(data) > 33 * 2**20  # past the sealed mode's 33 MiB cap
    r.peer.send(data.decode("utf-8"))
    received = r.listener.next(timeout=30)
    assert isinstance(received, FrameReceived) and received.frame.records == records
