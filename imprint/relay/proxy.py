"""Real client addresses behind a proxy the operator trusts.

Behind HAProxy (or any proxy) every client has the proxy's address, so the
per-address limits would apply to everyone at once (the 17th room of
"everyone" refused). A relay started with ``--trusted-proxy CIDR`` takes the
client's address from

* the PROXY protocol header, version 1 (text) or 2 (binary), that HAProxy
  sends first with ``send-proxy`` / ``send-proxy-v2``, or else
* the ``X-Forwarded-For`` header, walked from the right past every trusted
  proxy,

and only when the TCP connection itself comes from a trusted address. From
anyone else a PROXY header is not read (the HTTP parser refuses the
connection) and ``X-Forwarded-For`` is ignored, so nobody can pick the
address they are limited as. Parsing here is sans-I/O; the server feeds it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Any

from imprint.errors import ConfigError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 header: "PROXY TCP6 <39> <39> 65535 65535\r\n" (the spec's 107).
V1_MAX = 107
#: A v2 header's address block is small; anything longer is refused.
V2_MAX_BODY = 4096

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyHeaderError(ValueError):
    """A PROXY header from a trusted proxy that cannot be read; the connection is dropped."""


def parse_networks(specs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--trusted-proxy`` values as networks ("10.0.0.0/8", "127.0.0.1", "::1").

    Raises:
        ConfigError: For a value that is not an address or CIDR.
    """
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--trusted-proxy {spec!r} is not an address or CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def _ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Which peers may speak for their clients, and what they say."""

    def __init__(self, specs: Iterable[str] = ()) -> None:
        self.networks = parse_networks(specs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        ip = _ip(address) if address else None
        return ip is not None and any(ip in network for network in self.networks)

    def forwarded_for(self, peer: str, header: str | None) -> str:
        """The client address for a connection from `peer` carrying `X-Forwarded-For: header`.

        `peer` itself when it is not trusted or sent no header. Otherwise the
        rightmost address that is not a trusted proxy (each proxy appends the
        address it saw); an entry that is not an address ends the walk at the
        last trusted hop, which is then the address limited.
        """
        if not header or not self.trusts(peer):
            return peer
        client = peer
        for entry in reversed(header.split(",")):
            ip = _ip(entry)
            if ip is None:
                return client
            client = str(ip)
            if not self.trusts(client):
                return client
        return client

    def client_address(self, connection: Any, request: Any) -> str:
        """The address `connection` is limited as (see the module docstring)."""
        peer = peer_of(connection)
        if not self.networks:
            return peer
        told = getattr(connection, "proxied_address", None)
        if told:
            return told
        return self.forwarded_for(peer, request.headers.get("X-Forwarded-For"))


def peer_of(connection: Any) -> str:
    """The connection's own remote address (an IPv4-mapped IPv6 one as IPv4), or "?"."""
    remote = getattr(connection, "remote_address", None)
    if isinstance(remote, tuple) and remote:
        ip = _ip(str(remote[0]))
        return str(ip) if ip is not None else str(remote[0])
    return "?"


def parse_proxy_header(data: bytes) -> tuple[str | None, int] | None:
    """Read a PROXY protocol header at the start of `data`.

    Returns:
        None when more bytes are needed to decide; otherwise ``(address, used)``:
        the client's address (None for a LOCAL/UNKNOWN header, which keeps the
        peer's own) and how many bytes the header took (0 when `data` does not
        start with a PROXY header at all, e.g. plain HTTP from the proxy).

    Raises:
        ProxyHeaderError: A header that starts right but cannot be read.
    """
    if not data:
        return None
    if V2_SIGNATURE.startswith(data[:12]) and data[:1] == b"\r":
        if len(data) < 16:
            return None
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[:6]):
        if len(data) < 6:
            return None
        end = data.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(data) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 header without its CRLF in 107 bytes")
            return None
        return _parse_v1(data[:end].decode("ascii", "replace")), end + 2
    return None, 0


def _parse_v1(line: str) -> str | None:
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"bad PROXY v1 header: {line[:60]!r}")
    ip = _ip(parts[2])
    if ip is None or (parts[1] == "TCP4") != isinstance(ip, ipaddress.IPv4Address):
        raise ProxyHeaderError(f"bad source address in PROXY v1 header: {parts[2][:45]!r}")
    return str(ip)


def _parse_v2(data: bytes) -> tuple[str | None, int]:
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("bad PROXY v2 signature")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version_command >> 4} is not 2")
    if length > V2_MAX_BODY:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes")
    if len(data) < 16 + length:
        return None  # type: ignore[return-value]
    body = data[16:16 + length]
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (health checks)
        return None, 16 + length
    if command != 1:
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    if family >> 4 == 1 and len(body) >= 12:
        return str(ipaddress.IPv4Address(body[:4])), 16 + length
    if family >> 4 == 2 and len(body) >= 36:
        return str(_ip(str(ipaddress.IPv6Address(body[:16])))), 16 + length
    if family >> 4 in (0, 3):  # UNSPEC, or a Unix socket: keep the peer's address
        return None, 16 + length
    raise ProxyHeaderError(f"PROXY v2 address family {family:#x} with {len(body)} bytes")
