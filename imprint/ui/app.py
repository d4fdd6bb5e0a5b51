"""The dashboard's FastAPI app: JSON endpoints behind each page, SSE for sync.

One :class:`~imprint.local.LocalActors` (embedder and both stores) lives as
long as the app: the embedded Qdrant store admits one client per data dir, so
pages and sync sessions all go through the same actors.

Security: the server binds 127.0.0.1; requests must name a loopback Host (a
DNS-rebinding page cannot reach the API by its own name). Everything that
changes something is a POST with a JSON body that must come from the
dashboard's own page (same-origin `Origin`, or `Sec-Fetch-Site: same-origin`),
so neither another web page nor a link clicked in a mail can start a sync,
approve a peer or change the trust list. GETs only read or watch; a sync
session asks its page before any record moves, and ends when its page goes.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from imprint.actors.base import ask
from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError, InputError
from imprint.messages.events import encode_event
from imprint.messages.store import (
    CountFacts,
    CountMemories,
    FacetKey,
    FacetMemories,
    ForgetFact,
    ListFacts,
    MemoryFilter,
    NewestMemories,
)
from imprint.sync.runner import mode_of
from imprint.trust import TrustList
from imprint.ui.sessions import (
    Decision,
    DecisionRefused,
    SessionGone,
    SessionRegistry,
    SyncSession,
)

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Distinct projects, types or sources listed at most (most frequent first).
FACET_LIMIT = 1000
#: Seconds between SSE keep-alive comments.
KEEPALIVE = 15.0


# ---------------------------------------------------------------- response models


class Memory(BaseModel):
    id: str
    content: str
    project: str
    type: str
    tags: dict[str, Any]
    source: str
    chunk_index: int
    source_mtime: float
    timestamp: float


class MemoryList(BaseModel):
    total: int = Field(description="memories matching the filters")
    offset: int
    limit: int
    items: list[Memory]
    projects: list[str] = Field(description="every project in the store, for the filter")
    types: list[str]
    sources: list[str]


class SearchHit(BaseModel):
    score: float
    memory: Memory


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


class Count(BaseModel):
    name: str
    count: int


class Period(BaseModel):
    start: float = Field(description="Unix time the period starts")
    label: str
    count: int = Field(description="memories dated in the period (their timestamp: written, or last changed)")


class Stats(BaseModel):
    memories: int
    by_project: list[Count]
    by_type: list[Count]
    by_source: list[Count]
    facts_active: int
    facts_ended: int
    over_time: list[Period] = Field(default_factory=list, description="memories per month, the last 12 months")
    disk_bytes: int = Field(0, description="bytes the workspace takes on disk (store, facts, chat, spool)")
    model: str | None = None
    model_fingerprint: str | None = None
    last_sync: str = Field("", description="the last sync in one line, as `imprint status` says it")


class NewMemory(BaseModel):
    content: str = Field(min_length=1, max_length=8 * 1024 * 1024)
    project: str = Field("default", max_length=200)
    type: str = Field("note", max_length=100)
    tags: str = Field("", max_length=2000, description="comma-separated topics, or key=value (lang, layer, kind, domain)")
    source: str = Field("", max_length=1000)


class StoredResult(BaseModel):
    ids: list[str]
    inserted: int
    updated: int


class NewFact(BaseModel):
    subject: str = Field(min_length=1, max_length=1000)
    predicate: str = Field(min_length=1, max_length=1000)
    object: str = Field(min_length=1, max_length=1000)
    source: str = Field("", max_length=1000)


class SyncEntry(BaseModel):
    at: float
    role: str
    peer: str = ""
    mode: str = ""
    received: dict[str, int] = Field(default_factory=dict)
    sent: dict[str, int] = Field(default_factory=dict)
    forgotten: int = 0
    forgets_kept: int = 0
    forgets_refused: int = 0
    vectors_reused: int = 0
    error: str = ""


class KnownPeer(BaseModel):
    name: str = Field(description="hostname (fingerprint)")
    fingerprint: str = ""
    trusted: bool
    last_sync: float | None = None
    syncs: int = 0


class SyncHistory(BaseModel):
    syncs: list[SyncEntry]
    peers: list[KnownPeer]


class Status(BaseModel):
    data_dir: str
    workspace: str
    device_id: str
    hostname: str
    model: str | None
    dimension: int | None
    model_fingerprint: str | None = Field(None, description="hash of the model's files and backend (see `imprint status`)")


class Fact(BaseModel):
    id: str = Field(description="the fact's id, the same on every machine (16 hex digits; lists show the first 8)")
    subject: str
    predicate: str
    object: str
    valid_from: float
    ended: float | None
    source: str


class TrustedDevice(BaseModel):
    fingerprint: str
    hostname: str
    added: float
    public_key: str


class Removed(BaseModel):
    removed: str


class ApproveRequest(BaseModel):
    session_id: str = Field(min_length=1, max_length=200)
    decision: Decision = Field(description="serve: accept once, trust and accept, or reject; join: accept (Join) or reject")


class ForgetAnswer(BaseModel):
    session_id: str = Field(min_length=1, max_length=200)
    forget: bool = Field(description="true: forget what the other machine forgot (kept in the trash); false: keep it")


class ServeRequest(BaseModel):
    relay: str | None = Field(None, max_length=500, description="relay: HOST, ws://HOST:PORT or wss://HOST; default as "
                                                                "for the CLI (IMPRINT_RELAY, else a relay in this process)")
    plaintext: bool = Field(False, description="the plaintext protocol of Imprint's own sync clients")


class JoinRequest(BaseModel):
    target: str = Field(min_length=1, max_length=500, description="ROOM, HOST/ROOM or ws[s]://HOST/ROOM as serve printed")
    pin: str = Field(min_length=1, max_length=64, description="the 8-character PIN serve printed")
    plaintext: bool = Field(False, description="the plaintext protocol of Imprint's own sync clients")


class Started(BaseModel):
    session_id: str
    kind: str


class SessionRef(BaseModel):
    session_id: str = Field(min_length=1, max_length=200)


class ForgetMemoriesRequest(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=1000, description="memory ids (16 hex digits)")


class ForgetFactRequest(BaseModel):
    id: str = Field(min_length=1, max_length=16, description="the fact's id as /api/facts shows it (or a unique "
                    "prefix of 4+ hex digits)")


class ForgottenResult(BaseModel):
    forgotten: list[str]


class ChatStatus(BaseModel):
    model: str = Field(description="the chat's model, as the user configured it (IMPRINT_CHAT_*) or the local one")
    local: bool = Field(description="true: the bundled local model, nothing leaves this machine")
    available: bool = Field(description="false: no local model installed and no endpoint configured")
    loaded: bool = Field(description="the local model is in memory (the first question loads it)")
    problem: str = Field("", description="why the chat cannot answer, when it cannot")


class Conversation(BaseModel):
    id: str
    title: str
    created_at: float
    updated_at: float
    messages: int


class ConversationList(BaseModel):
    sessions: list[Conversation]


class ChatMessage(BaseModel):
    role: str
    content: str
    citations: list[dict[str, Any]]
    created_at: float


class ConversationDetail(BaseModel):
    id: str
    title: str
    created_at: float
    updated_at: float
    messages: list[ChatMessage]


class NewConversation(BaseModel):
    title: str = Field("New chat", max_length=500)


class RenameConversation(BaseModel):
    title: str = Field(min_length=1, max_length=500)


class AskRequest(BaseModel):
    session_id: str = Field(min_length=1, max_length=64)
    message: str = Field(min_length=1, max_length=20_000)


class StopChat(BaseModel):
    session_id: str = Field(min_length=1, max_length=64)


class TrustRemove(BaseModel):
    fingerprint: str = Field(pattern=r"^[0-9A-Fa-f]{8}$", description="the device's 8-hex id")


class ApproveResult(BaseModel):
    session_id: str
    decision: Decision


class SessionInfo(BaseModel):
    session_id: str
    kind: str
    finished: bool
    events: list[dict[str, Any]]


SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events; each `data:` line is one JSON event as `serve --json` / `join --json` print it "
        "(room, waiting, approval_required, confirm_required, auto_accepted, peer_connected, progress, stats, error).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "not from the dashboard's own page (foreign or missing Origin)"},
    415: {"description": "not a JSON body"},
}


# ---------------------------------------------------------------- helpers


def _memory(record: Any) -> Memory:
    return Memory(**msgspec.to_builtins(record))


def _facet(store: Any, key: FacetKey) -> list[Count]:
    """The values of `key` with their counts, most frequent first (up to FACET_LIMIT)."""
    counts = ask(store, FacetMemories(key=key, limit=FACET_LIMIT))
    return [Count(name=c.value, count=c.count) for c in sorted(counts, key=lambda c: (-c.count, c.value))]


def _values(store: Any, key: FacetKey) -> list[str]:
    return sorted(c.name for c in _facet(store, key))


def _months(store: Any, count: int = 12) -> list[Period]:
    """Memories per calendar month, the last `count` months (one count query each, on the order index)."""
    import time

    now = time.localtime()
    starts = []
    year, month = now.tm_year, now.tm_mon
    for _ in range(count + 1):
        starts.append((year, month))
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    starts.reverse()  # oldest first; the last one is the month after this one's start
    edges = [time.mktime((y, m, 1, 0, 0, 0, 0, 0, -1)) for y, m in starts[1:]]
    nxt = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
    edges.append(time.mktime((*nxt, 1, 0, 0, 0, 0, 0, -1)))
    periods = []
    for (y, m), start, end in zip(starts[1:], edges, edges[1:]):
        n = ask(store, CountMemories(where=MemoryFilter(after=start, before=end)))
        periods.append(Period(start=start, label=f"{y}-{m:02d}", count=n))
    return periods


def _disk_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _tags_of(text: str) -> Any:
    """Tags as the page gives them (as MCP's `store`): comma-separated topics, or key=value."""
    from imprint.mcp_server import _tags

    try:
        return _tags(text)
    except Exception as exc:  # the tool's ToolError: one line
        raise HTTPException(422, str(exc)) from None


def _host_of(value: str) -> tuple[str, int | None]:
    """Hostname and port of a Host header value (`127.0.0.1:8765`, `[::1]:8765`)."""
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or ""), port


# ---------------------------------------------------------------- app


def create_app(
    settings: Settings,
    *,
    local: Any = None,
    core: Any = None,
    approval_timeout: float = 590.0,
    listen: str = "0.0.0.0:8430",
    extra_hosts: tuple[str, ...] = (),
    watch_grace: float = 15.0,
    default_relay: Any = None,
    chat_endpoint: Any = None,
) -> FastAPI:
    """Build the dashboard app.

    Args:
        settings: resolved options (data dir, workspace, model).
        local: running LocalActors with the embedder; the caller keeps owning
            it. Without one, the app starts its own on startup and stops it on
            shutdown.
        core: the :class:`~imprint.core.Core` over `local` (the service's, so its
            syncs count as the service's); made here when not given.
        approval_timeout: seconds a serve session waits for a click before it
            rejects the peer (just under the session's own 600 s).
        listen: where the built-in relay listens when Serve names no relay (as the CLI).
        extra_hosts: Host names accepted besides the loopback ones.
        watch_grace: seconds a new sync session waits for a page to watch it.
        default_relay: the relay a bare room means (the user's IMPRINT_RELAY, which the
            service passes on from `imprint ui`); by default this process's.
        chat_endpoint: the chat's model (:class:`imprint.chat.models.Endpoint`, from the
            IMPRINT_CHAT_* of `imprint ui`); by default the local model.
    """
    from imprint.chat.models import Endpoint
    from imprint.sync.runner import FROM_ENVIRONMENT

    fallback_relay = FROM_ENVIRONMENT if default_relay is None else default_relay
    allowed_hosts = LOOPBACK_HOSTS | set(extra_hosts)
    sessions = SessionRegistry(approval_timeout=approval_timeout, watch_grace=watch_grace)
    endpoint = chat_endpoint if chat_endpoint is not None else Endpoint()
    #: Chat turns under way, by conversation: their stop flags (one turn per conversation at a time).
    turns: dict[str, Any] = {}
    turns_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from imprint.core import Core

        owned = None
        if app.state.local is None:
            from imprint.local import LocalActors

            owned = LocalActors(settings, embedder=True)
            await anyio.to_thread.run_sync(owned.__enter__)
            app.state.local = owned
        if app.state.core is None:
            app.state.core = Core(settings, local=app.state.local)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(sessions.close)
            if owned is not None:
                await anyio.to_thread.run_sync(owned.stop)
                app.state.local = None

    def check_host(request: Request) -> None:
        host, _ = _host_of(request.headers.get("host", ""))
        if host not in allowed_hosts:
            raise HTTPException(400, "unknown Host: open the dashboard at http://127.0.0.1")

    def same_origin(request: Request) -> None:
        """Only the dashboard's own page may change anything.

        A state change is a POST with a JSON body (a form or a link cannot send
        one without a CORS preflight we never grant), and it must say it comes
        from this page: an `Origin` of this very host and port, or
        `Sec-Fetch-Site: same-origin`. A request saying neither is refused,
        which covers a link clicked in a mail or chat app (no Origin,
        `Sec-Fetch-Site: none`).
        """
        site = request.headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            raise HTTPException(403, f"request refused: Sec-Fetch-Site is {site[:40]!r}, not same-origin")
        origin = request.headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            _, host_port = _host_of(request.headers.get("host", ""))
            try:
                origin_port = parts.port or 80
            except ValueError:
                origin_port = -1
            if parts.scheme != "http" or parts.hostname not in allowed_hosts or origin_port != (host_port or 80):
                raise HTTPException(403, f"request from origin {origin[:100]!r} refused")
        elif site != "same-origin":
            raise HTTPException(403, "request refused: changes come only from the dashboard's own page "
                                     "(same-origin, with an Origin header)")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise HTTPException(415, "send a JSON body (Content-Type: application/json)")

    app = FastAPI(
        title="imprint dashboard",
        version="0.1.0",
        description="Local dashboard of imprint: memories, search, stats, facts, trust and sync.",
        lifespan=lifespan,
        dependencies=[Depends(check_host)],
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the schema stays at /openapi.json
        redoc_url=None,
    )
    app.state.local = local
    app.state.core = core
    app.state.sessions = sessions
    app.state.settings = settings

    def actors() -> Any:
        if app.state.local is None:
            raise HTTPException(503, "the local stores are not running")
        return app.state.local

    def the_core() -> Any:
        actors()
        if app.state.core is None:
            from imprint.core import Core

            app.state.core = Core(settings, local=app.state.local)
        return app.state.core

    @app.exception_handler(ImprintError)
    async def imprint_error(request: Request, exc: ImprintError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400 if isinstance(exc, ConfigError) else 503)

    # ------------------------------------------------------------ pages

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'", "Cache-Control": "no-store"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------ memories, search, stats

    @app.get("/api/status", response_model=Status, tags=["stats"])
    def status(local: Any = Depends(actors)) -> Status:
        """This device and its store."""
        from imprint.identity import host_info, load_identity

        model = getattr(local, "model", None)
        return Status(
            data_dir=str(settings.data_dir), workspace=settings.workspace,
            device_id=load_identity(settings.data_dir).fingerprint, hostname=host_info().hostname,
            model=model.name if model else None, dimension=model.dimension if model else None,
            model_fingerprint=model.fingerprint if model else None,
        )

    @app.get("/api/memories", response_model=MemoryList, tags=["memories"])
    def memories(
        project: str | None = Query(None, description="only this project"),
        type: str | None = Query(None, description="only this type"),
        source: str | None = Query(None, description="only this source"),
        q: str | None = Query(None, max_length=200, description="only memories whose content holds this text (as typed)"),
        sort: str = Query("newest", pattern="^(newest|oldest)$", description="newest or oldest first"),
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
        local: Any = Depends(actors),
    ) -> MemoryList:
        """Browse memories, newest (or oldest) first, with filters, a text filter and paging (answered by
        the store's count, facets and order index; the text filter reads the contents)."""
        store = local["memory_store"]
        where = MemoryFilter(project=project, type=type, source=source, text=(q or "").strip() or None)
        total = ask(store, CountMemories(where=where))
        items = ask(store, NewestMemories(where=where, offset=offset, limit=limit,
                                          oldest_first=sort == "oldest")) if offset < total else ()
        return MemoryList(
            total=total, offset=offset, limit=limit, items=[_memory(r) for r in items],
            projects=_values(store, "project"), types=_values(store, "type"), sources=_values(store, "source"),
        )

    @app.get("/api/search", response_model=SearchResult, tags=["memories"])
    def search(
        q: str = Query(..., min_length=1, max_length=10_000, description="what to look for"),
        k: int = Query(10, ge=1, le=100, description="how many results"),
        project: str | None = Query(None, description="only this project"),
        core: Any = Depends(the_core),
    ) -> SearchResult:
        """Semantic search, best first, with cosine scores."""
        if not q.strip():
            raise HTTPException(422, "the query is empty")
        hits = core.search(q, k=k, project=project)
        return SearchResult(query=q, hits=[SearchHit(score=h.score, memory=_memory(h.record)) for h in hits])

    @app.get("/api/stats", response_model=Stats, tags=["stats"])
    def stats(local: Any = Depends(actors)) -> Stats:
        """Counts per project, type and source; facts active and ended."""
        store = local["memory_store"]
        total = ask(store, CountMemories())
        by_source = [c for c in _facet(store, "source") if c.name]
        unsourced = ask(store, CountMemories(where=MemoryFilter(source=""))) if total else 0
        if unsourced:
            by_source = sorted([*by_source, Count(name="(none)", count=unsourced)], key=lambda c: (-c.count, c.name))
        facts = ask(local["fact_store"], CountFacts())
        from imprint.core import read_last_sync

        model = getattr(local, "model", None)
        return Stats(memories=total, by_project=_facet(store, "project"), by_type=_facet(store, "type"),
                     by_source=by_source, facts_active=facts.active, facts_ended=facts.ended,
                     over_time=_months(store) if total else [], disk_bytes=_disk_bytes(settings.workspace_dir),
                     model=model.name if model else None, model_fingerprint=model.fingerprint if model else None,
                     last_sync=read_last_sync(settings))

    @app.post("/api/memories", response_model=StoredResult, status_code=201, tags=["memories"],
              dependencies=[Depends(same_origin)], responses=REFUSED)
    def add_memory(body: NewMemory, core: Any = Depends(the_core)) -> StoredResult:
        """Store a memory (a long one as its chunks), as `imprint add` does; it syncs to your other machines."""
        from imprint.messages.store import Document

        if not body.content.strip():
            raise HTTPException(422, "the memory is empty: nothing was stored")
        try:
            document = Document(content=body.content, project=body.project.strip() or "default",
                                type=body.type.strip() or "note", tags=_tags_of(body.tags), source=body.source.strip())
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        [done] = core.store_documents((document,))
        return StoredResult(ids=list(done.ids), inserted=done.inserted, updated=done.updated)

    @app.post("/api/facts", response_model=Fact, status_code=201, tags=["facts"],
              dependencies=[Depends(same_origin)], responses=REFUSED)
    def add_fact(body: NewFact, core: Any = Depends(the_core)) -> Fact:
        """Add a fact, true from now (`imprint fact add`)."""
        import time

        from imprint.messages.records import FactRecord

        try:
            record = FactRecord(subject=body.subject.strip(), predicate=body.predicate.strip(),
                                object=body.object.strip(), valid_from=time.time(), source=body.source.strip())
        except ValueError as exc:
            raise HTTPException(422, f"not a fact: {exc}") from None
        if not (record.subject and record.predicate and record.object):
            raise HTTPException(422, "a fact needs a subject, a predicate and an object")
        done = core.add_fact(record)
        return Fact(id=done.key, **msgspec.to_builtins(done.record))

    # ------------------------------------------------------------ facts, trust

    @app.get("/api/facts", response_model=list[Fact], tags=["facts"])
    def facts(
        subject: str | None = None,
        predicate: str | None = None,
        include_ended: bool = Query(False, description="ended facts too"),
        limit: int = Query(1000, ge=1, le=100_000),
        local: Any = Depends(actors),
    ) -> list[Fact]:
        """Facts (open ones unless include_ended), as the graph's edges."""
        stored = ask(local["fact_store"], ListFacts(subject=subject, predicate=predicate, include_ended=include_ended, limit=limit))
        return [Fact(id=f.key, **msgspec.to_builtins(f.record)) for f in stored]

    @app.post("/api/memories/forget", response_model=ForgottenResult, tags=["memories"],
              dependencies=[Depends(same_origin)], responses={**REFUSED, 404: {"description": "no memory with that id"}})
    def forget_memories(body: ForgetMemoriesRequest, core: Any = Depends(the_core)) -> ForgottenResult:
        """Forget memories here and, at the next sync, on the user's other machines (`imprint forget`)."""
        from imprint.core import check_memory_ids

        try:
            ids = check_memory_ids(body.ids)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        done = core.forget(ids=ids)
        if not done.forgotten:
            raise HTTPException(404, "no such memory (already forgotten?)")
        return ForgottenResult(forgotten=list(done.forgotten))

    @app.post("/api/facts/forget", response_model=ForgottenResult, tags=["facts"],
              dependencies=[Depends(same_origin)], responses={**REFUSED, 404: {"description": "no fact with that id"}})
    def forget_fact(body: ForgetFactRequest, local: Any = Depends(actors)) -> ForgottenResult:
        """Forget a fact here and, at the next sync, on the user's other machines (`imprint fact forget`)."""
        import time

        try:
            done = ask(local["fact_store"], ForgetFact(fact=body.id, deleted_at=time.time()))
        except InputError as exc:
            raise HTTPException(404, str(exc)) from None
        return ForgottenResult(forgotten=[done.key])

    @app.get("/api/trust", response_model=list[TrustedDevice], tags=["trust"])
    def trust_list() -> list[TrustedDevice]:
        """Trusted devices (the same list as `imprint trust list`)."""
        return [TrustedDevice(fingerprint=d.fingerprint, hostname=d.hostname, added=float(d.added), public_key=d.public_key)
                for d in TrustList(settings.trust_path).load()]

    @app.post("/api/trust/remove", response_model=Removed, tags=["trust"],
              dependencies=[Depends(same_origin)], responses={**REFUSED, 404: {"description": "not on the trust list"}})
    def trust_remove(body: TrustRemove) -> Removed:
        """Forget a trusted device."""
        fp = body.fingerprint.lower()
        if not TrustList(settings.trust_path).remove(fp):
            raise HTTPException(404, f"{fp} is not on the trust list")
        return Removed(removed=fp)

    # ------------------------------------------------------------ sync

    def _stream(session: SyncSession, request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            cursor = 0
            idle = 0.0
            session.watch()
            try:
                while True:
                    batch, finished = await anyio.to_thread.run_sync(session.wait_events, cursor, 1.0)
                    for event in batch:
                        yield f"data: {encode_event(event).decode()}\n\n"
                    cursor += len(batch)
                    if finished:
                        return
                    idle = 0.0 if batch else idle + 1.0
                    if idle >= KEEPALIVE:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    if await request.is_disconnected():
                        return
            finally:
                session.unwatch()  # the last page leaving stops the session

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/sync/serve", response_model=Started, status_code=201, tags=["sync"],
              dependencies=[Depends(same_origin)], responses=REFUSED)
    def sync_serve(body: ServeRequest, core: Any = Depends(the_core)) -> Started:
        """Start a provider session; watch it at `/api/sync/sessions/{id}/events` (its `room` event carries
        target and PIN). It asks before letting anyone in, and ends when no page watches it."""
        from imprint.protocol.addresses import relay_base

        relay = (body.relay or "").strip() or None
        if relay:
            try:
                relay_base(relay)
            except ConfigError as exc:
                raise HTTPException(422, str(exc)) from None
        session = sessions.new("serve")
        session.start(lambda s: core.serve(
            relay=relay, listen=listen, mode=mode_of(body.plaintext), default_relay=fallback_relay,
            batch_size=500, idle_timeout=120.0, report=s.emit, approver=s.approver, on_session=s.attach,
            confirm_forget=s.confirm_forget))
        return Started(session_id=session.id, kind=session.kind)

    @app.post("/api/sync/join", response_model=Started, status_code=201, tags=["sync"],
              dependencies=[Depends(same_origin)], responses=REFUSED)
    def sync_join(body: JoinRequest, core: Any = Depends(the_core)) -> Started:
        """Join another machine's serve session. Once connected, the session shows the provider
        (`confirm_required`) and moves nothing until the page answers `accept` (Join) at
        `/api/sync/approve`; it ends when no page watches it."""
        from imprint.protocol.addresses import check_pin, parse_target
        from imprint.sync.runner import resolve_default_relay

        try:
            parse_target(body.target, default_relay=resolve_default_relay(fallback_relay))
            pin = check_pin(body.pin)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        session = sessions.new("join")
        session.start(lambda s: core.join(
            target=body.target.strip(), pin=pin, mode=mode_of(body.plaintext), default_relay=fallback_relay,
            batch_size=500, idle_timeout=120.0, report=s.emit, confirm=s.approver, on_session=s.attach,
            confirm_forget=s.confirm_forget))
        return Started(session_id=session.id, kind=session.kind)

    @app.get("/api/sync/sessions/{session_id}/events", response_class=StreamingResponse, tags=["sync"],
             responses={**SSE_RESPONSE, 404: {"description": "unknown session"}})
    def sync_events(session_id: str, request: Request) -> StreamingResponse:
        """Watch a session: its events as SSE, from the first. Only watches: closing the last
        stream of a session stops it."""
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        return _stream(session, request)

    @app.get("/api/sync/history", response_model=SyncHistory, tags=["sync"])
    def sync_history(limit: int = Query(100, ge=1, le=500)) -> SyncHistory:
        """Past syncs of this workspace, newest first (finished or failed, from the CLI, agents or this page),
        and the peers known: trusted devices and those synced with."""
        from imprint.core import read_sync_history

        syncs = [SyncEntry(**{k: v for k, v in e.items() if k in SyncEntry.model_fields}) for e in
                 read_sync_history(settings, limit)]
        peers: dict[str, KnownPeer] = {}
        for d in TrustList(settings.trust_path).load():
            name = f"{d.hostname} ({d.fingerprint})"
            peers[name] = KnownPeer(name=name, fingerprint=d.fingerprint, trusted=True)
        for e in syncs:
            if not e.peer:
                continue
            known = peers.setdefault(e.peer, KnownPeer(name=e.peer, fingerprint=e.peer.rpartition("(")[2].rstrip(")"),
                                                       trusted=False))
            known.syncs += 1
            known.last_sync = max(known.last_sync or 0.0, e.at)
        ordered = sorted(peers.values(), key=lambda k: (-(k.last_sync or 0.0), k.name))
        return SyncHistory(syncs=syncs, peers=ordered)

    def deliver(session_id: str, decide: Callable[[Any], None]) -> Any:
        """A page's answer to its session: 404 if the session is unknown or over, 409 if it asks nothing."""
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        try:
            decide(session)
        except SessionGone as exc:
            raise HTTPException(404, str(exc)) from None
        except DecisionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return session

    @app.post("/api/sync/approve", response_model=ApproveResult, tags=["sync"], dependencies=[Depends(same_origin)],
              responses={**REFUSED,
                         404: {"description": "unknown or finished session"},
                         409: {"description": "already decided, or nothing to decide"}})
    def sync_approve(body: ApproveRequest) -> ApproveResult:
        """Answer a serve's `approval_required` (accept once, trust and accept, reject) or a join's
        `confirm_required` (accept = Join, reject = Cancel)."""
        session = deliver(body.session_id, lambda s: s.decide(body.decision))
        return ApproveResult(session_id=session.id, decision=body.decision)

    @app.post("/api/sync/forget", response_model=ForgetAnswer, tags=["sync"], dependencies=[Depends(same_origin)],
              responses={**REFUSED,
                         404: {"description": "unknown or finished session"},
                         409: {"description": "already answered, or nothing to answer"}})
    def sync_forget(body: ForgetAnswer) -> ForgetAnswer:
        """Answer `forget_confirm_required`: the other machine would make this one forget more than the
        limit. `forget: true` forgets them (they wait in the trash for 30 days); false keeps everything."""
        deliver(body.session_id, lambda s: s.decide_forget(body.forget))
        return body

    @app.post("/api/sync/cancel", response_model=SessionRef, tags=["sync"], dependencies=[Depends(same_origin)],
              responses={**REFUSED, 404: {"description": "unknown session"}})
    def sync_cancel(body: SessionRef) -> SessionRef:
        """Stop a session at whatever stage it is."""
        session = sessions.get(body.session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        session.cancel()
        return SessionRef(session_id=session.id)

    @app.get("/api/sync/sessions/{session_id}", response_model=SessionInfo, tags=["sync"],
             responses={404: {"description": "unknown session"}})
    def sync_session(session_id: str) -> SessionInfo:
        """A session's events so far (to catch up after a reload)."""
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        return SessionInfo(session_id=session.id, kind=session.kind, finished=session.finished,
                           events=[msgspec.to_builtins(e) for e in session.events])

    # ------------------------------------------------------------ chat

    def conversations() -> Any:
        return the_core().conversations()

    @app.get("/api/chat/status", response_model=ChatStatus, tags=["chat"])
    def chat_status() -> ChatStatus:
        """The chat's model and whether it can answer."""
        from imprint.chat.models import LOCAL_INSTALL, LocalModel, local_model_path

        if not endpoint.local:
            return ChatStatus(model=endpoint.describe(), local=False, available=True, loaded=True)
        installed = local_model_path() is not None
        loaded = installed and LocalModel._instance is not None and LocalModel._instance.loaded
        return ChatStatus(model=endpoint.describe(), local=True, available=installed, loaded=loaded,
                          problem="" if installed else f"no local chat model: run `{LOCAL_INSTALL}`, or set "
                                                       "IMPRINT_CHAT_BASE_URL before `imprint ui`")

    @app.get("/api/chat/sessions", response_model=ConversationList, tags=["chat"])
    def chat_sessions() -> ConversationList:
        """This workspace's conversations, newest first."""
        return ConversationList(sessions=[Conversation(**c) for c in conversations().list()])

    @app.post("/api/chat/sessions", response_model=Conversation, status_code=201, tags=["chat"],
              dependencies=[Depends(same_origin)], responses=REFUSED)
    def chat_new(body: NewConversation) -> Conversation:
        """Start a conversation (it takes its first question as its title)."""
        return Conversation(**conversations().create(body.title))

    @app.get("/api/chat/sessions/{session_id}", response_model=ConversationDetail, tags=["chat"],
             responses={404: {"description": "no such conversation"}})
    def chat_session(session_id: str) -> ConversationDetail:
        """A conversation with its messages and their citations."""
        found = conversations().get(session_id)
        if found is None:
            raise HTTPException(404, "no such conversation")
        return ConversationDetail(**found)

    @app.post("/api/chat/sessions/{session_id}/rename", response_model=Conversation, tags=["chat"],
              dependencies=[Depends(same_origin)], responses={**REFUSED, 404: {"description": "no such conversation"}})
    def chat_rename(session_id: str, body: RenameConversation) -> Conversation:
        """Rename a conversation."""
        store = conversations()
        if not body.title.strip():
            raise HTTPException(422, "a title cannot be empty")
        if not store.rename(session_id, body.title):
            raise HTTPException(404, "no such conversation")
        found = store.get(session_id) or {}
        return Conversation(**{**found, "messages": len(found.get("messages", []))})

    @app.post("/api/chat/sessions/{session_id}/delete", response_model=Removed, tags=["chat"],
              dependencies=[Depends(same_origin)], responses={**REFUSED, 404: {"description": "no such conversation"}})
    def chat_delete(session_id: str) -> Removed:
        """Delete a conversation and its messages (the memories it cited stay)."""
        if not conversations().delete(session_id):
            raise HTTPException(404, "no such conversation")
        return Removed(removed=session_id)

    @app.post("/api/chat", response_class=StreamingResponse, tags=["chat"], dependencies=[Depends(same_origin)],
              responses={**REFUSED, 404: {"description": "no such conversation"},
                         409: {"description": "this conversation is answering already"},
                         200: {"description": "Server-sent events, one JSON object per `data:` line: citations, "
                                              "status, token, tool_call, tool_result, assistant_message, error, done "
                                              "(last)", "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    def chat_ask(body: AskRequest, request: Request) -> StreamingResponse:
        """Ask in a conversation: the memories found come first (`citations`), then the answer token by
        token. Closing the stream, or `/api/chat/stop`, stops the answer; what came so far is kept."""
        from imprint.chat.agent import Chat, CoreMemory, run_turn

        core = the_core()
        store = conversations()
        if store.get(body.session_id) is None:
            raise HTTPException(404, "no such conversation")
        if not body.message.strip():
            raise HTTPException(422, "the question is empty")
        stop = threading.Event()
        with turns_lock:
            if body.session_id in turns:
                raise HTTPException(409, "this conversation is still answering: stop it or wait")
            turns[body.session_id] = stop
        events: queue.Queue[dict[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                run_turn(Chat(CoreMemory(core), endpoint, settings=settings), store, body.session_id, body.message,
                         events.put, stop)
            finally:
                with turns_lock:
                    turns.pop(body.session_id, None)

        threading.Thread(target=work, name="chat-turn", daemon=True).start()

        async def stream() -> AsyncIterator[str]:
            try:
                while True:
                    try:
                        event = await anyio.to_thread.run_sync(events.get, True, 0.5)
                    except queue.Empty:
                        if await request.is_disconnected():
                            return
                        continue
                    yield f"data: {json.dumps(event)}\n\n"
                    if event["type"] == "done":
                        return
            finally:
                stop.set()  # the page went (or the turn is over): an answer under way stops

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/chat/stop", response_model=StopChat, tags=["chat"], dependencies=[Depends(same_origin)],
              responses={**REFUSED, 404: {"description": "nothing is answering in that conversation"}})
    def chat_stop(body: StopChat) -> StopChat:
        """Stop the answer under way in a conversation (what came so far is kept)."""
        with turns_lock:
            stop = turns.get(body.session_id)
        if stop is None:
            raise HTTPException(404, "nothing is answering in that conversation")
        stop.set()
        return body

    @app.get("/api/memories/{memory_id}", response_model=Memory, tags=["memories"],
             responses={404: {"description": "no memory with that id"}})
    def memory_by_id(memory_id: str) -> Memory:
        """One memory, whole (what a chat citation opens)."""
        from imprint.core import check_memory_ids

        try:
            ids = check_memory_ids([memory_id])
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        found = the_core().get(ids)
        if not found:
            raise HTTPException(404, "no such memory (forgotten?)")
        return _memory(found[0])

    return app
