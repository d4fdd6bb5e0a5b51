"""Which files `imprint ingest` reads: text under the roots given, minus what git ignores."""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Files larger than this are skipped (counted), unless --max-size says otherwise.
DEFAULT_MAX_BYTES = 2 * 1024**2
#: Directories never entered (besides hidden ones).
SKIP_DIRS = {"node_modules", "__pycache__", "venv", ".venv", "dist", "build", "target"}


@dataclass(frozen=True)
class Candidate:
    """A file to ingest: where it is, its `source` (the path from the root given), its mtime and size."""

    path: Path
    source: str
    mtime: float
    size: int


def walk(root: Path) -> Iterator[Path]:
    """Every regular file under `root` (or `root` itself), in a stable order, minus what git ignores,
    hidden paths (.git, .env…) and build or dependency directories."""
    if root.is_file():
        yield root
        return
    listed = _git_files(root)
    if listed is not None:
        yield from (root / name for name in sorted(listed)
                    if not any(part.startswith(".") or part in SKIP_DIRS for part in name.split("/")))
        return
    ignored = _gitignore(root)
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not _matches(ignored, (here / d).relative_to(root).as_posix() + "/"))
        for name in sorted(files):
            rel = (here / name).relative_to(root).as_posix()
            if not name.startswith(".") and not _matches(ignored, rel):
                yield here / name


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files of the git work tree at or above `root`, relative to it."""
    try:
        done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    names = [n for n in done.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
    return [n for n in names if (root / n).is_file()]


def _gitignore(root: Path) -> list[str]:
    try:
        lines = (root / ".gitignore").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))]


def _matches(patterns: list[str], rel: str) -> bool:
    name = rel.rstrip("/").rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/") and not rel.endswith("/"):
            continue
        bare = pattern.strip("/")
        if "/" in bare:
            if fnmatch.fnmatch(rel.rstrip("/"), bare):
                return True
        elif fnmatch.fnmatch(name, bare):
            return True
    return False


def read_text(path: Path, max_bytes: int) -> tuple[str | None, str]:
    """The file's text, or None and why it is skipped ("too large", "binary", "unreadable")."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, "too large"
        data = path.read_bytes()
    except OSError:
        return None, "unreadable"
    if b"\0" in data[:8192]:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "binary"
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return None, "empty"
    return text, ""
