"""Where imprint keeps its data, and the settings every command shares.

Layout of a data dir::

    DATA_DIR/
      device_id.txt            8-hex fingerprint of this device (SPEC)
      device_key               Ed25519 private key, mode 0600
      trusted_devices.json     trust list shared by CLI and dashboard
      logs/imprint.log         rotating debug log
      cache/                   model fingerprints (recomputed if lost)
      workspaces/NAME/
        memories/              Qdrant Edge shard of workspace NAME's memories
        forgotten.db           tombstones of forgotten memories
        facts.db               SQLite facts (and tombstones of forgotten facts)
        spool.db               what a sync received and has not stored yet
      qdrant/                  older versions' store (qdrant-client local mode):
                               migrated to workspaces/NAME/memories on first use
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imprint.errors import ConfigError

DEFAULT_WORKSPACE = "default"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_data_dir() -> Path:
    """Per-user data folder: $XDG_DATA_HOME/imprint, else ~/.local/share/imprint."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "imprint"


def validate_workspace(name: str) -> str:
    """Return `name` if it is a safe workspace name, else raise ConfigError."""
    if not _WORKSPACE_RE.fullmatch(name):  # `$` of match() would let a trailing newline through
        raise ConfigError(
            f"invalid workspace name {name!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved global options of one command."""

    data_dir: Path
    workspace: str = DEFAULT_WORKSPACE
    model: str = DEFAULT_MODEL
    qdrant_url: str | None = None
    #: The data dir cannot be written (read-only media): a command that only reads runs
    #: its requests in its own process, reading only (no service: it could not listen there).
    read_only: bool = False

    @property
    def collection(self) -> str:
        """Qdrant collection of the workspace (on a server, and in the old local-mode store)."""
        return f"imprint_{self.workspace}"

    @property
    def legacy_qdrant_path(self) -> Path:
        """Where older versions kept memories (qdrant-client local mode); migrated away on first use."""
        return self.data_dir / "qdrant"

    @property
    def memories_path(self) -> Path:
        """The workspace's Qdrant Edge shard."""
        return self.workspace_dir / "memories"

    @property
    def forgotten_path(self) -> Path:
        """Tombstones of the workspace's forgotten memories (see imprint.tombstones)."""
        return self.workspace_dir / "forgotten.db"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def workspace_dir(self) -> Path:
        return self.data_dir / "workspaces" / self.workspace

    @property
    def facts_path(self) -> Path:
        return self.workspace_dir / "facts.db"

    @property
    def trust_path(self) -> Path:
        return self.data_dir / "trusted_devices.json"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def prepare(self) -> "Settings":
        """Create the data dir (0700) and workspace dir; fail clearly if not writable.

        Memories, facts, logs and the trust list are nobody else's business:
        the data dir is made private, and files in it are created 0600 (the
        command runs with umask 077).
        """
        validate_workspace(self.workspace)
        try:
            fresh = not self.data_dir.exists()
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if fresh or (self.data_dir.stat().st_mode & 0o077):
                os.chmod(self.data_dir, 0o700)  # one made by an older imprint (0755 under umask 022)
            self.workspace_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # mkdir succeeds on an existing read-only dir; prove we can write.
            with tempfile.NamedTemporaryFile(dir=self.data_dir, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(f"data dir {self.data_dir} is not writable: {exc.strerror or exc}") from None
        return self


def settings_from(
    *, data_dir: str | None, workspace: str | None, model: str | None, qdrant_url: str | None
) -> Settings:
    """Resolve options, then environment variables, then defaults."""
    resolved_dir = data_dir or os.environ.get("IMPRINT_DATA_DIR") or str(default_data_dir())
    return Settings(
        data_dir=Path(resolved_dir).expanduser().absolute(),
        workspace=validate_workspace(workspace or os.environ.get("IMPRINT_WORKSPACE") or DEFAULT_WORKSPACE),
        model=model or os.environ.get("IMPRINT_MODEL") or DEFAULT_MODEL,
        qdrant_url=qdrant_url or os.environ.get("IMPRINT_QDRANT_URL") or None,
    )
