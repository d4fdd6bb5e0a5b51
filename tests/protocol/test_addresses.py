"""Relay addresses, targets, rooms and PINs as users type them: every bad one is
a one-line ConfigError that does not echo a long argument back."""

from __future__ import annotations

import pytest

from imprint.errors import ConfigError
from imprint.protocol.addresses import (
    Target,
    check_pin,
    display_target,
    parse_listen,
    parse_target,
    relay_base,
)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("sync.example.com", "wss://sync.example.com"),
        ("sync.example.com:9000", "wss://sync.example.com:9000"),
        ("localhost", "ws://localhost"),
        ("127.0.0.1:8430", "ws://127.0.0.1:8430"),
        ("[::1]:8430", "ws://[::1]:8430"),
        ("ws://sync.example.com", "ws://sync.example.com"),
        ("wss://localhost:8430/", "wss://localhost:8430"),
        # Imprint's own Go CLI reads http(s) as ws(s); so do we.
        ("http://sync.example.com:8430", "ws://sync.example.com:8430"),
        ("https://sync.example.com", "wss://sync.example.com"),
        ("HTTPS://sync.example.com", "wss://sync.example.com"),
    ],
)
def test_relay_forms(typed: str, expected: str) -> None:
    assert relay_base(typed) == expected


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("ws://127.0.0.1:99999", "port from 1 to 65535"),
        ("127.0.0.1:0", "port from 1 to 65535"),
        ("::::", "expected HOST"),
        ("ftp://host", "use HOST, ws://"),
        ("ws://host/path", "no path expected"),
        ("ws://user:secret@host", "no user name or password"),
        ("bad host name", "not a host name"),
        ("", "empty relay address"),
    ],
)
def test_bad_relay_addresses_are_config_errors(typed: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        relay_base(typed)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("ws://127.0.0.1:8430/room1", Target("ws://127.0.0.1:8430", "room1")),
        ("http://127.0.0.1:8430/room1", Target("ws://127.0.0.1:8430", "room1")),
        ("https://sync.example.com/room1", Target("wss://sync.example.com", "room1")),
        ("sync.example.com/room_1-x", Target("wss://sync.example.com", "room_1-x")),
        ("  localhost:8430/abc  ", Target("ws://localhost:8430", "abc")),
    ],
)
def test_target_forms(typed: str, expected: Target) -> None:
    assert parse_target(typed, default_relay=None) == expected


def test_a_bare_room_needs_a_default_relay() -> None:
    assert parse_target("abc", default_relay="sync.example.com") == Target("wss://sync.example.com", "abc")
    with pytest.raises(ConfigError, match="IMPRINT_RELAY"):
        parse_target("abc", default_relay=None)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("ws://127.0.0.1:99999/room", "port from 1 to 65535"),
        ("::::/room", "expected HOST"),
        ("wss://host/", "no room id"),
        ("host/room/extra", "bad room id"),
        ("host/r" + "o" * 70, "bad room id"),
        ("", "empty target"),
    ],
)
def test_bad_targets_are_config_errors(typed: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_target(typed, default_relay=None)


def test_a_5_kb_bad_target_is_not_echoed_back_whole() -> None:
    typed = "ws://" + "h" * 5000 + ":1/room"
    with pytest.raises(ConfigError) as info:
        parse_target(typed, default_relay=None)
    assert len(str(info.value)) < 300


def test_pin_is_checked_without_being_echoed() -> None:
    assert check_pin("  Ab3xY9Kq ") == "Ab3xY9Kq"
    for bad in ("short", "Ab3xY9Kq1", "Ab3xY9K!"):
        with pytest.raises(ConfigError) as info:
            check_pin(bad)
        assert bad not in str(info.value)


def test_listen_forms() -> None:
    assert parse_listen("0.0.0.0:8430") == ("0.0.0.0", 8430)
    assert parse_listen(":0") == ("0.0.0.0", 0)
    assert parse_listen("[::1]:8430") == ("::1", 8430)
    for bad in ("8430", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match="--listen"):
            parse_listen(bad)


def test_what_the_other_machine_types() -> None:
    assert display_target("ws://127.0.0.1:8430", "r", default=None) == "127.0.0.1:8430/r"
    assert display_target("wss://sync.example.com", "r", default=None) == "sync.example.com/r"
    assert display_target("ws://sync.example.com:8430", "r", default=None) == "ws://sync.example.com:8430/r"
    assert display_target("wss://sync.example.com", "r", default="sync.example.com") == "r"
