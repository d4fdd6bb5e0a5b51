"""Free disk space: checked before every write, so no store meets a full disk.

Qdrant Edge keeps its segments in memory-mapped, sparse files: a page written
when the disk has no block left kills the process with SIGBUS, and SQLite
half-way through a transaction leaves errors such as "cannot rollback". So
each write first asks :func:`ensure_room` for its estimated size plus a floor
that stays free (as Syncthing's ``minDiskFree``: 1 % of the disk by default,
``IMPRINT_MIN_DISK_FREE`` to change it, e.g. ``2%`` or ``500M``), and is
refused with one clear line when it would not fit. Nothing is lost: a sync
stops and what it received waits in the spool; reads go on working.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imprint.errors import ConfigError, DiskFullError

DEFAULT_MIN_FREE = "1%"
#: What a write may make an engine allocate besides its own bytes (a WAL record, index pages, a
#: new chunk of a memory-mapped file).
HEADROOM = 4 * 1024**2
#: A write's bytes as the stores end up holding them: spool, WAL, segment and index copies.
GROWTH = 4


def min_free(total: int) -> int:
    """The bytes to keep free on a disk of `total` bytes (IMPRINT_MIN_DISK_FREE, default 1 %)."""
    from imprint.spool import parse_size

    setting = (os.environ.get("IMPRINT_MIN_DISK_FREE") or DEFAULT_MIN_FREE).strip()
    try:
        if setting.endswith("%"):
            share = float(setting[:-1])
            if not 0 <= share < 100:
                raise ValueError("a share of the disk is between 0% and 100%")
            return int(total * share / 100)
        return 0 if setting == "0" else parse_size(setting)
    except ValueError as exc:
        raise ConfigError(f"IMPRINT_MIN_DISK_FREE={setting!r}: {exc} (e.g. 1%, 500M)") from None


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def ensure_room(path: Path, payload: int) -> None:
    """Refuse (DiskFullError) a write of about `payload` bytes under `path` that would leave
    less than the floor free on its disk."""
    usage = shutil.disk_usage(_existing(path))
    floor = min_free(usage.total)
    needed = payload * GROWTH + HEADROOM
    if usage.free - needed < floor:
        mb = 1024**2
        raise DiskFullError(
            f"disk nearly full: {usage.free / mb:,.0f} MB free at {_existing(path)}, "
            f"{(needed + floor) / mb:,.0f} MB needed ({floor / mb:,.0f} MB of it kept free: "
            "IMPRINT_MIN_DISK_FREE); nothing was lost: free some space and run it again")
