"""What the service and its clients say on the data dir's Unix socket.

Frames: a 4-byte big-endian length, then that many bytes of MessagePack, at
most :data:`MAX_FRAME` (a bigger announced length is refused before anything
is read). The first exchange is :class:`Hello` and :class:`Welcome`, whose
shape never changes: each side names its :data:`PROTOCOL`, so a client and a
service of different versions never talk past each other.

Then a client sends one request at a time (a tagged struct, each carrying the
:class:`Scope` it is about) and reads until its :class:`Done` or
:class:`Failed`. Long requests stream on the way: :class:`Note` lines for the
user, a sync's :class:`EventOut` events, :class:`AskApproval` prompts that
the client answers with :class:`Answer`; :class:`Cancel` ends a sync.

This module imports nothing heavy: it is on every command's path.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Union

import msgspec

from imprint.config import DEFAULT_MODEL, DEFAULT_WORKSPACE
from imprint.errors import ImprintError
from imprint.messages.records import FactRecord, MemoryRecord
from imprint.messages.session import PeerInfo
from imprint.messages.store import Document, MemoryFilter

#: The service protocol; any change to a request or reply moves it.
PROTOCOL = 3
#: Shown by `imprint service status`.
VERSION = "0.1.0"
#: Largest frame either side accepts (an import batch is cut well below it).
MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class ServiceError(ImprintError):
    """The service could not be reached, started, or understood. The message says
    what happened; the service's own log is `DATA_DIR/logs/service.log`."""


# ---------------------------------------------------------------- first exchange


class Hello(msgspec.Struct, tag="hello", frozen=True):
    protocol: int
    version: str = ""
    pid: int = 0


class Welcome(msgspec.Struct, tag="welcome", frozen=True):
    protocol: int
    version: str = ""
    pid: int = 0


# ---------------------------------------------------------------- requests


class Scope(msgspec.Struct, frozen=True):
    """Which memory a request is about: the workspace, model and store of the command's options."""

    workspace: str = DEFAULT_WORKSPACE
    model: str = DEFAULT_MODEL
    qdrant_url: str | None = None


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    scope: Scope = Scope()


class Given(msgspec.Struct, frozen=True, array_like=True):
    """A vector a record brings (of this store's model): by memory id and content hash, float32 bytes."""

    id: str
    hash: str
    vector: bytes


class ModelOf(Request, tag="model"):
    """Reply: ModelInfo."""


class Remember(Request, tag="remember"):
    """Store finalized memory records. Reply: StoreResult."""

    records: tuple[MemoryRecord, ...]
    given: tuple[Given, ...] = ()
    #: Store a record longer than the model's window as its chunks (`imprint import`).
    chunk: bool = False


class StoreDocuments(Request, tag="store_documents"):
    """Store texts, chunked to the model's window; with `replace`, each document's source keeps
    only its new chunks. Reply: tuple[StoredText, ...]."""

    documents: tuple[Document, ...]
    replace: bool = False


class SourceChunks(Request, tag="source_chunks"):
    """A document's chunks in order. Reply: tuple[MemoryRecord, ...]."""

    source: str
    project: str | None = None
    start: int = 0
    end: int | None = None


class Sources(Request, tag="sources"):
    """The sources held, most chunks first. Reply: tuple[FacetCount, ...]."""

    project: str | None = None
    limit: int = 50


class OverviewOf(Request, tag="overview"):
    """Reply: Overview."""


class Search(Request, tag="search"):
    """Reply: tuple[SearchHit, ...]."""

    query: str
    k: int = 5
    project: str | None = None
    #: (a memory's type: `type` names the request itself on the wire)
    memory_type: str | None = None
    source: str | None = None


class Get(Request, tag="get"):
    """Reply: tuple[MemoryRecord, ...]."""

    ids: tuple[str, ...]


class Count(Request, tag="count"):
    """Reply: int."""

    where: MemoryFilter = MemoryFilter()


class Forget(Request, tag="forget"):
    """Reply: Forgotten."""

    ids: tuple[str, ...] = ()
    where: MemoryFilter | None = None


class MemoryPageOf(Request, tag="memory_page"):
    """Reply: MemoryPage."""

    after: str | None = None
    limit: int = 500
    vectors: bool = False


class FactPageOf(Request, tag="fact_page"):
    """Reply: FactPage."""

    after: tuple[str, str, str, float] | None = None
    limit: int = 500


class FactAdd(Request, tag="fact_add"):
    """Reply: StoredFact."""

    record: FactRecord


class FactEnd(Request, tag="fact_end"):
    """Reply: StoredFact."""

    #: The fact's id (its key or a unique prefix), or its old local number.
    fact: str


class FactShow(Request, tag="fact_show"):
    """Reply: StoredFact, the one fact an id names (see :attr:`FactEnd.fact`)."""

    fact: str


class FactForget(Request, tag="fact_forget"):
    """Reply: StoredFact."""

    #: As :attr:`FactEnd.fact`.
    fact: str


class TrashList(Request, tag="trash_list"):
    """Reply: tuple of imprint.trash.TrashEntry (what peers made this machine forget)."""

    since: float = 0.0
    peer: str = ""
    ids: tuple[str, ...] = ()
    limit: int = 1000


class TrashRestore(Request, tag="trash_restore"):
    """Restore the trash entries these filters select (ids `m12`/`f3`, or since/peer). Reply: TrashRestored."""

    since: float = 0.0
    peer: str = ""
    ids: tuple[str, ...] = ()


class TrashEmpty(Request, tag="trash_empty"):
    """Reply: int, the entries dropped."""


class FactList(Request, tag="fact_list"):
    """Reply: tuple[StoredFact, ...]."""

    subject: str | None = None
    predicate: str | None = None
    include_ended: bool = False
    limit: int = 1000
    object: str | None = None
    as_of: float | None = None


class StoreStatus(Request, tag="store_status"):
    """Reply: StoreStatusReply."""


class ServiceStatus(Request, tag="service_status"):
    """Reply: ServiceInfo."""


class StopService(Request, tag="stop"):
    """Stop the service (after its reply). `if_idle`: only if no other client is connected. Reply: bool (stopping)."""

    if_idle: bool = False


class SyncOptions(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "encrypted"
    batch_size: int = 500
    idle_timeout: float = 120.0
    spool_max_bytes: int | None = None
    vectors: bool = True
    #: imprint.protocol.forgets.ForgetLimit.parse's text ("none": never ask, --yes).
    max_forget: str = "100,10%"


class Serve(Request, tag="serve"):
    """Provide one sync; streams EventOut and AskApproval. Reply: the Stats event (JSON bytes)."""

    relay: str | None = None
    listen: str = "0.0.0.0:8430"
    #: The front end's IMPRINT_RELAY (the service's environment is not the user's shell's).
    default_relay: str | None = None
    options: SyncOptions = SyncOptions()


class Join(Request, tag="join"):
    """Join one sync; streams EventOut. Reply: the Stats event (JSON bytes)."""

    target: str
    pin: str
    default_relay: str | None = None
    options: SyncOptions = SyncOptions()


class ChatEndpoint(msgspec.Struct, frozen=True):
    """The front end's chat configuration (IMPRINT_CHAT_*: the service's environment is not the
    user's shell's). Empty base_url: the local model."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""
    timeout: float = 120.0


class Dashboard(Request, tag="dashboard"):
    """Serve the dashboard on 127.0.0.1:port until this client goes or cancels. Streams one
    EventOut (UiReady) once it listens. Reply: None."""

    port: int
    default_relay: str | None = None
    chat: ChatEndpoint = ChatEndpoint()


class ChatAsk(Request, tag="chat"):
    """Ask the memory a question; streams ChatOut events (imprint.chat.agent). `conversation`: go on
    with that one ("" = a new one). Reply: the conversation's id."""

    question: str
    conversation: str = ""
    endpoint: ChatEndpoint = ChatEndpoint()


class ChatConversations(Request, tag="chat_list"):
    """The workspace's conversations, newest first. Reply: a list of maps (id, title, created_at,
    updated_at, messages)."""

    limit: int = 50


class Cancel(Request, tag="cancel"):
    """End the streaming request under way (Ctrl-C of the front end)."""

    reason: str = "cancelled"


class Answer(Request, tag="answer"):
    """The user's answer to an AskApproval."""

    text: str


ClientFrame = Union[Hello, ModelOf, Remember, Search, Get, Count, Forget, MemoryPageOf, FactPageOf, FactAdd,
                    FactEnd, FactShow, FactForget, FactList, StoreDocuments, SourceChunks, Sources, OverviewOf, TrashList, TrashRestore, TrashEmpty, StoreStatus, ServiceStatus, StopService, Serve, Join, Dashboard,
                    ChatAsk, ChatConversations, Cancel, Answer]


# ---------------------------------------------------------------- replies


class Done(msgspec.Struct, tag="done", frozen=True):
    """The request's answer, MessagePack of its reply type."""

    value: msgspec.Raw = msgspec.Raw(b"\xc0")


class Failed(msgspec.Struct, tag="failed", frozen=True):
    """The request failed: an ImprintError subclass by name, its message and exit code."""

    kind: str
    message: str
    exit_code: int = 1


class Note(msgspec.Struct, tag="note", frozen=True):
    """A line for the user (stderr), e.g. "loading the embedding model…"."""

    text: str


class EventOut(msgspec.Struct, tag="event", frozen=True):
    """A sync's event, as the JSON `--json` prints."""

    data: bytes


class AskApproval(msgspec.Struct, tag="ask", frozen=True):
    """A device wants to sync: the client asks its user and sends an Answer."""

    peer: PeerInfo
    warning: str = ""


class AskForget(msgspec.Struct, tag="ask_forget", frozen=True):
    """The other machine would make this one forget more than --max-forget allows: the client
    asks its user and sends an Answer ("yes" forgets them)."""

    count: int
    total: int
    peer: PeerInfo | None = None


class ChatOut(msgspec.Struct, tag="chat_event", frozen=True):
    """A chat event (imprint.chat.agent), as JSON."""

    data: bytes


ServiceFrame = Union[Welcome, Done, Failed, Note, EventOut, AskApproval, AskForget, ChatOut]


class StoreStatusReply(msgspec.Struct, frozen=True):
    """What `imprint status` shows of a store the service holds."""

    location: str
    kind: str
    dimension: int | None
    count: int
    model: str
    facts_active: int
    facts_ended: int
    #: A peer's vectors not checked yet (imprint.actors.verifier), and peers whose vectors were wrong.
    vectors_unchecked: int = 0
    distrusted: tuple[str, ...] = ()


class ServiceInfo(msgspec.Struct, frozen=True):
    """`imprint service status`."""

    pid: int
    version: str
    protocol: int
    started: float
    uptime: float
    rss_bytes: int
    socket: str
    clients: int
    syncs: int
    dashboards: int
    idle_exit: float
    models_loaded: tuple[str, ...] = ()
    workspaces: tuple[str, ...] = ()
    #: Per request kind, over the last requests: (count, p50 ms, p99 ms) inside the service.
    latency_ms: dict[str, tuple[int, float, float]] = {}
    #: The local chat model is in memory (it loads with the first question, ~0.6 GB).
    chat_model_loaded: bool = False


# ---------------------------------------------------------------- framing


_encoder = msgspec.msgpack.Encoder()
client_frames = msgspec.msgpack.Decoder(ClientFrame)
service_frames = msgspec.msgpack.Decoder(ServiceFrame)


class FrameError(ServiceError):
    """A frame that is too big, cut short or not one of ours."""


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def send_frame(sock: socket.socket, frame: Any) -> None:
    body = _encoder.encode(frame)
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body):,} bytes is over the {MAX_FRAME:,}-byte limit")
    sock.sendall(_LENGTH.pack(len(body)) + body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if not chunks:
                return None
            raise FrameError("the connection closed in the middle of a frame")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame's body; None when the other side closed cleanly between frames."""
    head = _read_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size:,} bytes was announced; the limit is {MAX_FRAME:,}")
    body = _read_exactly(sock, size)
    if body is None:
        raise FrameError("the connection closed in the middle of a frame")
    return body
