"""Finding the service of a data dir from a test (by the pid its lock file holds)."""

from __future__ import annotations

import fcntl
from pathlib import Path


def service_pid(data_dir: Path) -> int | None:
    """The pid of the service holding `data_dir`, or None when none holds it."""
    lock = data_dir / "service.lock"
    try:
        fh = open(lock, "a+")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None
