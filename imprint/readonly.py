"""Reading a data dir that cannot be written: a backup on read-only media, a
snapshot mounted read-only, a copy whose files are not the user's to change.

SQLite reads such files in place (``immutable``) when nothing waits in a
write-ahead log. Qdrant Edge cannot: it maps its segment files for writing
even to read them. What cannot be read in place is read from a private copy
in the temporary directory, made when the store is opened and removed when it
is closed; a copy that would not fit there is refused in one line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from loguru import logger

from imprint.errors import StoreError

#: Room left free in the temporary directory beyond the copy itself.
SPARE_BYTES = 64 * 1024 * 1024


def read_only_media(path: Path) -> bool:
    """Whether `path` (or, if absent, its folder) is on a read-only mount or not writable by us."""
    probe = path if path.exists() else path.parent
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(probe, os.W_OK)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Snapshot:
    """A private, writable copy of some files and folders (by their names), removed on :meth:`close`.

    Raises:
        StoreError: the copy would not fit in the temporary directory, or copying failed.
    """

    def __init__(self, sources: list[Path], *, what: str) -> None:
        sources = [s for s in sources if s.exists()]
        size = sum(_size(s) for s in sources)
        root = Path(tempfile.gettempdir())
        free = shutil.disk_usage(root).free
        if size + SPARE_BYTES > free:
            raise StoreError(
                f"{what} is on read-only media and cannot be read in place; a copy of it ({size / 2**20:,.0f} MB) "
                f"does not fit in {root} ({free / 2**20:,.0f} MB free): copy the data dir somewhere writable and "
                "use --data-dir there (or set TMPDIR)")
        self.dir = Path(tempfile.mkdtemp(prefix="imprint-read-only-"))
        try:
            for source in sources:
                if source.is_dir():
                    shutil.copytree(source, self.dir / source.name)
                else:
                    shutil.copy2(source, self.dir / source.name)
        except OSError as exc:
            self.close()
            raise StoreError(f"{what} is on read-only media and copying it to read it failed: "
                             f"{exc.strerror or exc}") from None
        logger.info("{} is on read-only media: reading a copy of it ({:,.0f} MB) in {}", what, size / 2**20, self.dir)

    def path(self, source: Path) -> Path:
        """Where the copy of `source` is."""
        return self.dir / source.name

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
