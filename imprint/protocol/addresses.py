"""Relay addresses, rooms and PINs as users type them.

Relay forms: a bare host (``sync.example.com``, ``host:8430``) means ``wss://``
unless the host is ``localhost`` or ``127.*``; ``ws://`` and ``wss://`` are
taken as given; ``http://`` and ``https://`` mean ``ws://`` and ``wss://``, as
Imprint's own Go CLI reads them. A joining side's target is a bare room id (on
the default relay), ``HOST/ROOM``, or ``SCHEME://HOST/ROOM``.

Everything a user typed is checked here, once, so a bad host, port, room or
PIN is a one-line :class:`~imprint.errors.ConfigError`, never an exception
from deep inside a socket library.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

from imprint.errors import ConfigError

DEFAULT_PORT = 8430
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PIN_LENGTH = 8
PIN_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits
_PIN_RE = re.compile(rf"[A-Za-z0-9]{{{PIN_LENGTH}}}")
_ROOM_ALPHABET = string.ascii_lowercase + string.digits
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
#: Scheme a user may type → websocket scheme.
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
#: Longest piece of user input repeated back in an error message.
_ECHO_CHARS = 60


def shorten(text: str, limit: int = _ECHO_CHARS) -> str:
    """`text` as a quoted literal, cut to about `limit` characters (never echo a 5 KB argument back)."""
    literal = repr(text)
    return literal if len(literal) <= limit else literal[: limit - 4] + "…" + literal[0]


def new_pin() -> str:
    """8 characters from A-Z a-z 0-9, from the OS CSPRNG (62^8 ≈ 2.2e14 PINs)."""
    return "".join(secrets.choice(PIN_ALPHABET) for _ in range(PIN_LENGTH))


def check_pin(pin: str) -> str:
    """The PIN as typed, without surrounding blanks; ConfigError (not echoing it) if it has not the PIN's form."""
    pin = pin.strip()
    if not _PIN_RE.fullmatch(pin):
        raise ConfigError(f"the PIN is {PIN_LENGTH} letters or digits, as printed by serve")
    return pin


def new_room() -> str:
    return "".join(secrets.choice(_ROOM_ALPHABET) for _ in range(10))


def _is_local(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


def _check_host(host: str | None, typed: str) -> str:
    if not host:
        raise ConfigError(f"bad relay address {shorten(typed)}: no host")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise ConfigError(f"bad relay address {shorten(typed)}: {shorten(host)} is not a host name or IP address")
    return host


def _netloc(scheme: str, rest: str, typed: str) -> str:
    """Validate `rest` (HOST[:PORT]) and return it as a URL's netloc."""
    parts = urlsplit(f"{scheme}://{rest}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"bad relay address {shorten(typed)}: no user name or password expected")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"bad relay address {shorten(typed)}: expected HOST[:PORT] with a port from 1 to 65535")
    host = _check_host(parts.hostname, typed)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def relay_base(relay: str) -> str:
    """The relay's base URL: `sync.example.com` → `wss://sync.example.com`, localhost/127.* → ws://,
    http(s):// → ws(s)://, ws(s):// kept.

    Raises:
        ConfigError: not a relay address (the message shows at most a short piece of it).
    """
    typed = relay
    relay = relay.strip().rstrip("/")
    if not relay:
        raise ConfigError("empty relay address")
    if "://" in relay:
        scheme, _, rest = relay.partition("://")
        ws_scheme = _SCHEMES.get(scheme.lower())
        if ws_scheme is None:
            raise ConfigError(
                f"bad relay address {shorten(typed)}: use HOST, ws://HOST[:PORT], wss://HOST[:PORT] (or http/https)"
            )
        if "/" in rest or "?" in rest or "#" in rest:
            raise ConfigError(f"bad relay address {shorten(typed)}: no path expected")
        return f"{ws_scheme}://{_netloc(ws_scheme, rest, typed)}"
    if "/" in relay or "?" in relay or "#" in relay:
        raise ConfigError(f"bad relay address {shorten(typed)}: no path expected")
    netloc = _netloc("ws", relay, typed)
    host = urlsplit(f"ws://{netloc}").hostname or ""
    return f"{'ws' if _is_local(host) else 'wss'}://{netloc}"


@dataclass(frozen=True)
class Target:
    """Where a consumer joins: relay base URL and room."""

    relay: str
    room: str

    def url(self, role: str) -> str:
        return f"{self.relay}/{self.room}?role={role}"


def check_room(room: str, typed: str | None = None) -> str:
    if not room:
        raise ConfigError(f"no room id in {shorten(typed or room)}: type the HOST/ROOM that serve printed")
    if not ROOM_RE.fullmatch(room):
        where = f" in {shorten(typed)}" if typed is not None and typed != room else ""
        raise ConfigError(f"bad room id {shorten(room)}{where}: use 1 to 64 letters, digits, '-' or '_'")
    return room


def parse_target(target: str, *, default_relay: str | None) -> Target:
    """A bare room id (default relay), `HOST/ROOM`, or `SCHEME://HOST/ROOM`.

    Raises:
        ConfigError: the target is malformed, or a bare room has no relay to go with.
    """
    typed = target
    target = target.strip()
    if not target:
        raise ConfigError("empty target: type the ROOM, HOST/ROOM or ws://HOST/ROOM that serve printed")
    if "://" in target:
        scheme, _, rest = target.partition("://")
        host, _, room = rest.partition("/")
        base = relay_base(f"{scheme}://{host}") if host else relay_base(f"{scheme}://")
    elif "/" in target:
        host, _, room = target.partition("/")
        base = relay_base(host)
    else:
        room = target
        if not default_relay:
            raise ConfigError(
                f"{shorten(target)} is a bare room id but no default relay is set: type the HOST/ROOM that serve "
                "printed, or set IMPRINT_RELAY"
            )
        base = relay_base(default_relay)
    return Target(relay=base, room=check_room(room.strip("/"), typed))


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` where the built-in relay listens (`:PORT` means every interface)."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep:
        raise ConfigError(f"bad --listen {shorten(listen)}: expected HOST:PORT, e.g. 0.0.0.0:8430")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad --listen {shorten(listen)}: the port must be a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad --listen {shorten(listen)}: the port must be a number from 0 to 65535")
    host = host.strip("[]") or "0.0.0.0"
    _check_host(host, listen)
    return host, port


def display_target(base: str, room: str, *, default: str | None) -> str:
    """What the other machine types: the bare room on the default relay, else HOST/ROOM or the URL."""
    if default and relay_base(default) == base:
        return room
    scheme, _, netloc = base.partition("://")
    host = urlsplit(base).hostname or ""
    implied = "ws" if _is_local(host) else "wss"
    return f"{netloc}/{room}" if scheme == implied else f"{base}/{room}"
