"""What one actor tells another without a message: shared, thread-safe signals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class ReadActivity:
    """When the store last answered a search, for the Storer: it writes in small parts while
    searches come (a search waits behind one part in this actor's mailbox) and in big ones
    otherwise (fewer index transactions and Edge calls: a 100k first sync took 18.0 s in
    parts of 1,000, 20.8 s in parts of 250). Shared between threads: one float, written whole."""

    def __init__(self) -> None:
        self._at = float("-inf")

    def saw_search(self) -> None:
        self._at = time.monotonic()

    def recent(self, seconds: float) -> bool:
        return time.monotonic() - self._at < seconds


class SearchLane:
    """The memory store's search, callable from any thread: a search then waits behind no write
    queued in the MemoryStore's mailbox (Edge and a Qdrant server both answer reads while they
    write). The MemoryStore opens it once its store is open and closes it before it closes the
    store; a closed lane answers None and the caller asks the actor instead."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._search: Callable[..., Any] | None = None
        self._running = 0

    def open(self, search: Callable[..., Any]) -> None:
        with self._ready:
            self._search = search

    def close(self, wait: float = 30.0) -> None:
        """No new search starts; those under way finish (up to `wait` seconds) before the store closes."""
        with self._ready:
            self._search = None
            self._ready.wait_for(lambda: self._running == 0, timeout=wait)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        with self._ready:
            search = self._search
            if search is None:
                return None
            self._running += 1
        try:
            return search(*args, **kwargs)
        finally:
            with self._ready:
                self._running -= 1
                self._ready.notify_all()
