"""Tests of the sync relay, with real websocket-client peers on 127.0.0.1.

No test sleeps to synchronise: each waits on a frame, a close frame, or the
frame hook having seen a frame, always with a timeout.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import websocket
from websocket import ABNF

from imprint.errors import ConfigError, RelayError
from imprint.relay.server import (
    CLOSE_PEER_DISCONNECTED,
    CLOSE_RELAY_ERROR,
    CLOSE_RELAY_FULL,
    CLOSE_ROLE_TAKEN,
    CLOSE_ROOM_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_HELD,
    CLOSE_TOO_MANY_ROOMS,
    SMALL_FRAME_BYTES,
    RelayServer,
    parse_target,
    run_relay,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds any single wait may take before the test fails


class Closed(Exception):
    """The relay closed the connection while we expected a frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


def _close_frame(frame: ABNF) -> Closed:
    if len(frame.data) < 2:
        return Closed(1005, "")
    (code,) = struct.unpack("!H", frame.data[:2])
    return Closed(code, frame.data[2:].decode("utf-8"))


def recv(ws: websocket.WebSocket) -> str | bytes:
    """Next text (str) or binary (bytes) frame; raise Closed on a close frame."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_TEXT:
            return frame.data.decode("utf-8")
        if opcode == ABNF.OPCODE_BINARY:
            return frame.data
        if opcode == ABNF.OPCODE_CLOSE:
            # websocket-client answered the close but leaves the socket open;
            # the relay waits for TCP to close, so close it now.
            ws.shutdown()
            raise _close_frame(frame)


def wait_closed(ws: websocket.WebSocket) -> tuple[int, str, list[str | bytes]]:
    """Read until the relay closes us; return code, reason and frames before it."""
    frames: list[str | bytes] = []
    while True:
        try:
            frames.append(recv(ws))
        except Closed as closed:
            return closed.code, closed.reason, frames


class FrameGate:
    """A frame hook that records frames and lets a test wait until it saw N."""

    def __init__(self, transform: Callable[[str, str, str | bytes], list[str | bytes]] | None = None) -> None:
        self.seen: list[tuple[str, str, str | bytes]] = []
        self._transform = transform
        self._changed = threading.Condition()

    def __call__(self, room: str, role: str, frame: str | bytes) -> list[str | bytes]:
        with self._changed:
            self.seen.append((room, role, frame))
            self._changed.notify_all()
        return self._transform(room, role, frame) if self._transform else [frame]

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.seen) >= count, timeout=WAIT), self.seen


@pytest.fixture
def make_relay() -> Iterator[Callable[..., RelayServer]]:
    """Start relays on free ports; stop them all and check no thread is left."""
    relays: list[RelayServer] = []

    def start(**options: object) -> RelayServer:
        relay = RelayServer(host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        relay.start_in_thread(timeout=WAIT)
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.stop(timeout=WAIT)
    assert not [t for t in threading.enumerate() if t.name == "imprint-relay"]


@pytest.fixture
def relay(make_relay: Callable[..., RelayServer]) -> RelayServer:
    return make_relay()


@pytest.fixture
def connect() -> Iterator[Callable[[RelayServer, str, str], websocket.WebSocket]]:
    """Open websocket-client connections; close whatever is left at teardown."""
    opened: list[websocket.WebSocket] = []

    def open_(relay: RelayServer, room: str, role: str) -> websocket.WebSocket:
        # UTF-8 is the relay's to check (in C); websocket-client's own check is a pure-Python loop.
        ws = websocket.create_connection(f"{relay.url}/{room}?role={role}", timeout=WAIT, skip_utf8_validation=True)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        try:
            ws.close(timeout=1)
        finally:
            ws.shutdown()  # close() is a no-op once a close frame was received


def http_get(relay: RelayServer, path: str) -> tuple[int, str, str]:
    """Plain HTTP GET: status, content type and body."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def health_rooms(relay: RelayServer) -> int:
    status, content_type, body = http_get(relay, "/health")
    assert status == 200
    assert content_type == "application/json"
    document = json.loads(body)
    assert document["status"] == "ok"
    return document["rooms"]


# --------------------------------------------------------------- sans network


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/room1?role=provider", ("room1", "provider")),
        ("/A-b_9?role=consumer&v=2", ("A-b_9", "consumer")),
        ("/" + "x" * 64 + "?role=provider", ("x" * 64, "provider")),
    ],
)
def test_parse_target_accepts(path: str, expected: tuple[str, str]) -> None:
    assert parse_target(path) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/?role=provider", "missing room id"),
        ("/" + "x" * 65 + "?role=provider", "bad room id"),
        ("/a.b?role=provider", "bad room id"),
        ("/a/b?role=provider", "bad room id"),
        ("/a%41?role=provider", "bad room id"),
        ("/room", "bad role"),
        ("/room?role=admin", "bad role"),
        ("/room?role=provider&role=consumer", "bad role"),
        ("/room?role=", "bad role"),
    ],
)
def test_parse_target_rejects(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_target(path)


# ------------------------------------------------------------------- HTTP


def test_health_reports_open_rooms(relay: RelayServer, connect) -> None:
    assert health_rooms(relay) == 0
    connect(relay, "r1", "provider")
    connect(relay, "r2", "consumer")
    # /health runs on the relay's loop after both joins were registered.
    assert health_rooms(relay) == 2
    assert relay.room_count == 2


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/bad!room?role=provider", "bad room id"),
        ("/" + "r" * 65 + "?role=provider", "bad room id"),
        ("/room", "bad role"),
        ("/room?role=admin", "bad role"),
    ],
)
def test_bad_target_is_refused_with_400_before_upgrade(relay: RelayServer, path: str, reason: str) -> None:
    status, _, body = http_get(relay, path)
    assert status == 400
    assert reason in body
    with pytest.raises(websocket.WebSocketBadStatusException) as excinfo:
        websocket.create_connection(f"{relay.url}{path}", timeout=WAIT)
    assert excinfo.value.status_code == 400
    assert relay.room_count == 0


# ------------------------------------------------------------- forwarding


def test_text_and_binary_frames_are_forwarded_both_ways_in_order(relay: RelayServer, connect) -> None:
    provider = connect(relay, "room", "provider")
    consumer = connect(relay, "room", "consumer")
    for i in range(20):
        provider.send(f"p{i}")
        provider.send_binary(bytes([i]) * (i + 1))
    consumer.send("c0")
    consumer.send_binary(b"\x00\xff")

    assert [recv(consumer) for _ in range(40)] == [
        frame for i in range(20) for frame in (f"p{i}", bytes([i]) * (i + 1))
    ]
    assert recv(provider) == "c0"
    assert recv(provider) == b"\x00\xff"


def test_an_8_mb_frame_passes_each_way(relay: RelayServer, connect) -> None:
    provider = connect(relay, "big", "provider")
    consumer = connect(relay, "big", "consumer")
    payload = os.urandom(8 * 1024 * 1024)

    provider.send_binary(payload)
    assert recv(consumer) == payload
    consumer.send_binary(payload[::-1])
    assert recv(provider) == payload[::-1]


def test_an_80_mb_frame_of_imprints_own_clients_passes(relay: RelayServer, connect) -> None:
    """Imprint's own relay caps nothing; its clients send 10-80 MB batches."""
    provider = connect(relay, "huge", "provider")
    consumer = connect(relay, "huge", "consumer")
    payload = b"x" * (80 * 1024 * 1024)
    provider.send(payload, opcode=websocket.ABNF.OPCODE_TEXT)
    consumer.settimeout(60)
    opcode, data = consumer.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT and len(data) == len(payload)


def test_frames_sent_before_the_peer_joined_are_held_and_delivered(make_relay, connect) -> None:
    gate = FrameGate()
    relay = make_relay(frame_hook=gate)
    provider = connect(relay, "early", "provider")
    provider.send("one")
    provider.send_binary(b"two")
    provider.send("three")
    gate.wait_for(3)  # the relay has held all three: no consumer yet

    consumer = connect(relay, "early", "consumer")
    assert [recv(consumer) for _ in range(3)] == ["one", b"two", "three"]
    provider.send("four")
    assert recv(consumer) == "four"
    consumer.send("back")
    assert recv(provider) == "back"


def test_held_frames_arrive_before_peer_disconnected(make_relay, connect) -> None:
    gate = FrameGate()
    relay = make_relay(frame_hook=gate)
    provider = connect(relay, "early", "provider")
    # As many as may be held (frames before the peer joins are small): the relay
    # is still draining them into the consumer when the provider leaves.
    frames = [os.urandom(SMALL_FRAME_BYTES) for _ in range(60)]
    for frame in frames:
        provider.send_binary(frame)
    gate.wait_for(len(frames))

    consumer = connect(relay, "early", "consumer")
    provider.close(timeout=WAIT)  # leaves while the relay drains the held frames

    code, reason, received = wait_closed(consumer)
    assert received == frames
    assert (code, reason) == (CLOSE_PEER_DISCONNECTED, "peer disconnected")


# ---------------------------------------------------------- one per role


@pytest.mark.parametrize("role", ["provider", "consumer"])
def test_second_client_of_a_role_is_refused_and_the_first_keeps_working(
    relay: RelayServer, connect, role: str
) -> None:
    first = connect(relay, "room", role)
    other = connect(relay, "room", "consumer" if role == "provider" else "provider")

    intruder = connect(relay, "room", role)
    intruder.send("hijack?")
    code, reason, frames = wait_closed(intruder)
    assert code == CLOSE_ROLE_TAKEN
    assert reason == f"a {role} is already connected to room room"
    assert frames == []

    other.send("still there")
    assert recv(first) == "still there"
    first.send("yes")
    assert recv(other) == "yes"
    assert relay.room_count == 1


# ----------------------------------------------------------------- leaving


@pytest.mark.parametrize("leaver", ["provider", "consumer"])
def test_one_side_leaving_closes_the_other_and_removes_the_room(
    relay: RelayServer, connect, leaver: str
) -> None:
    sides = {role: connect(relay, "room", role) for role in ("provider", "consumer")}
    stayer = "consumer" if leaver == "provider" else "provider"
    sides[leaver].send("last words")
    sides[leaver].close(timeout=WAIT)

    code, reason, frames = wait_closed(sides[stayer])
    assert frames == ["last words"]
    assert (code, reason) == (CLOSE_PEER_DISCONNECTED, "peer disconnected")
    # The relay forgets the room before it closes the peer.
    assert relay.room_count == 0
    assert health_rooms(relay) == 0


def test_room_id_can_be_reused_after_the_room_closed(relay: RelayServer, connect) -> None:
    provider = connect(relay, "again", "provider")
    consumer = connect(relay, "again", "consumer")
    consumer.close(timeout=WAIT)
    wait_closed(provider)

    provider = connect(relay, "again", "provider")
    consumer = connect(relay, "again", "consumer")
    provider.send("new session")
    assert recv(consumer) == "new session"


def test_room_expires_after_its_ttl(make_relay, connect) -> None:
    relay = make_relay(room_ttl=0.5)
    provider = connect(relay, "short", "provider")
    consumer = connect(relay, "short", "consumer")

    for ws in (provider, consumer):
        code, reason, _ = wait_closed(ws)
        assert (code, reason) == (CLOSE_ROOM_EXPIRED, "room expired")
    assert relay.room_count == 0


# ------------------------------------------------------------------ limits


def test_room_cap_refuses_new_rooms_but_not_joins(make_relay, connect) -> None:
    relay = make_relay(max_rooms=2)
    first = connect(relay, "r1", "provider")
    connect(relay, "r2", "provider")

    refused = connect(relay, "r3", "provider")
    code, reason, _ = wait_closed(refused)
    assert (code, reason) == (CLOSE_RELAY_FULL, "relay full")
    assert relay.room_count == 2

    joiner = connect(relay, "r1", "consumer")  # an existing room: allowed
    first.send("hi")
    assert recv(joiner) == "hi"

    joiner.close(timeout=WAIT)
    wait_closed(first)  # r1 is gone once its provider is told
    late = connect(relay, "r3", "provider")
    late_peer = connect(relay, "r3", "consumer")
    late.send("room for one more")
    assert recv(late_peer) == "room for one more"


def test_frame_over_the_cap_closes_sender_1009_and_peer(make_relay, connect) -> None:
    relay = make_relay(max_frame_bytes=1024 * 1024)
    provider = connect(relay, "room", "provider")
    consumer = connect(relay, "room", "consumer")

    provider.send_binary(b"x" * (1024 * 1024))  # exactly the cap passes
    assert len(recv(consumer)) == 1024 * 1024
    provider.send_binary(b"x" * (1024 * 1024 + 1))

    code, _, frames = wait_closed(provider)
    assert (code, frames) == (CLOSE_TOO_BIG, [])
    code, reason, frames = wait_closed(consumer)
    assert (code, reason, frames) == (CLOSE_PEER_DISCONNECTED, "peer disconnected", [])


@pytest.mark.parametrize(
    ("frames", "limit"),
    [
        (["a", "b", "c", "d"], "3 frames"),  # one frame too many
        ([b"x" * 600, b"y" * 600], "1000 bytes"),  # too many bytes
    ],
)
def test_overflowing_the_held_frames_closes_sender_4413(make_relay, connect, frames, limit) -> None:
    relay = make_relay(max_pending_frames=3, max_pending_bytes=1000)
    provider = connect(relay, "room", "provider")
    for frame in frames:
        if isinstance(frame, bytes):
            provider.send_binary(frame)
        else:
            provider.send(frame)

    sent = time.monotonic()
    code, reason, _ = wait_closed(provider)
    assert time.monotonic() - sent < 2.0  # at once, not after the 10 s close timeout
    assert code == CLOSE_TOO_MANY_HELD
    assert "held before the consumer joined" in reason
    assert limit in reason
    assert relay.room_count == 0


# ---------------------------------------------------------- memory and abuse


def test_a_side_alone_may_only_send_small_frames(make_relay, connect) -> None:
    """10 rooms each holding one 64 MiB frame took a relay from 46 to 686 MiB."""
    relay = make_relay()
    provider = connect(relay, "alone", "provider")
    provider.send_binary(b"x" * (SMALL_FRAME_BYTES + 1))
    code, reason, _ = wait_closed(provider)
    assert code == CLOSE_TOO_BIG and str(SMALL_FRAME_BYTES) in reason
    assert relay.budget.used == 0


def test_a_frame_over_the_memory_budget_is_refused_and_others_go_on(make_relay, connect) -> None:
    relay = make_relay(budget_bytes=10 * 1024 * 1024)
    _, provider = connect(relay, "big", "consumer"), connect(relay, "big", "provider")
    other_c, other_p = connect(relay, "other", "consumer"), connect(relay, "other", "provider")
    provider.send_binary(b"x" * (8 * 1024 * 1024))  # costs twice its size to read and forward
    code, reason, _ = wait_closed(provider)
    assert code == CLOSE_TOO_BIG and "relay busy" in reason
    other_p.send_binary(b"y" * (1024 * 1024))  # fits: the other room goes on
    assert recv(other_c) == b"y" * (1024 * 1024)
    assert relay.budget.peak <= relay.budget.limit


def test_the_budget_comes_back_when_frames_have_passed(make_relay, connect) -> None:
    relay = make_relay(budget_bytes=64 * 1024 * 1024)
    consumer, provider = connect(relay, "room", "consumer"), connect(relay, "room", "provider")
    for n in range(5):
        provider.send_binary(bytes([n]) * (4 * 1024 * 1024))
        assert recv(consumer) == bytes([n]) * (4 * 1024 * 1024)
    assert relay.budget.peak >= 8 * 1024 * 1024
    consumer.close()
    provider.close()
    deadline = time.monotonic() + WAIT
    while relay.budget.used and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a counter the relay's loop updates; bounded
    assert relay.budget.used == 0


def test_a_fragmented_message_streams_through(make_relay, connect) -> None:
    relay = make_relay()
    consumer, provider = connect(relay, "frag", "consumer"), connect(relay, "frag", "provider")
    pieces = [b"a" * 100_000, b"b" * 100_000, b"c" * 100_000]
    provider.send_frame(websocket.ABNF.create_frame(pieces[0], websocket.ABNF.OPCODE_BINARY, fin=0))
    provider.send_frame(websocket.ABNF.create_frame(pieces[1], websocket.ABNF.OPCODE_CONT, fin=0))
    provider.send_frame(websocket.ABNF.create_frame(pieces[2], websocket.ABNF.OPCODE_CONT, fin=1))
    assert recv(consumer) == b"".join(pieces)
    provider.send("text after it")
    assert consumer.recv() == "text after it"


def test_one_address_may_open_only_so_many_rooms(make_relay, connect) -> None:
    relay = make_relay(max_rooms_per_address=2)
    first, _ = connect(relay, "r1", "provider"), connect(relay, "r2", "provider")
    third = connect(relay, "r3", "provider")
    code, reason, _ = wait_closed(third)
    assert code == CLOSE_TOO_MANY_ROOMS and "too many rooms open from your address" in reason
    # Joining an existing room is not opening one; closing one frees a place.
    assert connect(relay, "r1", "consumer") is not None
    first.close()
    deadline = time.monotonic() + WAIT
    while relay.room_count > 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded poll of the relay's room count
    fourth = connect(relay, "r4", "provider")
    fourth.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        fourth.recv()  # open, not closed


def test_one_address_may_open_only_so_many_connections_a_second(make_relay) -> None:
    relay = make_relay(connections_per_second=0.01, connection_burst=3)
    for n in range(3):
        websocket.create_connection(f"{relay.url}/rate{n}?role=provider", timeout=WAIT).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"{relay.url}/rate9?role=provider", timeout=WAIT)
    assert info.value.status_code == 429


def test_a_relay_for_one_room_admits_no_other(make_relay, connect) -> None:
    relay = make_relay(rooms={"mine"})
    assert connect(relay, "mine", "provider") is not None
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"{relay.url}/yours?role=provider", timeout=WAIT)
    assert info.value.status_code == 404
    assert relay.room_count == 1


# -------------------------------------------------------------- frame hook


def test_frame_hook_can_drop_duplicate_and_tamper(make_relay, connect) -> None:
    def tamper(room: str, role: str, frame: str | bytes) -> list[str | bytes]:
        if frame == "drop":
            return []
        if frame == "dup":
            return [frame, frame]
        if frame == b"secret":
            return [b"SECRET"]
        return [frame]

    gate = FrameGate(tamper)
    relay = make_relay(frame_hook=gate)
    provider = connect(relay, "hooked", "provider")
    consumer = connect(relay, "hooked", "consumer")
    provider.send("drop")
    provider.send("dup")
    provider.send_binary(b"secret")
    provider.send("end")
    consumer.send("reply")

    assert [recv(consumer) for _ in range(4)] == ["dup", "dup", b"SECRET", "end"]
    assert recv(provider) == "reply"
    gate.wait_for(5)
    assert [s for s in gate.seen if s[1] == "provider"] == [
        ("hooked", "provider", "drop"),
        ("hooked", "provider", "dup"),
        ("hooked", "provider", b"secret"),
        ("hooked", "provider", "end"),
    ]
    assert ("hooked", "consumer", "reply") in gate.seen


def test_frame_hook_failure_closes_sender_1011_and_peer(make_relay, connect) -> None:
    def broken(room: str, role: str, frame: str | bytes) -> list[str | bytes]:
        raise RuntimeError("bug in a test hook")

    relay = make_relay(frame_hook=broken)
    provider = connect(relay, "room", "provider")
    consumer = connect(relay, "room", "consumer")
    provider.send("boom")

    assert wait_closed(provider)[:2] == (CLOSE_RELAY_ERROR, "relay error")
    assert wait_closed(consumer)[:2] == (CLOSE_PEER_DISCONNECTED, "peer disconnected")


# --------------------------------------------------------------- lifecycle


def test_stop_closes_open_connections_and_is_idempotent(connect) -> None:
    relay = RelayServer(host="127.0.0.1", port=0)
    relay.start_in_thread(timeout=WAIT)
    provider = connect(relay, "room", "provider")
    consumer = connect(relay, "room", "consumer")
    closer = threading.Thread(target=relay.stop, kwargs={"timeout": WAIT})
    closer.start()
    codes = {wait_closed(provider)[0], wait_closed(consumer)[0]}
    closer.join(WAIT)
    assert not closer.is_alive()
    assert codes <= {1001, CLOSE_PEER_DISCONNECTED}
    relay.stop(timeout=WAIT)
    assert not [t for t in threading.enumerate() if t.name == "imprint-relay"]


def test_port_in_use_raises_relay_error(relay: RelayServer) -> None:
    second = RelayServer(host="127.0.0.1", port=relay.port)
    with pytest.raises(RelayError, match=f"port {relay.port} on 127.0.0.1 is already in use"):
        second.start_in_thread(timeout=WAIT)
    second.stop(timeout=WAIT)  # harmless when it never started


def test_run_relay_reports_a_taken_port_and_returns_1(capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_relay(host="127.0.0.1", port=port) == 1
    err = capsys.readouterr().err
    assert f"error: port {port} on 127.0.0.1 is already in use\n" in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT delivery to a child")
def test_run_relay_listens_and_stops_cleanly_on_ctrl_c() -> None:
    code = "import sys; from imprint.relay.server import run_relay; sys.exit(run_relay(host='127.0.0.1', port=0))"
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stderr], daemon=True)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=WAIT)
            if line.startswith("relay listening on ws://127.0.0.1:"):
                break
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"status": "ok", "rooms": 0}
        conn.close()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=WAIT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=WAIT)
        reader.join(WAIT)
        child.stderr.close()


def test_serve_forever_ends_on_stop_from_another_thread() -> None:
    relay = RelayServer(host="127.0.0.1", port=0)

    async def main() -> None:
        serving = asyncio.create_task(relay.serve_forever())
        await asyncio.to_thread(relay.stop, WAIT)
        await asyncio.wait_for(serving, WAIT)

    asyncio.run(main())


def test_serve_forever_ends_when_cancelled() -> None:
    relay = RelayServer(host="127.0.0.1", port=0)

    async def listening() -> None:
        while not relay.url:  # set once bound; yields to the loop, no timing
            await asyncio.sleep(0)

    async def main() -> None:
        serving = asyncio.create_task(relay.serve_forever())
        await asyncio.wait_for(listening(), WAIT)
        assert (await asyncio.to_thread(health_rooms, relay)) == 0
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(serving, WAIT)

    asyncio.run(main())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT)


@pytest.mark.parametrize("option", ["room_ttl", "max_rooms", "max_frame_bytes", "max_pending_frames"])
def test_non_positive_limits_are_config_errors(option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        RelayServer(**{option: 0})
