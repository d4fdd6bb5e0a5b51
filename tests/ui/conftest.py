"""Fixtures of the dashboard tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def relay() -> Iterator[int]:
    """An in-process relay on 127.0.0.1; yields its port."""
    from imprint.relay.server import RelayServer

    server = RelayServer(host="127.0.0.1", port=0)
    port = server.start_in_thread()
    yield port
    server.stop()
