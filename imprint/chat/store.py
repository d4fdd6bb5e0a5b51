"""Conversations of the chat, kept per workspace in `WORKSPACE_DIR/chat.db`.

Local only: conversations are never synced. A message keeps its citations (the
memories and facts the answer was grounded in) so a transcript reloaded after a
restart still opens them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from imprint.errors import InputError

#: Longest title kept (a question longer than that is cut for the list).
TITLE_MAX = 80
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations(updated_at DESC);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    citations       TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages(conversation_id, id);
"""


def title_of(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


class Conversations:
    """The conversations of one workspace. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, title: str = "New chat") -> dict[str, Any]:
        now = time.time()
        cid = uuid.uuid4().hex[:12]
        with self._lock:
            self._db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (cid, title_of(title) or "New chat", now, now))
        return {"id": cid, "title": title_of(title) or "New chat", "created_at": now, "updated_at": now, "messages": 0}

    def list(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS messages "
                "FROM conversations c ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def get(self, cid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
            if row is None:
                return None
            messages = self._db.execute("SELECT role, content, citations, created_at FROM messages "
                                        "WHERE conversation_id = ? ORDER BY id", (cid,)).fetchall()
        found = dict(row)
        found["messages"] = [{"role": m["role"], "content": m["content"], "citations": json.loads(m["citations"]),
                              "created_at": m["created_at"]} for m in messages]
        return found

    def require(self, cid: str) -> dict[str, Any]:
        found = self.get(cid)
        if found is None:
            raise InputError(f"no conversation {cid!r} (see `imprint chat --list`)")
        return found

    def history(self, cid: str) -> list[dict[str, str]]:
        """The conversation so far as role/content pairs, for the model."""
        return [{"role": m["role"], "content": m["content"]} for m in self.require(cid)["messages"]]

    def append(self, cid: str, role: str, content: str, citations: list[dict[str, Any]] | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT INTO messages (conversation_id, role, content, citations, created_at) "
                                 "VALUES (?, ?, ?, ?, ?)", (cid, role, content, json.dumps(citations or []), now))
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
                # A conversation still called "New chat" takes its first question as its title.
                if role == "user":
                    self._db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title = 'New chat'",
                                     (title_of(content), cid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rename(self, cid: str, title: str) -> bool:
        title = title_of(title)
        if not title:
            raise InputError("a conversation's title cannot be empty")
        with self._lock:
            return self._db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid)).rowcount > 0

    def delete(self, cid: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0
