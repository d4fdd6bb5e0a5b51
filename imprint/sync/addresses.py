"""Relay addresses as users type them (SPEC "Addresses the user types")."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

from imprint.errors import ConfigError

DEFAULT_PORT = 8430
ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PIN_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits
_ROOM_ALPHABET = string.ascii_lowercase + string.digits


def new_pin() -> str:
    """8 characters from A-Z a-z 0-9, from the OS CSPRNG (62^8 ≈ 2.2e14 PINs)."""
    return "".join(secrets.choice(_PIN_ALPHABET) for _ in range(8))


def new_room() -> str:
    return "".join(secrets.choice(_ROOM_ALPHABET) for _ in range(10))


def _is_local(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


def relay_base(relay: str) -> str:
    """`sync.example.com` → `wss://sync.example.com`; localhost/127.* → ws://; explicit schemes kept."""
    relay = relay.strip().rstrip("/")
    if not relay:
        raise ConfigError("empty relay address")
    if "://" in relay:
        parts = urlsplit(relay)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"bad relay address {relay!r}: use ws://HOST[:PORT] or wss://HOST[:PORT]")
        if parts.path not in ("", "/"):
            raise ConfigError(f"bad relay address {relay!r}: no path expected")
        return f"{parts.scheme}://{parts.netloc}"
    if "/" in relay or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", relay):
        raise ConfigError(f"bad relay address {relay!r}")
    host = relay.rsplit(":", 1)[0] if relay.count(":") == 1 else relay
    return f"{'ws' if _is_local(host) else 'wss'}://{relay}"


@dataclass(frozen=True)
class Target:
    """Where a consumer joins: relay base URL and room."""

    relay: str
    room: str

    def url(self, role: str) -> str:
        return f"{self.relay}/{self.room}?role={role}"


def parse_target(target: str, *, default_relay: str | None) -> Target:
    """A bare room id (default relay), `HOST/ROOM`, or `ws[s]://HOST/ROOM`."""
    target = target.strip()
    if "://" in target:
        parts = urlsplit(target)
        room = parts.path.strip("/")
        base = relay_base(f"{parts.scheme}://{parts.netloc}")
    elif "/" in target:
        host, _, room = target.partition("/")
        base = relay_base(host)
    else:
        room = target
        if not default_relay:
            raise ConfigError(
                f"{target!r} is a bare room id but no default relay is set: type the HOST/ROOM that serve printed, "
                "or set IMPRINT_RELAY"
            )
        base = relay_base(default_relay)
    if not ROOM_RE.match(room):
        raise ConfigError(f"bad room id {room!r} in {target!r}")
    return Target(relay=base, room=room)


def default_relay() -> str | None:
    return os.environ.get("IMPRINT_RELAY") or None


def lan_address() -> str:
    """An address other machines on the LAN can reach this one at (best effort, no traffic sent)."""
    candidates: list[str] = []
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family == socket.AF_INET:
                    candidates.append(a.address)
    except Exception:
        pass
    try:
        candidates.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    for addr in candidates:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if not ip.is_loopback and not ip.is_link_local:
            return addr
    return "127.0.0.1"


def display_target(base: str, room: str, *, default: str | None) -> str:
    """What the other machine types: the bare room on the default relay, else HOST/ROOM or the URL."""
    if default and relay_base(default) == base:
        return room
    scheme, _, netloc = base.partition("://")
    host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    implied = "ws" if _is_local(host) else "wss"
    return f"{netloc}/{room}" if scheme == implied else f"{base}/{room}"
