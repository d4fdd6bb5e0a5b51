"""Helpers of the dashboard tests: seeded data dirs with running local actors,
and the app served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imprint.actors.base import ask
from imprint.config import Settings
from imprint.local import LocalActors
from imprint.messages.records import FactRecord, MemoryRecord, finalize_memory
from imprint.messages.store import StoreFacts


@dataclass
class Machine:
    """One data dir with its running actors."""

    settings: Settings
    local: LocalActors


def seed(local: LocalActors, memories: list[tuple[str, str, str, str]], facts: list[tuple[str, str, str, float | None]]) -> None:
    """Store (content, project, type, source) memories and (subject, predicate, object, ended) facts."""
    local.store_memories(tuple(
        finalize_memory(MemoryRecord(content=c, project=p, type=t, source=s, timestamp=1_700_000_000.0 + i))
        for i, (c, p, t, s) in enumerate(memories)))
    ask(local["fact_store"], StoreFacts(records=tuple(
        FactRecord(subject=s, predicate=p, object=o, valid_from=1_700_000_000.0 + i, ended=e, source="test")
        for i, (s, p, o, e) in enumerate(facts))))


@contextmanager
def machine(
    data_dir: Path, memories: list[tuple[str, str, str, str]], facts: list[tuple[str, str, str, float | None]]
) -> Iterator[Machine]:
    settings = Settings(data_dir=data_dir).prepare()
    with LocalActors(settings, embedder=True) as local:
        seed(local, memories, facts)
        yield Machine(settings=settings, local=local)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (free port) in a thread; yield its base URL.

    The socket listens before the thread starts, so clients may connect at
    once: their connections wait in the backlog until uvicorn accepts them.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ui-uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
