"""The relay's room table, without sockets: every rule it enforces, driven directly."""

from __future__ import annotations

import pytest

from imprint.relay.rooms import (
    CLOSE_RELAY_FULL,
    CLOSE_RESTARTING,
    CLOSE_ROLE_TAKEN,
    CLOSE_TOO_MANY_HELD,
    CLOSE_TOO_MANY_ROOMS,
    Refused,
    RoomTable,
    close_reason,
)

pytestmark = pytest.mark.timeout(10)


def table(**limits: int) -> RoomTable:
    options = {"max_rooms": 10, "rooms_per_address": 5, "max_pending_frames": 3, "max_pending_bytes": 100}
    options.update(limits)
    return RoomTable(**options)


def test_the_first_client_opens_a_room_and_the_second_role_joins_it() -> None:
    rooms = table()
    room, opened = rooms.join("r", "provider", "10.0.0.1", "conn-a")
    assert opened and len(rooms) == 1 and rooms.open_rooms["10.0.0.1"] == 1
    same, opened = rooms.join("r", "consumer", "10.0.0.2", "conn-b")
    assert same is room and not opened
    assert room.sides == {"provider": "conn-a", "consumer": "conn-b"}
    # The room counts against the address that opened it, not the joiner's.
    assert rooms.open_rooms == {"10.0.0.1": 1}
    assert rooms.counters.rooms_opened == 1 and rooms.waiting() == []


def test_a_taken_role_is_refused_and_the_holder_keeps_it() -> None:
    rooms = table()
    room, _ = rooms.join("r", "provider", "a", "first")
    with pytest.raises(Refused) as info:
        rooms.join("r", "provider", "b", "second")
    assert info.value.code == CLOSE_ROLE_TAKEN and "a provider is already connected to room r" in info.value.reason
    assert room.sides == {"provider": "first"}
    assert rooms.counters.refusals["role_taken"] == 1


def test_a_full_relay_refuses_new_rooms_but_not_joins() -> None:
    rooms = table(max_rooms=1)
    rooms.join("one", "provider", "a", 1)
    with pytest.raises(Refused) as info:
        rooms.join("two", "provider", "b", 2)
    assert info.value.code == CLOSE_RELAY_FULL and "two" not in rooms.rooms
    rooms.join("one", "consumer", "b", 3)  # joining is never refused for fullness
    assert rooms.counters.refusals["relay_full"] == 1


def test_one_address_opens_at_most_its_rooms_and_retiring_one_frees_a_place() -> None:
    rooms = table(rooms_per_address=2)
    first, _ = rooms.join("r1", "provider", "a", 1)
    rooms.join("r2", "provider", "a", 2)
    with pytest.raises(Refused) as info:
        rooms.join("r3", "provider", "a", 3)
    assert info.value.code == CLOSE_TOO_MANY_ROOMS
    rooms.join("r3", "provider", "b", 4)  # another address is not affected
    rooms.retire(first)
    assert rooms.open_rooms["a"] == 1
    rooms.join("r4", "provider", "a", 5)
    rooms.retire(first)  # retiring twice counts once
    assert rooms.open_rooms["a"] == 2


def test_frames_wait_for_the_absent_side_in_order_within_the_hold_limits() -> None:
    rooms = table(max_pending_frames=2, max_pending_bytes=10)
    room, _ = rooms.join("r", "provider", "a", 1)
    assert rooms.must_hold(room, "provider")
    rooms.hold(room, "provider", b"abc", 3, claim=7)
    rooms.hold(room, "provider", b"defg", 4)
    assert rooms.held_totals() == (2, 7)
    with pytest.raises(Refused) as info:
        rooms.hold(room, "provider", b"x", 1)  # a third frame
    assert info.value.code == CLOSE_TOO_MANY_HELD and "limit 2 frames, 10 bytes" in info.value.reason
    rooms.join("r", "consumer", "b", 2)
    # Held frames go first: a new frame waits while any is still held.
    assert rooms.must_hold(room, "provider")
    assert rooms.take_held(room, "provider") == (b"abc", 3, 7)
    assert rooms.take_held(room, "provider") == (b"defg", 4, 0)
    assert rooms.take_held(room, "provider") is None
    assert not rooms.must_hold(room, "provider") and rooms.held_totals() == (0, 0)


def test_the_byte_limit_refuses_a_frame_that_would_pass_it() -> None:
    rooms = table(max_pending_frames=10, max_pending_bytes=10)
    room, _ = rooms.join("r", "consumer", "a", 1)
    rooms.hold(room, "consumer", b"123456", 6)
    with pytest.raises(Refused):
        rooms.hold(room, "consumer", b"12345", 5)
    assert rooms.held_totals() == (1, 6) and rooms.counters.refusals["too_many_held"] == 1


def test_retiring_drops_what_was_held_for_a_side_that_never_came_and_gives_back_its_claims() -> None:
    rooms = table()
    room, _ = rooms.join("r", "provider", "a", 1)
    rooms.hold(room, "provider", b"one", 3, claim=30)
    rooms.hold(room, "provider", b"two", 3, claim=40)
    dropped, claims = rooms.retire(room)
    assert (dropped, sorted(claims)) == (2, [30, 40])
    assert room.closed and len(rooms) == 0 and rooms.open_rooms == {}
    assert rooms.held_totals() == (0, 0)
    # The id is free again: a new client starts a new room.
    again, opened = rooms.join("r", "provider", "a", 2)
    assert opened and again is not room


def test_frames_held_for_a_present_side_survive_retirement_for_delivery() -> None:
    rooms = table()
    room, _ = rooms.join("r", "provider", "a", 1)
    rooms.hold(room, "provider", b"last words", 10)
    rooms.join("r", "consumer", "b", 2)
    dropped, claims = rooms.retire(room)
    assert dropped == 0 and claims == [] and len(room.held["provider"]) == 1


def test_a_draining_table_opens_no_room_but_seats_the_second_side_of_one_under_way() -> None:
    rooms = table()
    room, _ = rooms.join("busy", "provider", "a", 1)
    waiting, _ = rooms.join("alone", "consumer", "c", 3)
    rooms.draining = True
    with pytest.raises(Refused) as info:
        rooms.join("new", "provider", "b", 2)
    assert info.value.code == CLOSE_RESTARTING and info.value.reason == "relay restarting, run it again"
    rooms.join("busy", "consumer", "b", 4)
    assert room.sides.keys() == {"provider", "consumer"}
    assert rooms.waiting() == [waiting]
    assert rooms.counters.refusals["draining"] == 1


def test_counters_add_up() -> None:
    rooms = table()
    rooms.forwarded(100)
    rooms.forwarded(28)
    rooms.refuse("budget")
    assert (rooms.counters.frames_forwarded, rooms.counters.bytes_forwarded) == (2, 128)
    assert rooms.counters.refusals["budget"] == 1


def test_a_close_reason_is_cut_to_fit_a_control_frame_on_a_character_boundary() -> None:
    text = "é" * 100  # 200 bytes
    cut = close_reason(text)
    assert len(cut.encode()) <= 123 and text.startswith(cut) and cut
    assert close_reason("short") == "short"
