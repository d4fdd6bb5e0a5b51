"""What this machine's environment says about syncing: the user's default relay
(IMPRINT_RELAY) and an address the LAN can reach it at. Kept out of
:mod:`imprint.protocol`, which reads no environment and touches no socket."""

from __future__ import annotations

import ipaddress
import os
import socket


def default_relay() -> str | None:
    """The relay a bare room id means (IMPRINT_RELAY), or None."""
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
