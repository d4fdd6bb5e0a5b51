"""Where the dashboard listens: 127.0.0.1 only, on a port bound before anything
starts, so a busy port is one clear line."""

from __future__ import annotations

import socket

from imprint.errors import ImprintError

DEFAULT_PORT = 8765
HOST = "127.0.0.1"


def bind_dashboard(port: int) -> socket.socket:
    """A listening socket on HOST:port, or ImprintError saying why not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ImprintError(
            f"cannot serve the dashboard on {HOST}:{port}: {exc.strerror or exc} "
            "(is another 'imprint ui' running? pick another --port)"
        ) from None
    return sock
