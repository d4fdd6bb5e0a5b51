"""`imprint mcp`: the memory, for agents, over the Model Context Protocol.

An MCP server on the official SDK (`mcp`, 2.x) whose every tool is a thin call
into the data dir's service (:mod:`imprint.service`): any number of agent
processes, the CLI and the dashboard work on one store at once, and a call
costs what the service takes (the model stays loaded there), not a model load.

Tool names and arguments are those of Imprint's own MCP server where they
overlap (`search`, `store`, `delete`, `kg_query`, `kg_edit`, `status`,
`list_sources`, `file_chunks`), so instructions and hooks written for it keep
working. Every tool takes an optional `workspace`. Results are text sized for
a context window: contents are cut, with the way to read on given.

Over stdio (what agent hosts start) nothing but protocol goes to stdout; notes
and logs go to stderr. `--http [HOST:]PORT` serves streamable HTTP on a
loopback address only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from imprint.config import Settings
from imprint.errors import ImprintError
from imprint.service import protocol as p
from imprint.service.client import ServiceClient

#: Characters of a hit's content shown in full (the best hits), and of the rest.
FULL = 1500
PREVIEW = 300
#: Most results a search returns, and chunks `file_chunks` returns at once.
MAX_LIMIT = 50
MAX_CHUNKS = 40

INSTRUCTIONS = (
    "imprint is this user's long-term memory, shared by their machines and agents. Call `search` before "
    "answering questions about their projects, decisions, people or past work; call `store` to keep a decision, "
    "a finding or a fact worth remembering (say why); `kg_query`/`kg_edit` for structured facts that change "
    "over time. Hits are chunks of documents: `file_chunks` reads around one."
)


class Memory:
    """The service, per workspace: one client each (a client is one request at a time)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, tuple[ServiceClient, threading.Lock]] = {}
        self._lock = threading.Lock()

    def call(self, workspace: str, request: p.Request, reply: Any = Any) -> Any:
        from imprint.config import validate_workspace

        name = workspace.strip() or self.settings.workspace
        try:
            validate_workspace(name)
        except ImprintError as exc:
            raise _tool_error(str(exc)) from None
        if name != self.settings.workspace and not (self.settings.data_dir / "workspaces" / name).is_dir():
            known = sorted(d.name for d in (self.settings.data_dir / "workspaces").glob("*") if d.is_dir())
            raise _tool_error(f"no workspace named {name!r} (there are: {', '.join(known) or 'none'}); leave "
                              "workspace empty for the default one")
        with self._lock:
            if name not in self._clients:
                settings = Settings(data_dir=self.settings.data_dir, workspace=name, model=self.settings.model,
                                    qdrant_url=self.settings.qdrant_url)
                self._clients[name] = (ServiceClient(settings), threading.Lock())
            client, lock = self._clients[name]
        with lock:
            try:
                return client.call(request, reply)
            except ImprintError as exc:
                client.close()  # a fresh connection next time
                raise _tool_error(str(exc)) from None

    def close(self) -> None:
        for client, _ in self._clients.values():
            client.close()


def _tool_error(message: str) -> Exception:
    from mcp.server.mcpserver.exceptions import ToolError

    return ToolError(message)


def build_server(settings: Settings, *, memory: Any = None) -> Any:
    """The MCP server, its tools bound to the service of `settings`' data dir — or to `memory`
    (anything with Memory's `call`: the chat, inside the service, asks its core directly)."""
    from mcp.server.mcpserver import MCPServer

    memory = Memory(settings) if memory is None else memory
    server = MCPServer("imprint", instructions=INSTRUCTIONS)

    @server.tool()
    def search(query: str, project: str = "", type: str = "", source: str = "", limit: int = 10, offset: int = 0,
               workspace: str = "") -> str:
        """Semantic search over the user's memories: call it BEFORE answering about their projects, decisions or
        past work. Returns the best chunks first, each with its id, score (cosine, 1 = same meaning), project and
        source; the top hits in full, the rest as previews. To read around a hit use file_chunks(source, start,
        end); to go on, search again with offset. Filters: project, type (note, decision, bug…), source (a path)."""
        from imprint.messages.store import SearchHit

        limit = max(1, min(limit, MAX_LIMIT))
        if not query.strip():
            raise _tool_error("the query is empty: say what to look for")
        hits = memory.call(workspace, p.Search(query=query, k=min(limit + max(0, offset), 100), project=project or None,
                                               memory_type=type or None, source=source or None),
                           tuple[SearchHit, ...])
        hits = hits[max(0, offset):]
        if not hits:
            return "No memories found." + (" (filters: " + ", ".join(
                f"{k}={v}" for k, v in (("project", project), ("type", type), ("source", source)) if v) + ")"
                if project or type or source else "")
        lines = [f"{len(hits)} result(s) for {query!r}" + (f" from #{offset + 1}" if offset else "") + ":"]
        for n, hit in enumerate(hits, start=offset + 1):
            r = hit.record
            where = f"{r.source}#{r.chunk_index}" if r.source else "-"
            lines.append(f"\n[{n}] id={r.id} score={hit.score:.3f} project={r.project} type={r.type} source={where}")
            lines.append(_cut(r.content, FULL if n - offset <= 2 else PREVIEW, r))
        lines.append(f"\nMore: search(query, offset={offset + len(hits)}).")
        return "\n".join(lines)

    @server.tool()
    def store(content: str, project: str = "", type: str = "", tags: str = "", source: str = "",
              workspace: str = "") -> str:
        """Store a memory: a decision, a finding, a fix, a preference — say WHY, be specific. It is searchable at
        once and reaches the user's other machines at their next sync. Long content (a document) is split into
        chunks that share `source`. tags: comma-separated topics, or key=value (lang, layer, kind, domain, topics).
        Returns the id(s) stored."""
        from imprint.messages.store import Document, StoredText

        if not content.strip():
            raise _tool_error("the content is empty: nothing was stored")
        document = Document(content=content, project=project.strip() or "default", type=type.strip() or "note",
                            tags=_tags(tags), source=source.strip())
        [done] = memory.call(workspace, p.StoreDocuments(documents=(document,)), tuple[StoredText, ...])
        if len(done.ids) == 1:
            state = "stored" if done.inserted else "updated" if done.updated else "already stored"
            return f"{state} [{done.ids[0]}]"
        return (f"stored {len(done.ids)} chunks of source {done.source!r} ({done.inserted} new): "
                + ", ".join(done.ids[:10]) + (" …" if len(done.ids) > 10 else ""))

    @server.tool()
    def delete(memory_id: str, workspace: str = "") -> str:
        """Forget memories by id (as search or store showed them; several separated by commas or spaces). They
        are gone here at once and, at the next sync, on the user's other machines."""
        from imprint.messages.store import Forgotten

        ids = tuple(i for i in memory_id.replace(",", " ").split() if i)
        if not ids:
            raise _tool_error("give the id of a memory (as search or store showed it)")
        done = memory.call(workspace, p.Forget(ids=ids), Forgotten)
        parts = []
        if done.forgotten:
            parts.append("forgot " + ", ".join(done.forgotten))
        if done.unknown:
            parts.append("not found: " + ", ".join(done.unknown))
        return "; ".join(parts)

    @server.tool()
    def kg_query(subject: str = "", predicate: str = "", object: str = "", as_of: str = "",
                 include_ended: bool = False, limit: int = 20, workspace: str = "") -> str:
        """Query structured facts (subject → predicate → object, each valid from a time until ended). Filters
        match exactly; as_of (ISO date or Unix time) gives the facts true then; include_ended lists history too.
        Each line starts with the fact's id, which kg_edit(op="end") takes."""
        from imprint.messages.store import StoredFact

        when = _parse_time(as_of) if as_of else None
        facts = memory.call(workspace, p.FactList(subject=subject or None, predicate=predicate or None,
                                                  object=object or None, as_of=when, include_ended=include_ended,
                                                  limit=max(1, min(limit, 500))), tuple[StoredFact, ...])
        if not facts:
            return "No facts found."
        return "\n".join(_fact_line(f) for f in facts)

    @server.tool()
    def kg_edit(op: str = "add", subject: str = "", predicate: str = "", object: str = "", fact_id: str | int = "",
                source: str = "", workspace: str = "") -> str:
        """Add a fact (op="add": subject, predicate, object; valid from now) or end one (op="end": fact_id from
        kg_query; it stays as history). Facts sync to the user's other machines."""
        from imprint.messages.records import FactRecord
        from imprint.messages.store import StoredFact

        if op == "end":
            if not str(fact_id).strip() or str(fact_id).strip() == "0":
                raise _tool_error('op="end" needs fact_id (the id kg_query shows in brackets)')
            done = memory.call(workspace, p.FactEnd(fact=str(fact_id)), StoredFact)
            return "ended " + _fact_line(done)
        if op != "add":
            raise _tool_error('op is "add" or "end"')
        if not (subject.strip() and predicate.strip() and object.strip()):
            raise _tool_error('op="add" needs subject, predicate and object')
        try:
            record = FactRecord(subject=subject.strip(), predicate=predicate.strip(), object=object.strip(),
                                valid_from=time.time(), source=source)
        except ValueError as exc:
            raise _tool_error(f"not a fact: {exc}") from None
        done = memory.call(workspace, p.FactAdd(record=record), StoredFact)
        return "added " + _fact_line(done)

    @server.tool()
    def status(workspace: str = "") -> str:
        """How much the memory holds: memories (per project), facts, the workspace, the model and the last sync."""
        from imprint.messages.store import Overview

        info = memory.call(workspace, p.OverviewOf(), Overview)
        lines = [f"Workspace: {info.workspace}  |  Memories: {info.memories:,}  |  Facts: {info.facts_active:,} open, "
                 f"{info.facts_ended:,} ended  |  Model: {info.model}"]
        if info.projects:
            lines.append("Projects: " + ", ".join(f"{name} ({count:,})" for name, count in info.projects))
        if info.last_sync:
            lines.append("Last sync: " + info.last_sync)
        return "\n".join(lines)

    @server.tool()
    def list_sources(project: str = "", limit: int = 50, workspace: str = "") -> str:
        """The documents (sources) the memory holds, with their chunk counts, most chunks first. file_chunks
        reads one."""
        from imprint.messages.store import FacetCount

        found = memory.call(workspace, p.Sources(project=project or None, limit=max(1, min(limit, 500))),
                            tuple[FacetCount, ...])
        if not found:
            return "No sources yet: documents come with `imprint ingest PATH` or store(content, source=…)."
        return "\n".join([f"{len(found)} source(s):"] + [f"  {f.count:>5} chunks  {f.value}" for f in found])

    @server.tool()
    def file_chunks(source: str, start: int = 0, end: int = -1, project: str = "", workspace: str = "") -> str:
        """A document's chunks in order, by 0-based index range (end inclusive, -1 = to the end; at most 40 at
        once): read around a search hit, or the whole document."""
        from imprint.messages.records import MemoryRecord

        if not source.strip():
            raise _tool_error("give the source (as search or list_sources showed it)")
        last = None if end < 0 else end
        chunks = memory.call(workspace, p.SourceChunks(source=source, project=project or None, start=max(0, start),
                                                        end=last), tuple[MemoryRecord, ...])
        if not chunks:
            return f"No chunks of {source!r}" + (f" in {start}..{end}" if start or end >= 0 else "") + \
                ": list_sources shows what is held."
        shown = chunks[:MAX_CHUNKS]
        lines = [f"[{source}] chunks {shown[0].chunk_index}-{shown[-1].chunk_index}"]
        for r in shown:
            lines += [f"--- chunk {r.chunk_index} (id {r.id}) ---", r.content]
        if len(chunks) > MAX_CHUNKS:
            lines.append(f"… more: file_chunks({source!r}, start={shown[-1].chunk_index + 1})")
        return "\n".join(lines)

    server._imprint_memory = memory  # type: ignore[attr-defined]
    return server


def _tags(text: str) -> Any:
    """`store`'s tags: comma-separated topics, or key=value for lang, layer, kind, domain, topics."""
    from imprint.messages.records import TAG_KEYS, Tags

    fields: dict[str, Any] = {}
    for part in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            fields.setdefault("topics", []).append(part)
        elif key in ("domain", "topics"):
            fields.setdefault(key, []).append(value)
        elif key in TAG_KEYS:
            fields[key] = value
        else:
            raise _tool_error(f"unknown tag key {key!r} (known: {', '.join(TAG_KEYS)})")
    try:
        return Tags(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (TypeError, ValueError) as exc:
        raise _tool_error(f"bad tags: {exc}") from None


def _cut(content: str, size: int, record: Any) -> str:
    if len(content) <= size:
        return content
    cut = content.rfind(" ", 0, size)
    more = (f"file_chunks({record.source!r}, start={record.chunk_index}, end={record.chunk_index})" if record.source
            else "search with a narrower query")
    return content[: cut if cut > size // 2 else size] + f" … [{len(content) - size:,} more characters: {more}]"


def _fact_line(f: Any) -> str:
    r = f.record
    since = time.strftime("%Y-%m-%d", time.localtime(r.valid_from))
    ended = f", ended {time.strftime('%Y-%m-%d', time.localtime(r.ended))}" if r.ended is not None else ""
    return f"[{f.short_id}] {r.subject} → {r.predicate} → {r.object} (since {since}{ended})"


def _parse_time(text: str) -> float:
    from datetime import datetime

    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise _tool_error(f"as_of {text!r}: give an ISO date (2026-12-01) or Unix seconds") from None
