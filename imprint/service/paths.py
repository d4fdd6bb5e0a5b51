"""Where a data dir's service listens and what it holds, and how to reach a
Unix socket whose path is longer than the kernel takes (108 bytes).

Light: on every command's path.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: The service's socket, inside the data dir (0700); the socket itself is 0600.
SOCKET_NAME = "imprint.sock"
#: Held (flock) by the running service for its whole life: one service per data dir.
LOCK_NAME = "service.lock"
#: Longest socket path bound or connected as it is; longer ones go through /proc.
_MAX_SUN_PATH = 100


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


def service_log(data_dir: Path) -> Path:
    """What the service process writes to stderr (its structured log is logs/imprint.log)."""
    return data_dir / "logs" / "service.err"


@contextmanager
def reachable(path: Path) -> Iterator[str]:
    """An address for `path` that fits a sockaddr_un: the path itself, or, when it is
    too long (deep test folders), the same file through an open descriptor of its
    directory (/proc/self/fd/N/NAME), valid while the context lasts."""
    text = str(path)
    if len(text.encode()) <= _MAX_SUN_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect(path: Path, *, timeout: float | None = None) -> socket.socket:
    """A connected Unix socket to `path`; OSError (ENOENT, ECONNREFUSED…) when nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with reachable(path) as address:
            sock.connect(address)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock
