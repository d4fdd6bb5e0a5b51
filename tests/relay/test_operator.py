"""What an operator relies on: real client addresses behind a trusted proxy
(PROXY protocol v1/v2, X-Forwarded-For), /metrics, and draining for a
restart. Real relays and websocket-client peers on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from imprint.errors import ConfigError
from imprint.relay.proxy import (
    V2_SIGNATURE,
    ProxyHeaderError,
    TrustedProxies,
    parse_proxy_header,
)
from imprint.relay.server import (
    CLOSE_RESTARTING,
    CLOSE_TOO_MANY_ROOMS,
    RelayServer,
)
from tests.test_relay import WAIT, Closed, http_get, recv, wait_closed

pytestmark = pytest.mark.timeout(60)


def v2_header(source: str, command: int = 1) -> bytes:
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        body = ip.packed + ipaddress.IPv4Address("127.0.0.1").packed + struct.pack("!HH", 50000, 8430)
        family = 0x11
    else:
        body = ip.packed + ipaddress.IPv6Address("::1").packed + struct.pack("!HH", 50000, 8430)
        family = 0x21
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


# ------------------------------------------------------------ sans network


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 198.51.100.7 127.0.0.1 50000 8430\r\nGET / HTTP/1.1", ("198.51.100.7", 46)),
    (b"PROXY TCP6 2001:db8::7 ::1 50000 8430\r\n", ("2001:db8::7", 39)),
    (b"PROXY UNKNOWN\r\nGET", (None, 15)),
    (b"GET /room?role=provider HTTP/1.1\r\n", (None, 0)),
])
def test_proxy_v1_headers_are_read(data: bytes, expected: tuple[str | None, int]) -> None:
    assert parse_proxy_header(data) == expected


def test_proxy_v2_headers_are_read() -> None:
    header = v2_header("203.0.113.9")
    assert parse_proxy_header(header + b"GET") == ("203.0.113.9", len(header))
    header6 = v2_header("2001:db8::9")
    assert parse_proxy_header(header6) == ("2001:db8::9", len(header6))
    local = v2_header("203.0.113.9", command=0)
    assert parse_proxy_header(local) == (None, len(local))  # a health check: the proxy's own address


@pytest.mark.parametrize("cut", [1, 5, 11, 15, 20])
def test_a_partial_proxy_header_asks_for_more(cut: int) -> None:
    assert parse_proxy_header(v2_header("203.0.113.9")[:cut]) is None
    assert parse_proxy_header(b"PROXY TCP4 198.51.100.7 127.0.0.1 50000 8430\r\n"[:cut]) is None


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",  # v6 source in a TCP4 line
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY " + b"x" * 200,
    V2_SIGNATURE + bytes([0x10, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 1 in a v2 header
    V2_SIGNATURE + bytes([0x25, 0x11]) + struct.pack("!H", 12) + bytes(12),  # command 5
    V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000),
])
def test_a_malformed_proxy_header_is_an_error(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_x_forwarded_for_is_walked_from_the_right_past_trusted_proxies_only() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert proxies.forwarded_for("10.0.0.5", "203.0.113.7, 10.0.0.9") == "203.0.113.7"
    # A client cannot pick its address: what it wrote sits left of what the proxy saw.
    assert proxies.forwarded_for("10.0.0.5", "1.1.1.1, 203.0.113.7") == "203.0.113.7"
    assert proxies.forwarded_for("198.51.100.1", "203.0.113.7") == "198.51.100.1"  # untrusted sender
    assert proxies.forwarded_for("10.0.0.5", "garbage, 10.0.0.9") == "10.0.0.9"
    assert proxies.forwarded_for("10.0.0.5", None) == "10.0.0.5"
    assert proxies.forwarded_for("::1", "[2001:db8::1]:443") == "2001:db8::1"


def test_a_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an address or CIDR"):
        TrustedProxies(["10.0.0.0/33"])


# ---------------------------------------------------------- through sockets

_opened: list[websocket.WebSocket] = []


@pytest.fixture(autouse=True)
def _close_clients(make_relay):  # noqa: ANN001 - after make_relay, so torn down before the relays stop
    yield
    while _opened:
        ws = _opened.pop()
        try:
            ws.close(timeout=1)
        except Exception:  # already closed by the relay
            pass
        finally:
            ws.shutdown()


def ws_to(url: str, room: str, role: str) -> websocket.WebSocket:
    ws = websocket.create_connection(f"{url}/{room}?role={role}", timeout=WAIT)
    _opened.append(ws)
    return ws


def open_as(relay: RelayServer, room: str, *, header: bytes = b"", xff: str | None = None,
            source: str = "127.0.0.1") -> websocket.WebSocket:
    """A provider of `room`, connecting from `source` and sending `header` first."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT, source_address=(source, 0))
    if header:
        sock.sendall(header)
    headers = [f"X-Forwarded-For: {xff}"] if xff else None
    ws = websocket.create_connection(f"{relay.url}/{room}?role=provider", socket=sock, timeout=WAIT,
                                     header=headers)
    _opened.append(ws)
    return ws


def assert_open(ws: websocket.WebSocket) -> None:
    ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()  # nothing: open, not closed


def assert_refused_for_rooms(ws: websocket.WebSocket) -> None:
    code, reason, _ = wait_closed(ws)
    assert code == CLOSE_TOO_MANY_ROOMS, reason


def test_users_behind_a_trusted_proxy_get_their_own_room_limits_by_proxy_protocol(make_relay) -> None:
    relay = make_relay(max_rooms_per_address=2, trusted_proxies=["127.0.0.1/32"])
    v1 = b"PROXY TCP4 198.51.100.1 127.0.0.1 40000 8430\r\n"
    alice = [open_as(relay, f"a{n}", header=v1) for n in range(2)]
    bob = [open_as(relay, f"b{n}", header=v2_header("198.51.100.2")) for n in range(2)]
    for ws in alice + bob:
        assert_open(ws)
    assert_refused_for_rooms(open_as(relay, "a-third", header=v1))
    assert_refused_for_rooms(open_as(relay, "b-third", header=v2_header("198.51.100.2")))


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(make_relay) -> None:
    trusting = make_relay(max_rooms_per_address=1, trusted_proxies=["127.0.0.1"])
    assert_open(open_as(trusting, "x1", xff="198.51.100.1"))
    assert_open(open_as(trusting, "x2", xff="198.51.100.2"))
    assert_refused_for_rooms(open_as(trusting, "x3", xff="198.51.100.1"))
    # Trusting someone else: this sender's header is ignored, it is 127.0.0.1.
    other = make_relay(max_rooms_per_address=1, trusted_proxies=["127.0.0.2"])
    assert_open(open_as(other, "y1", xff="198.51.100.1"))
    assert_refused_for_rooms(open_as(other, "y2", xff="198.51.100.2"))


def test_a_proxy_header_from_an_untrusted_peer_is_not_read(make_relay) -> None:
    relay = make_relay(trusted_proxies=["127.0.0.2"])
    with pytest.raises((websocket.WebSocketException, ConnectionError)):
        open_as(relay, "r", header=b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n")
    assert relay.room_count == 0


def test_a_bad_header_from_a_trusted_proxy_drops_that_connection_only(make_relay) -> None:
    relay = make_relay(trusted_proxies=["127.0.0.1"], metrics=True)
    with pytest.raises((websocket.WebSocketException, ConnectionError)):
        open_as(relay, "r", header=b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n")
    assert_open(open_as(relay, "fine", header=b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n"))
    # Plain HTTP from the proxy (its health checks without send-proxy) still works.
    status, _, _ = http_get(relay, "/health")
    assert status == 200
    assert metrics(relay)["imprint_relay_refusals_total"][("reason", "proxy_header")] == 1


def metrics(relay: RelayServer) -> dict[str, dict[tuple[str, str] | None, float]]:
    status, content_type, body = http_get(relay, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[str, str] | None, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = next(iter(sample.labels.items())) if sample.labels else None
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def test_metrics_count_what_the_relay_does_and_name_no_room(make_relay) -> None:
    relay = make_relay(metrics=True, max_rooms_per_address=1)
    room = "secret-room-id-42"
    provider = ws_to(relay.url, room, "provider")
    provider.send_binary(b"x" * 1000)  # held until the consumer joins
    before = metrics(relay)
    assert before["imprint_relay_rooms_waiting"][None] == 1
    assert before["imprint_relay_frames_held"][None] == 1 and before["imprint_relay_bytes_held"][None] == 1000
    consumer = ws_to(relay.url, room, "consumer")
    assert recv(consumer) == b"x" * 1000
    consumer.send("hello")
    assert recv(provider) == "hello"
    refused = ws_to(relay.url, "another", "provider")
    assert wait_closed(refused)[0] == CLOSE_TOO_MANY_ROOMS
    after = metrics(relay)
    assert after["imprint_relay_rooms_open"][None] == 1
    assert after["imprint_relay_rooms_waiting"][None] == 0
    assert after["imprint_relay_connections"][None] == 2
    assert after["imprint_relay_frames_forwarded_total"][None] == 2
    assert after["imprint_relay_bytes_forwarded_total"][None] == 1005
    assert after["imprint_relay_frames_held"][None] == 0
    assert after["imprint_relay_refusals_total"][("reason", "rooms_per_address")] == 1
    assert after["imprint_relay_refusals_total"][("reason", "role_taken")] == 0
    assert after["imprint_relay_budget_bytes_limit"][None] == relay.budget.limit
    assert after["imprint_relay_draining"][None] == 0
    assert room not in http_get(relay, "/metrics")[2]


def test_metrics_are_off_unless_asked_for(make_relay) -> None:
    status, _, body = http_get(make_relay(), "/metrics")
    assert status == 400 and "imprint_relay" not in body


def test_draining_lets_a_sync_under_way_finish_and_refuses_new_rooms(make_relay) -> None:
    relay = make_relay(drain_timeout=30)
    provider = ws_to(relay.url, "busy", "provider")
    consumer = ws_to(relay.url, "busy", "consumer")
    waiting = ws_to(relay.url, "alone", "provider")
    drained = relay.start_drain()
    # The waiting room goes at once: nothing moved in it, its run can start over elsewhere.
    code, reason, _ = wait_closed(waiting)
    assert (code, reason) == (CLOSE_RESTARTING, "relay restarting, run it again")
    status, _, body = http_get(relay, "/health")
    assert status == 503 and json.loads(body) == {"status": "draining", "rooms": 1}
    late = ws_to(relay.url, "late", "provider")
    assert wait_closed(late)[0] == CLOSE_RESTARTING
    for n in range(3):  # the sync under way goes on
        provider.send_binary(bytes([n]) * 100)
        assert recv(consumer) == bytes([n]) * 100
    assert not drained.done()
    provider.close()
    drained.result(timeout=WAIT)  # the last room ended: the relay stops
    with pytest.raises(Closed):
        recv(consumer)


def test_draining_closes_what_is_left_at_the_timeout_with_the_restart_code(make_relay) -> None:
    relay = make_relay()
    provider = ws_to(relay.url, "slow", "provider")
    consumer = ws_to(relay.url, "slow", "consumer")
    drained = relay.start_drain(timeout=0.5)
    for ws in (provider, consumer):
        code, _, _ = wait_closed(ws)
        assert code == CLOSE_RESTARTING
    drained.result(timeout=WAIT)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGTERM delivery to a child")
def test_sigterm_drains_the_relay_process_and_it_exits_0_when_its_syncs_end() -> None:
    child = subprocess.Popen([sys.executable, "-m", "imprint", "relay", "--host", "127.0.0.1", "--port", "0",
                              "--drain-timeout", "30"], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stderr], daemon=True).start()
    try:
        line = lines.get(timeout=30)
        while not line.startswith("relay listening on ws://127.0.0.1:"):
            line = lines.get(timeout=WAIT)
        url = line.split(" on ", 1)[1].strip()
        provider = ws_to(url, "r", "provider")
        consumer = ws_to(url, "r", "consumer")
        child.send_signal(signal.SIGTERM)
        while "draining" not in (line := lines.get(timeout=WAIT)):
            pass
        assert "1 syncs under way" in line
        provider.send("still here")
        assert recv(consumer) == "still here"
        refused = ws_to(url, "new", "provider")
        assert wait_closed(refused)[0] == CLOSE_RESTARTING
        assert child.poll() is None
        consumer.close()
        with pytest.raises(Closed):
            recv(provider)  # "peer disconnected": the last room is gone and the relay exits
        assert child.wait(timeout=WAIT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=WAIT)


def test_the_client_reports_a_restart_as_run_it_again() -> None:
    from imprint.actors.relay_connection import _close_reason

    class Frame:
        data = struct.pack("!H", 1012) + b"relay restarting, run it again"

    assert _close_reason(Frame()) == "the relay is restarting (1012): run the same command again"


def test_the_relay_command_explains_its_operator_options() -> None:
    out = subprocess.run([sys.executable, "-m", "imprint", "relay", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for option in ("--trusted-proxy CIDR", "--metrics", "--drain-timeout SECONDS"):
        assert option in out
    bad = subprocess.run([sys.executable, "-m", "imprint", "relay", "--port", "0", "--trusted-proxy", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--trusted-proxy 'nope' is not an address or CIDR" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    for value in ("0", "nan"):
        bad = subprocess.run([sys.executable, "-m", "imprint", "relay", "--port", "0", "--drain-timeout", value],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "--drain-timeout must be a positive number of seconds" in bad.stderr




def test_metrics_tell_a_frame_over_the_budget_from_one_over_the_size_cap(make_relay) -> None:
    relay = make_relay(metrics=True, budget_bytes=10 * 1024 * 1024)
    ws_to(relay.url, "big", "consumer")
    provider = ws_to(relay.url, "big", "provider")
    provider.send_binary(b"x" * (8 * 1024 * 1024))  # costs twice its size: over the 10 MiB budget
    assert "relay busy" in wait_closed(provider)[1]
    alone = ws_to(relay.url, "alone", "provider")
    alone.send_binary(b"x" * (64 * 1024))  # a side alone may only send small frames
    wait_closed(alone)
    refusals = metrics(relay)["imprint_relay_refusals_total"]
    assert refusals[("reason", "budget")] == 1 and refusals[("reason", "too_big")] == 1
