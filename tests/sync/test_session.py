"""The session boss: what only a running session shows (wiring is covered end to end)."""

from __future__ import annotations

import queue
import threading

import pytest

from imprint.config import Settings
from imprint.errors import SyncError
from imprint.messages.events import Room
from imprint.relay.server import RelayServer
from imprint.sync.runner import run_serve


@pytest.mark.timeout(120)
def test_serve_waiting_for_a_peer_can_be_cancelled(tmp_path):
    """The dashboard cancels a serve nobody joined; it ends at once instead of at room expiry."""
    relay = RelayServer(host="127.0.0.1", port=0)
    port = relay.start_in_thread()
    settings = Settings(data_dir=tmp_path / "a").prepare()
    events: queue.Queue = queue.Queue()
    sessions: list = []
    outcome: dict = {}

    def serve() -> None:
        try:
            run_serve(settings, relay=f"ws://127.0.0.1:{port}", listen="", mode="encrypted", batch_size=500,
                      idle_timeout=120, report=events.put, approver=lambda peer, warning: "reject",
                      on_session=sessions.append)
        except SyncError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        room = events.get(timeout=90)
        assert isinstance(room, Room) and len(room.pin) == 8
        assert len(sessions) == 1
        sessions[0].cancel("stopped by test")
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert "stopped by test" in str(outcome.get("error"))
    finally:
        relay.stop()
