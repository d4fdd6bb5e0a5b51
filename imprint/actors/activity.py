"""What one actor tells another without a message: shared, thread-safe signals."""

from __future__ import annotations

import time


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
