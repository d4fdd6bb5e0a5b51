"""The relay's rules, without I/O: which rooms exist, who is in each, what is
held for a side not there yet, what is refused and why, and the counters an
operator reads on ``/metrics``.

:class:`RoomTable` never touches a socket, a clock of its own or an event
loop: the server (:mod:`imprint.relay.server`) calls it with what happened
(a client wants to join, a frame arrived for a side that is absent, a client
left) and does the I/O its answers call for. Connections are opaque to it.
Tests drive it directly (``tests/test_relay_rooms.py``).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

ROLES = ("provider", "consumer")

CLOSE_PEER_DISCONNECTED = 1000
CLOSE_SHUTTING_DOWN = 1001
CLOSE_TOO_BIG = 1009
CLOSE_RELAY_ERROR = 1011
#: IANA's "Service Restart": the relay is draining for a restart; run the sync
#: again (through a proxy it reaches another relay).
CLOSE_RESTARTING = 1012
CLOSE_RELAY_FULL = 1013
CLOSE_ROLE_TAKEN = 4409
CLOSE_ROOM_EXPIRED = 4410
CLOSE_TOO_MANY_HELD = 4413
CLOSE_TOO_MANY_ROOMS = 4429

RESTARTING_REASON = "relay restarting, run it again"

#: A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
MAX_CLOSE_REASON_BYTES = 123


def other(role: str) -> str:
    return "consumer" if role == "provider" else "provider"


def close_reason(text: str) -> str:
    """Trim ``text`` so it fits in a close frame."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


class Refused(Exception):
    """Ends one connection with a close code.

    Attributes:
        code: The WebSocket close code.
        reason: The close frame's text (trimmed to fit).
        why: A short label for metrics (``refusals_total{reason=…}``).
    """

    def __init__(self, code: int, reason: str, why: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = close_reason(reason)
        self.why = why


@dataclass(eq=False)
class Room:
    """The two sides of one room and the frames held for a side not yet there.

    ``held`` and ``held_bytes`` are keyed by the *sender's* role; a held entry
    is ``(frame, size, claim)`` where ``claim`` is the frame's share of the
    relay's memory budget, given back when the frame leaves or is dropped.
    ``io`` is the server's own per-room state (locks, expiry timer).
    """

    room_id: str
    owner: str = ""
    created: float = field(default_factory=time.monotonic)
    sides: dict[str, Any] = field(default_factory=dict)
    held: dict[str, collections.deque[tuple[str | bytes, int, int]]] = field(
        default_factory=lambda: {role: collections.deque() for role in ROLES}
    )
    held_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    closed: bool = False
    io: Any = None


@dataclass
class Counters:
    """Totals since the relay started (Prometheus counters)."""

    rooms_opened: int = 0
    connections_accepted: int = 0
    frames_forwarded: int = 0
    bytes_forwarded: int = 0
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)


class RoomTable:
    """Who is in which room, what is held, and every per-room and per-address limit.

    Args:
        max_rooms: Rooms that may exist at once.
        rooms_per_address: Rooms one client address may have open.
        max_pending_frames: Frames held per room and direction until the other side joins.
        max_pending_bytes: Bytes held per room and direction, likewise.
    """

    def __init__(self, *, max_rooms: int, rooms_per_address: int, max_pending_frames: int,
                 max_pending_bytes: int) -> None:
        self.max_rooms = max_rooms
        self.rooms_per_address = rooms_per_address
        self.max_pending_frames = max_pending_frames
        self.max_pending_bytes = max_pending_bytes
        self.rooms: dict[str, Room] = {}
        self.open_rooms: collections.Counter[str] = collections.Counter()
        #: Set when the relay drains for a restart: no new room opens.
        self.draining = False
        self.counters = Counters()

    def __len__(self) -> int:
        return len(self.rooms)

    def refuse(self, why: str) -> None:
        """Count a refusal decided outside the table (HTTP-level ones, a frame too big)."""
        self.counters.refusals[why] += 1

    def join(self, room_id: str, role: str, address: str, connection: Any) -> tuple[Room, bool]:
        """Seat `connection` as `role` of `room_id`, opening the room if it is new.

        Returns:
            ``(room, opened)``; ``opened`` is True when this join created it.

        Raises:
            Refused: relay draining (1012) or full (1013), the address has too many
                rooms (4429), the role is taken (4409). Nothing changes then.
        """
        room = self.rooms.get(room_id)
        opened = room is None
        try:
            if room is None:
                if self.draining:
                    raise Refused(CLOSE_RESTARTING, RESTARTING_REASON, "draining")
                if len(self.rooms) >= self.max_rooms:
                    raise Refused(CLOSE_RELAY_FULL, "relay full", "relay_full")
                if self.open_rooms[address] >= self.rooms_per_address:
                    raise Refused(CLOSE_TOO_MANY_ROOMS, f"too many rooms open from your address "
                                  f"({self.rooms_per_address}); close some or try later", "rooms_per_address")
                room = Room(room_id, owner=address)
                self.rooms[room_id] = room
                self.open_rooms[address] += 1
                self.counters.rooms_opened += 1
            elif role in room.sides:
                raise Refused(CLOSE_ROLE_TAKEN, f"a {role} is already connected to room {room_id}", "role_taken")
        except Refused as refusal:
            self.counters.refusals[refusal.why] += 1
            raise
        room.sides[role] = connection
        return room, opened

    def must_hold(self, room: Room, sender: str) -> bool:
        """Whether a frame from `sender` waits: its receiver is absent, or earlier frames still wait."""
        return other(sender) not in room.sides or bool(room.held[sender])

    def hold(self, room: Room, sender: str, frame: str | bytes, size: int, claim: int = 0) -> None:
        """Keep `frame` for the side that has not joined yet.

        Raises:
            Refused: 4413 when the room's hold for that direction is full
                (the frame is not kept; its claim stays with the caller).
        """
        held = room.held[sender]
        if len(held) + 1 > self.max_pending_frames or room.held_bytes[sender] + size > self.max_pending_bytes:
            self.counters.refusals["too_many_held"] += 1
            raise Refused(
                CLOSE_TOO_MANY_HELD,
                f"too many frames held before the {other(sender)} joined "
                f"(limit {self.max_pending_frames} frames, {self.max_pending_bytes} bytes)",
                "too_many_held",
            )
        held.append((frame, size, claim))
        room.held_bytes[sender] += size

    def take_held(self, room: Room, sender: str) -> tuple[str | bytes, int, int] | None:
        """The oldest frame held from `sender`, removed from the hold; None when none is left."""
        held = room.held[sender]
        if not held:
            return None
        item = held.popleft()
        room.held_bytes[sender] -= item[1]
        return item

    def forwarded(self, size: int) -> None:
        self.counters.frames_forwarded += 1
        self.counters.bytes_forwarded += size

    def retire(self, room: Room) -> tuple[int, list[int]]:
        """Close `room` and forget it; a new client of its id starts a new room.

        Frames held for a side that is present are still being delivered by the
        server; those held for a side that never came are dropped here.

        Returns:
            ``(dropped, claims)``: how many frames were dropped, and their budget
            claims for the caller to give back.
        """
        room.closed = True
        if self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]
        if room.owner:  # once per room: the owner is cleared below
            self.open_rooms[room.owner] -= 1
            if self.open_rooms[room.owner] <= 0:
                del self.open_rooms[room.owner]
            room.owner = ""
        dropped, claims = 0, []
        for sender, frames in room.held.items():
            if other(sender) not in room.sides:
                dropped += len(frames)
                claims.extend(claim for _, _, claim in frames)
                frames.clear()
                room.held_bytes[sender] = 0
        return dropped, claims

    def waiting(self) -> list[Room]:
        """Rooms with one side only: nothing has moved in them yet."""
        return [room for room in self.rooms.values() if len(room.sides) < 2]

    def held_totals(self) -> tuple[int, int]:
        """Frames and bytes held across every room."""
        frames = size = 0
        for room in self.rooms.values():
            for role in ROLES:
                frames += len(room.held[role])
                size += room.held_bytes[role]
        return frames, size
