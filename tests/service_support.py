"""Finding the service of a data dir from a test (by the pid its lock file holds), and whether it runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process `pid` still runs: a zombie whose threads have all exited (its files closed) does not."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            zombie = fh.read().split(") ", 1)[1][:1] == "Z"
        return not zombie or len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


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
