"""The dashboard's FastAPI app: JSON endpoints behind each page, SSE for sync.

One :class:`~imprint.local.LocalActors` (embedder and both stores) lives as
long as the app: the embedded Qdrant store admits one client per data dir, so
pages and sync sessions all go through the same actors.

Security: the server binds 127.0.0.1; requests must name a loopback Host (a
DNS-rebinding page cannot reach the API by its own name); state-changing
requests (POST, DELETE, and starting a sync) are refused with 403 when they
come from another origin, so another web page cannot start a sync or approve
a peer.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit

import anyio
import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from imprint.actors.base import ask
from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError
from imprint.messages.store import CountFacts, EmbedTexts, ListFacts, PageMemories, SearchMemories
from imprint.trust import TrustList
from imprint.ui.sessions import Decision, DecisionRefused, SessionGone, SessionRegistry, SyncSession

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Memories fetched per store round trip when the dashboard scans them.
SCAN_PAGE = 1000
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


class Stats(BaseModel):
    memories: int
    by_project: list[Count]
    by_type: list[Count]
    by_source: list[Count]
    facts_active: int
    facts_ended: int


class Status(BaseModel):
    data_dir: str
    workspace: str
    device_id: str
    hostname: str
    model: str | None
    dimension: int | None


class Fact(BaseModel):
    id: int
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
    decision: Decision = Field(description="accept once, trust and accept, or reject")


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
        "(room, approval_required, auto_accepted, peer_connected, progress, stats, error).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    403: {"description": "request from another origin"},
}


# ---------------------------------------------------------------- helpers


def _memory(record: Any) -> Memory:
    return Memory(**msgspec.to_builtins(record))


def _scan_memories(local: Any) -> Iterator[Any]:
    after = None
    while True:
        page = ask(local["memory_store"], PageMemories(limit=SCAN_PAGE, after=after))
        yield from page.records
        if page.next_after is None:
            return
        after = page.next_after


def _counts(counter: Counter[str]) -> list[Count]:
    return [Count(name=name, count=n) for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]


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
    approval_timeout: float = 590.0,
    listen: str = "0.0.0.0:8430",
    extra_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """Build the dashboard app.

    Args:
        settings: resolved options (data dir, workspace, model).
        local: running LocalActors with the embedder; the caller keeps owning
            it. Without one, the app starts its own on startup and stops it on
            shutdown.
        approval_timeout: seconds a serve session waits for a click before it
            rejects the peer (just under the session's own 600 s).
        listen: where the built-in relay listens when Serve names no relay (as the CLI).
        extra_hosts: Host names accepted besides the loopback ones.
    """
    allowed_hosts = LOOPBACK_HOSTS | set(extra_hosts)
    sessions = SessionRegistry(approval_timeout=approval_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if app.state.local is None:
            from imprint.local import LocalActors

            owned = LocalActors(settings, embedder=True)
            await anyio.to_thread.run_sync(owned.__enter__)
            app.state.local = owned
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
        """Refuse a state-changing request made by another web page."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")
        origin = request.headers.get("origin")
        if origin is None:
            return  # not sent by a browser on another page (curl, same-origin GET)
        parts = urlsplit(origin)
        _, host_port = _host_of(request.headers.get("host", ""))
        try:
            origin_port = parts.port or 80
        except ValueError:
            origin_port = -1
        if parts.scheme != "http" or parts.hostname not in allowed_hosts or origin_port != (host_port or 80):
            raise HTTPException(403, f"request from origin {origin!r} refused")

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
    app.state.sessions = sessions
    app.state.settings = settings

    def actors() -> Any:
        if app.state.local is None:
            raise HTTPException(503, "the local stores are not running")
        return app.state.local

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
        )

    @app.get("/api/memories", response_model=MemoryList, tags=["memories"])
    def memories(
        project: str | None = Query(None, description="only this project"),
        type: str | None = Query(None, description="only this type"),
        source: str | None = Query(None, description="only this source"),
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
        local: Any = Depends(actors),
    ) -> MemoryList:
        """Browse memories, newest first, with filters and paging."""
        projects, types, sources = set(), set(), set()
        matching = []
        for record in _scan_memories(local):
            projects.add(record.project)
            types.add(record.type)
            sources.add(record.source)
            if (project is None or record.project == project) and (type is None or record.type == type) \
                    and (source is None or record.source == source):
                matching.append(record)
        matching.sort(key=lambda r: (-r.timestamp, r.id))
        return MemoryList(
            total=len(matching), offset=offset, limit=limit,
            items=[_memory(r) for r in matching[offset: offset + limit]],
            projects=sorted(projects), types=sorted(types), sources=sorted(sources),
        )

    @app.get("/api/search", response_model=SearchResult, tags=["memories"])
    def search(
        q: str = Query(..., min_length=1, max_length=10_000, description="what to look for"),
        k: int = Query(10, ge=1, le=100, description="how many results"),
        project: str | None = Query(None, description="only this project"),
        local: Any = Depends(actors),
    ) -> SearchResult:
        """Semantic search, best first, with cosine scores."""
        if not q.strip():
            raise HTTPException(422, "the query is empty")
        vector = ask(local["embedder"], EmbedTexts(texts=(q,))).vectors[0]
        hits = ask(local["memory_store"], SearchMemories(vector=vector, limit=k, project=project)).hits
        return SearchResult(query=q, hits=[SearchHit(score=h.score, memory=_memory(h.record)) for h in hits])

    @app.get("/api/stats", response_model=Stats, tags=["stats"])
    def stats(local: Any = Depends(actors)) -> Stats:
        """Counts per project, type and source; facts active and ended."""
        by_project: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        by_source: Counter[str] = Counter()
        total = 0
        for record in _scan_memories(local):
            total += 1
            by_project[record.project] += 1
            by_type[record.type] += 1
            by_source[record.source or "(none)"] += 1
        facts = ask(local["fact_store"], CountFacts())
        return Stats(memories=total, by_project=_counts(by_project), by_type=_counts(by_type),
                     by_source=_counts(by_source), facts_active=facts.active, facts_ended=facts.ended)

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
        return [Fact(id=f.fact_id, **msgspec.to_builtins(f.record)) for f in stored]

    @app.get("/api/trust", response_model=list[TrustedDevice], tags=["trust"])
    def trust_list() -> list[TrustedDevice]:
        """Trusted devices (the same list as `imprint trust list`)."""
        return [TrustedDevice(fingerprint=d.fingerprint, hostname=d.hostname, added=float(d.added), public_key=d.public_key)
                for d in TrustList(settings.trust_path).load()]

    @app.delete("/api/trust/{fingerprint}", response_model=Removed, tags=["trust"],
                dependencies=[Depends(same_origin)], responses={403: {"description": "request from another origin"},
                                                               404: {"description": "not on the trust list"}})
    def trust_remove(fingerprint: str) -> Removed:
        """Forget a trusted device."""
        fp = fingerprint.lower()
        if not TrustList(settings.trust_path).remove(fp):
            raise HTTPException(404, f"{fp} is not on the trust list")
        return Removed(removed=fp)

    # ------------------------------------------------------------ sync

    def _stream(session: SyncSession, request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            cursor = 0
            idle = 0.0
            try:
                while True:
                    batch, finished = await anyio.to_thread.run_sync(session.wait_events, cursor, 1.0)
                    for event in batch:
                        yield f"data: {json.dumps(event)}\n\n"
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
                if not session.finished:
                    session.cancel()  # nobody is left to click: a pending approval is a rejection

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/sync/serve", response_class=StreamingResponse, tags=["sync"], responses=SSE_RESPONSE,
             dependencies=[Depends(same_origin)])
    def sync_serve(
        request: Request,
        relay: str | None = Query(None, description="relay: HOST, ws://HOST:PORT or wss://HOST; default as for the CLI "
                                                    "(IMPRINT_RELAY, else a relay in this process)"),
        plaintext: bool = Query(False, description="the original's plaintext protocol"),
        local: Any = Depends(actors),
    ) -> StreamingResponse:
        """Start a provider session and stream its events; the `room` event carries target, pin and session_id."""
        from imprint.sync.addresses import relay_base
        from imprint.sync_cli import run_serve

        if relay:
            try:
                relay_base(relay)
            except ConfigError as exc:
                raise HTTPException(422, str(exc)) from None
        session = sessions.new("serve")
        session.start(lambda s: run_serve(
            settings, relay=relay or None, listen=listen, mode="plaintext" if plaintext else "encrypted",
            batch_size=500, idle_timeout=120.0, report=s.emit, approver=s.approver, local=local,
            on_session=s.attach))
        return _stream(session, request)

    @app.get("/api/sync/join", response_class=StreamingResponse, tags=["sync"], responses=SSE_RESPONSE,
             dependencies=[Depends(same_origin)])
    def sync_join(
        request: Request,
        target: str = Query(..., min_length=1, max_length=500, description="ROOM, HOST/ROOM or ws[s]://HOST/ROOM as serve printed"),
        pin: str = Query(..., pattern=r"^\s*[A-Za-z0-9]{8}\s*$", description="the 8-character PIN serve printed"),
        plaintext: bool = Query(False, description="the original's plaintext protocol"),
        local: Any = Depends(actors),
    ) -> StreamingResponse:
        """Join another machine's serve session and stream progress and the final stats."""
        from imprint.sync.addresses import default_relay, parse_target
        from imprint.sync_cli import run_join

        try:
            parse_target(target.strip(), default_relay=default_relay())
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        session = sessions.new("join")
        session.start(lambda s: run_join(
            settings, target=target.strip(), pin=pin.strip(), mode="plaintext" if plaintext else "encrypted",
            batch_size=500, idle_timeout=120.0, report=s.emit, local=local))
        return _stream(session, request)

    @app.post("/api/sync/approve", response_model=ApproveResult, tags=["sync"], dependencies=[Depends(same_origin)],
              responses={403: {"description": "request from another origin"},
                         404: {"description": "unknown or finished session"},
                         409: {"description": "already decided, or no peer is waiting"}})
    def sync_approve(body: ApproveRequest) -> ApproveResult:
        """Answer a serve session's `approval_required`: accept once, trust and accept, or reject."""
        session = sessions.get(body.session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        try:
            session.decide(body.decision)
        except SessionGone as exc:
            raise HTTPException(404, str(exc)) from None
        except DecisionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return ApproveResult(session_id=session.id, decision=body.decision)

    @app.get("/api/sync/sessions/{session_id}", response_model=SessionInfo, tags=["sync"],
             responses={404: {"description": "unknown session"}})
    def sync_session(session_id: str) -> SessionInfo:
        """A session's events so far (to catch up after a reload)."""
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(404, "no such session")
        return SessionInfo(session_id=session.id, kind=session.kind, finished=session.finished, events=list(session.events))

    return app
