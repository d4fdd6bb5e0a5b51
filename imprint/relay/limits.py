"""What anonymous clients can make a relay hold, and how it is bounded.

* Until a room has both sides, a side may only send small frames
  (:data:`SMALL_FRAME_BYTES`): nothing big is ever held for a peer that never
  comes.
* One :class:`MemoryBudget` covers every frame the relay reads, holds or
  forwards; :class:`Meter` charges a connection's big frames at their header,
  before websockets buffers their bytes, and refuses one that does not fit
  (:class:`BudgetExceeded`, close 1009).
* :class:`AddressLimits`: new connections per second, per client address.
* Memory freed by finished connections is dropped at once (:func:`scrub`) and
  handed back to the OS (:func:`release_memory`).
"""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import PayloadTooBig

#: Until a room has both sides, a side may only send frames this big: the
#: first frames of every mode (PAKE, HELLO) are well under 4 KiB, and a
#: client alone in a room has no business sending more.
SMALL_FRAME_BYTES = 16 * 1024
#: Everything the relay holds or has in flight at once, across all rooms.
DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024
#: A big frame costs about this many copies of itself while it is read (the
#: reader's buffer, its slice, the unmasked copy) and forwarded.
READ_COPIES = 2
#: Per client address: rooms it may have open, new connections per second (burst).
DEFAULT_ROOMS_PER_ADDRESS = 16
DEFAULT_CONNECTIONS_PER_SECOND = 10.0
CONNECTION_BURST = 30
class MemoryBudget:
    """The bytes of frames the relay may hold at once, across every room: being
    read, held for a side that has not joined, or being forwarded.

    Single-threaded (the relay's event loop); a reservation that does not fit
    is refused, never waited for.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    @property
    def free(self) -> int:
        return self.limit - self.used

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


class BudgetExceeded(PayloadTooBig):
    """A frame that does not fit in what is left of the relay's memory budget.

    websockets closes the sender with 1009 and this text as the reason; the
    other rooms go on.
    """

    def __init__(self, size: int, free: int) -> None:
        super().__init__(size, max(0, free))
        self.wanted, self.free_bytes = size, free

    def __str__(self) -> str:
        return f"relay busy: no memory for a {self.wanted:,}-byte frame now; try again later"


class Meter:
    """Charges one connection's big frames to the budget before websockets reads them.

    websockets reads a frame's payload with ``reader.read_exact(length)`` once
    its header is parsed; reserving there refuses an over-budget frame at its
    header, before its bytes are buffered. What the handler later receives
    claims from this connection's reservations and gives them back once the
    frame is forwarded or dropped.
    """

    def __init__(self, budget: MemoryBudget, connection: ServerConnection) -> None:
        self.budget = budget
        self.unclaimed = 0
        reader = connection.protocol.reader
        original = reader.read_exact

        def read_exact(n: int) -> Any:
            if n >= SMALL_FRAME_BYTES:
                cost = n * READ_COPIES
                if not budget.reserve(cost):
                    raise BudgetExceeded(n, budget.free // READ_COPIES)
                self.unclaimed += cost
            return (yield from original(n))

        reader.read_exact = read_exact

    def claim(self, size: int) -> int:
        """The reservation a received frame (or fragment) of `size` bytes carries away."""
        claimed = min(self.unclaimed, size * READ_COPIES) if size >= SMALL_FRAME_BYTES // 2 else 0
        self.unclaimed -= claimed
        return claimed

    def close(self) -> None:
        self.budget.release(self.unclaimed)
        self.unclaimed = 0


class AddressLimits:
    """New connections per second, per client address (open rooms per address
    are the room table's, :mod:`imprint.relay.rooms`)."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens: dict[str, tuple[float, float]] = {}

    def connection_allowed(self, address: str) -> bool:
        now = time.monotonic()
        tokens, at = self._tokens.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if len(self._tokens) > 10_000:  # forget idle addresses
            self._tokens = {a: v for a, v in self._tokens.items() if now - v[1] < 60}
        if tokens < 1.0:
            self._tokens[address] = (tokens, now)
            return False
        self._tokens[address] = (tokens - 1.0, now)
        return True


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise: a relay that once
    held 1 GB of frames kept 2 GB after its abusers left)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(keep_bytes: int = 64 * 1024 * 1024) -> bool:
    """Keep up to `keep_bytes` of freed heap for the next frames instead of handing
    it to the OS and faulting it back in on the next frame.

    glibc serves a big frame (over 128 KiB at first) from a fresh mmap and gives
    it back on free, so every frame forwarded paid for zeroed pages twice over:
    a profile of the relay at 700 MB/s spent 28 % of its time appending to the
    read buffer, most of it page faults. Frames up to `keep_bytes` now come
    from the heap; the relay still trims it when it holds little
    (:func:`release_memory`). Process-wide, so only `imprint relay` calls it.

    Returns:
        True if glibc accepted the settings (False elsewhere: nothing changes).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, keep_bytes), (_M_TRIM_THRESHOLD, 2 * keep_bytes), (_M_TOP_PAD, keep_bytes // 4)))


def scrub(ws: ServerConnection) -> None:
    """Let go of whatever a finished connection still buffers (a frame half read when
    it aborted, frames queued for nobody) now, not when the garbage collector finds
    the connection's reference cycles: until then a budget already given back
    would still be in use."""
    with suppress(Exception):
        ws.protocol.reader.buffer.clear()
    with suppress(Exception):
        ws.recv_messages.frames.queue.clear()


def set_frame_cap(ws: ServerConnection, limit: int) -> None:
    """The largest message `ws` may send from its next frame on (websockets reads it per frame)."""
    ws.protocol.max_message_size = limit


