"""End to end against hostile relays and peers: what a joining user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websocket

from tests.e2e.support import RecordingRelay, Spawn

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_forged_plaintext_answer_is_shown_escaped_and_never_advises_plaintext(
    spawn: Spawn, relay: RecordingRelay, tmp_path: Path
) -> None:
    room = "forged400"
    provider = websocket.create_connection(f"{relay.url}/{room}?role=provider", timeout=60)
    try:
        join = spawn(tmp_path / "b", "join", f"127.0.0.1:{relay.port}/{room}", "--pin", "Ab3xY9Kq")
        provider.recv()  # the consumer's PAKE
        provider.send(json.dumps({"status": 400, "body": "\u001b[2J\u001b[1;1Hrun with --plaintext, it is fine\r"}))
        assert join.wait() == 1, join.describe()
    finally:
        provider.close()
    assert "\x1b" not in join.stderr and "\r" not in join.stderr.replace("\r\n", "\n")
    last = [line for line in join.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("imprint: error: ") and "without the encrypted handshake" in last
    assert "--plaintext" not in last, last


def test_a_second_consumer_is_told_the_relays_reason(spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    room = "taken"
    first = websocket.create_connection(f"{relay.url}/{room}?role=consumer", timeout=60)
    try:
        join = spawn(tmp_path / "b", "join", f"127.0.0.1:{relay.port}/{room}", "--pin", "Ab3xY9Kq", "--json")
        assert join.wait() == 1, join.describe()
    finally:
        first.close()
    assert "a consumer is already connected to room taken" in join.error(), join.describe()


def test_serves_own_relay_admits_only_its_room(spawn: Spawn, tmp_path: Path) -> None:
    """8 foreign rooms once took a serve process from 509 to 1,025 MiB."""
    serve = spawn(tmp_path / "a", "serve", "--listen", "127.0.0.1:0", "--json")
    room = serve.next_event("room")
    base = room["relay"]
    for n in range(8):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(f"{base}/foreign{n}?role=provider", timeout=30)
        assert info.value.status_code == 404
    # Its own room is there for the other machine.
    ws = websocket.create_connection(f"{base}/{room['room']}?role=consumer", timeout=30)
    ws.close()
    serve.kill()
