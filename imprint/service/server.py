"""The service: one process per data dir that owns the stores and the model,
and serves the core API (:mod:`imprint.core`) on a Unix socket in the data dir.

    client ──Hello──▶ ┐
           ◀─Welcome─ │  one thread per connection: a request at a time,
           ──request─▶ │  answered Done / Failed; a sync or the dashboard runs
           ◀─Note/EventOut/AskApproval…─ Done/Failed   on a worker while the
           ──Cancel / Answer──▶ ┘                       connection reads Cancel/Answer

Started by the first command that needs the store (see
:mod:`imprint.service.client`), it holds `DATA_DIR/service.lock` (flock) for
its whole life, so two starts racing end with one service; it replaces a
stale socket a crash left, listens only on `DATA_DIR/imprint.sock` (0600, in
the 0700 data dir) and never on a TCP port. It exits by itself after
IMPRINT_SERVICE_IDLE seconds (default 600) with no client connected, on
`imprint service stop`, and on SIGTERM; what it stops it stops in reverse
order, so every write a client was told of is on disk.
"""

from __future__ import annotations

import collections
import fcntl
import gc
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
from loguru import logger

from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError, InputError
from imprint.service import protocol as p
from imprint.service.paths import lock_path, reachable, socket_path

#: Seconds with no client connected after which the service exits (env IMPRINT_SERVICE_IDLE).
DEFAULT_IDLE = 600.0
#: Seconds a front end's Ctrl-C waits for what it started to stop.
CANCEL_WAIT = 10.0
#: Seconds a serve waits for its user's approval (as the CLI did).
APPROVAL_TIMEOUT = 600.0
#: Seconds a client may take to finish sending a frame it began during a sync.
FRAME_WAIT = 30.0
#: Seconds a thread holds the GIL before another may take it (Python's default is 0.005).
SWITCH_INTERVAL = 0.001
#: Allocations between two young-generation collections in the service (Python's default: 700).
GC_THRESHOLD = 50_000
#: Requests of each kind whose times `imprint service status` summarises.
LATENCY_WINDOW = 10_000


def idle_setting() -> float:
    """IMPRINT_SERVICE_IDLE in seconds (ConfigError for a bad value)."""
    text = os.environ.get("IMPRINT_SERVICE_IDLE", "").strip()
    if not text:
        return DEFAULT_IDLE
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"IMPRINT_SERVICE_IDLE={text!r} is not a number of seconds") from None
    if not 0 < value <= 7 * 86400:
        raise ConfigError(f"IMPRINT_SERVICE_IDLE={text!r}: give 1 second to 7 days")
    return value


class Streaming:
    """A sync or a dashboard under way for one connection: its cancel flag and the answers it waits for."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.reason = "cancelled"
        self.answers: queue.Queue[str] = queue.Queue()
        self.session: Any = None
        self._lock = threading.Lock()

    def attach(self, session: Any) -> None:
        with self._lock:
            self.session = session
            if self.cancelled.is_set():
                session.cancel(self.reason)

    def cancel(self, reason: str) -> None:
        with self._lock:
            if not self.cancelled.is_set():
                self.reason = reason
                self.cancelled.set()
            if self.session is not None:
                self.session.cancel(reason)
        self.answers.put("")


class Connection:
    """One client: its socket, with sends serialised (a worker and the reader both send)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send = threading.Lock()
        self.open = True

    def send(self, frame: Any) -> bool:
        """Send `frame`; False when the client is gone."""
        with self._send:
            if not self.open:
                return False
            try:
                p.send_frame(self.sock, frame)
                return True
            except OSError:
                self.open = False
                return False

    def close(self) -> None:
        self.open = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def failure(exc: BaseException, *, log_hint: str = "") -> p.Failed:
    if isinstance(exc, ImprintError):
        return p.Failed(kind=type(exc).__name__, message=str(exc), exit_code=exc.exit_code)
    logger.opt(exception=exc).error("service: unexpected error")
    return p.Failed(kind="ImprintError", message=f"internal error in the imprint service: {type(exc).__name__}: "
                                                 f"{str(exc)[:200]}{log_hint}")


class Service:
    """The resident service of one data dir.

    Args:
        data_dir: the data dir it serves (prepared: exists, 0700).
        idle: seconds without a client after which it exits.
    """

    def __init__(self, data_dir: Path, *, idle: float = DEFAULT_IDLE) -> None:
        self.data_dir = data_dir
        self.idle = idle
        self.socket_path = socket_path(data_dir)
        self.started = time.time()
        self._cores: dict[p.Scope, Any] = {}
        self._cores_lock = threading.Lock()
        self._clients: set[Connection] = set()
        self._streams: set[Streaming] = set()
        self._dashboards = 0
        #: Cores a dashboard uses (not to be closed for another model meanwhile).
        self._pinned: dict[p.Scope, int] = {}
        self._state = threading.Lock()
        self._last_active = time.monotonic()
        #: How long the last requests of each kind took inside the service (for status).
        self._latency: dict[str, collections.deque[float]] = {}
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._lock_file: Any = None
        self._threads: list[threading.Thread] = []
        self._socket_ino = -1
        self._shut = False
        self.ready = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def acquire(self) -> bool:
        """Take the data dir's service lock; False when another service holds it."""
        fh = open(lock_path(self.data_dir), "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_file = fh
        return True

    def bind(self) -> None:
        """Listen on the socket, replacing one a dead service left (we hold the lock: it is stale)."""
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created 0600, never briefly wider
        try:
            with reachable(self.socket_path) as address:
                listener.bind(address)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self._socket_ino = self.socket_path.stat().st_ino
        listener.listen(64)
        listener.settimeout(0.5)
        self._listener = listener

    def serve_forever(self) -> None:
        """Accept clients until stopped or idle; then stop everything."""
        assert self._listener is not None
        self.ready.set()
        logger.info("service {} listening on {}", os.getpid(), self.socket_path)
        try:
            while not self._stop.is_set():
                try:
                    sock, _ = self._listener.accept()
                except socket.timeout:
                    if self._idle_for() > self.idle:
                        logger.info("service: idle for {:.0f} s, exiting", self.idle)
                        break
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                if not _same_user(sock):
                    sock.close()
                    continue
                conn = Connection(sock)
                with self._state:
                    self._clients.add(conn)
                    self._last_active = time.monotonic()
                thread = threading.Thread(target=self._serve_client, args=(conn,), name="service-client", daemon=True)
                thread.start()
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        finally:
            self.shutdown()

    def _idle_for(self) -> float:
        with self._state:
            if self._clients or self._streams:
                return 0.0
            return time.monotonic() - self._last_active

    def stop(self) -> None:
        """Ask the accept loop to end (from any thread or a signal handler)."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop listening, end what runs, stop every core in reverse, release the lock."""
        self._stop.set()
        if self._shut:
            return
        self._shut = True
        if self._listener is not None:
            try:
                if self.socket_path.stat().st_ino == self._socket_ino:  # not one a newer service bound
                    self.socket_path.unlink()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._state:
            streams = list(self._streams)
            clients = list(self._clients)
        for stream in streams:
            stream.cancel("the imprint service is stopping")
        for conn in clients:
            # A client that is only connected (an agent's MCP server, idle) waits in a read: end the read
            # side so its thread returns now; a stream's worker can still send its last frame.
            try:
                conn.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + CANCEL_WAIT
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for conn in clients:
            conn.close()
        with self._cores_lock:
            cores = list(self._cores.values())
            self._cores.clear()
        for core in reversed(cores):
            try:
                core.close()
            except Exception:
                logger.exception("service: stopping a core failed")
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        logger.info("service {} stopped", os.getpid())

    # ---------------------------------------------------------------- cores

    def core(self, scope: p.Scope, *, note: Callable[[str], None] | None = None) -> Any:
        """The running Core of a workspace and model (started on first use; what its start-up has
        to say, e.g. an old store being moved, goes to `note`)."""
        from imprint.config import validate_workspace
        from imprint.core import Core

        with self._cores_lock:
            core = self._cores.get(scope)
            if core is None:
                validate_workspace(scope.workspace)
                self._release_store_of(scope)
                settings = Settings(data_dir=self.data_dir, workspace=scope.workspace, model=scope.model,
                                    qdrant_url=scope.qdrant_url).prepare()
                core = Core(settings, note=note).start()
                self._cores[scope] = core
            return core

    def _release_store_of(self, scope: p.Scope) -> None:
        """A workspace's store is open once: a command with another --model closes the core that
        holds it (its own store then says what it thinks of that model), unless a sync or the
        dashboard uses it."""
        from imprint.errors import StoreError

        for other_scope, other in list(self._cores.items()):
            if (other_scope.workspace, other_scope.qdrant_url) != (scope.workspace, scope.qdrant_url):
                continue
            if other.syncs_running or self._pinned.get(other_scope):
                raise StoreError(f"workspace {scope.workspace!r} is in use with model {other_scope.model!r} by a sync or "
                                 "the dashboard; run this again when it is done")
            del self._cores[other_scope]
            other.close()

    def store_core(self, scope: p.Scope) -> Any:
        """The running core holding `scope`'s store, whatever its model; None if none holds it."""
        with self._cores_lock:
            for other_scope, other in self._cores.items():
                if (other_scope.workspace, other_scope.qdrant_url) == (scope.workspace, scope.qdrant_url):
                    return other
        return None

    # ---------------------------------------------------------------- one client

    def _serve_client(self, conn: Connection) -> None:
        try:
            self._converse(conn)
        except p.FrameError as exc:
            conn.send(p.Failed(kind="ServiceError", message=str(exc)))
            logger.info("service: client dropped: {}", exc)
        except OSError as exc:
            logger.debug("service: client connection: {}", exc)
        except Exception:
            logger.exception("service: client handler crashed")
        finally:
            conn.close()
            with self._state:
                self._clients.discard(conn)
                self._last_active = time.monotonic()

    def _converse(self, conn: Connection) -> None:
        body = p.read_frame(conn.sock)
        if body is None:
            return
        try:
            hello = p.client_frames.decode(body)
        except msgspec.DecodeError as exc:
            raise p.FrameError(f"not an imprint service frame: {exc}") from None
        if not isinstance(hello, p.Hello):
            raise p.FrameError("the first frame must be hello")
        conn.send(p.Welcome(protocol=p.PROTOCOL, version=p.VERSION, pid=os.getpid()))
        same = hello.protocol == p.PROTOCOL
        while True:
            body = p.read_frame(conn.sock)
            if body is None:
                return
            try:
                request = p.client_frames.decode(body)
            except msgspec.DecodeError as exc:
                conn.send(p.Failed(kind="ServiceError", message=f"not an imprint service request: {exc}"))
                continue
            with self._state:
                self._last_active = time.monotonic()
            if not same and not isinstance(request, (p.StopService, p.ServiceStatus)):
                conn.send(p.Failed(kind="ServiceError", message=f"this imprint service speaks protocol {p.PROTOCOL}, "
                                                                f"the client {hello.protocol}"))
                continue
            if isinstance(request, (p.Serve, p.Join, p.Dashboard, p.ChatAsk)):
                if not self._stream(conn, request):
                    return
                continue
            if isinstance(request, (p.Cancel, p.Answer, p.Hello)):
                continue  # nothing under way: a late Ctrl-C
            started = time.perf_counter()
            try:
                value = self._answer(conn, request)
            except Exception as exc:
                conn.send(failure(exc, log_hint=self._hint()))
                continue
            finally:
                self._timed(type(request).__name__, time.perf_counter() - started)
            conn.send(p.Done(value=msgspec.Raw(p.encode(value))))
            if isinstance(request, p.StopService) and value:
                self.stop()

    def _hint(self) -> str:
        return f" (details in {self.data_dir / 'logs' / 'imprint.log'})"

    def _answer(self, conn: Connection, request: Any) -> Any:
        def note(text: str) -> None:
            conn.send(p.Note(text=text.removeprefix("imprint: ")))

        match request:
            case p.ServiceStatus():
                return self.info()
            case p.StopService(if_idle=if_idle):
                with self._state:
                    others = len(self._clients) - 1 + len(self._streams)
                return not (if_idle and others > 0)
            case p.StoreStatus():
                # Read-only: from the core holding the store if any; none is started for it.
                held = self.store_core(request.scope)
                if held is None:
                    return None
                store = held.describe_store()
                facts = held.count_facts()
                checks = held.vector_checks()
                return p.StoreStatusReply(location=store.location, kind=store.kind, dimension=store.dimension,
                                          count=store.count, model=store.model, facts_active=facts.active,
                                          facts_ended=facts.ended, vectors_unchecked=checks.waiting,
                                          distrusted=checks.distrusted)
        from imprint.service.dispatch import answer

        return answer(self.core(request.scope, note=note), request, note)

    # ---------------------------------------------------------------- syncs and the dashboard

    def _stream(self, conn: Connection, request: Any) -> bool:
        """Run a sync or the dashboard on a worker; read Cancel / Answer meanwhile. False if the client went."""
        stream = Streaming()
        with self._state:
            self._streams.add(stream)
        worker = threading.Thread(target=self._run_stream, args=(conn, request, stream),
                                  name=f"service-{type(request).__name__.lower()}", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                readable, _, _ = select.select([conn.sock], [], [], 0.2)
                if not readable:
                    continue
                conn.sock.settimeout(FRAME_WAIT)  # a frame begun is finished promptly, or the client is dropped
                body = p.read_frame(conn.sock)
                conn.sock.settimeout(None)
                if body is None:
                    stream.cancel("the front end that started it went away")
                    worker.join(timeout=CANCEL_WAIT * 3)
                    return False
                try:
                    frame = p.client_frames.decode(body)
                except msgspec.DecodeError:
                    continue
                match frame:
                    case p.Cancel(reason=reason):
                        stream.cancel(reason)
                    case p.Answer(text=text):
                        stream.answers.put(text)
                    case _:
                        conn.send(p.Failed(kind="ServiceError", message="one request at a time: a sync or the "
                                                                        "dashboard is under way on this connection"))
            return True
        except (OSError, p.FrameError):
            stream.cancel("the front end that started it went away")
            worker.join(timeout=CANCEL_WAIT * 3)
            return False
        finally:
            with self._state:
                self._streams.discard(stream)

    def _run_stream(self, conn: Connection, request: Any, stream: Streaming) -> None:
        try:
            core = self.core(request.scope, note=lambda text: conn.send(p.Note(text=text.removeprefix("imprint: "))))
            match request:
                case p.Serve() | p.Join():
                    value = self._sync(conn, core, request, stream)
                case p.Dashboard(port=port, default_relay=relay, chat=chat):
                    value = self._dashboard(conn, core, port, stream, default_relay=relay or "", chat=chat)
                case p.ChatAsk():
                    value = self._chat(conn, core, request, stream)
            conn.send(p.Done(value=msgspec.Raw(p.encode(value))))
        except BaseException as exc:
            conn.send(failure(exc, log_hint=self._hint()))

    def _sync(self, conn: Connection, core: Any, request: p.Serve | p.Join, stream: Streaming) -> bytes:
        from imprint.messages.events import encode_event

        def report(event: Any) -> None:
            conn.send(p.EventOut(data=encode_event(event)))

        def approver(peer: Any, warning: str) -> str:
            if stream.cancelled.is_set() or not conn.send(p.AskApproval(peer=peer, warning=warning)):
                return ""
            try:
                return stream.answers.get(timeout=APPROVAL_TIMEOUT)
            except queue.Empty:
                return ""

        def confirm_forget(count: int, total: int, peer: Any) -> bool:
            if stream.cancelled.is_set() or not conn.send(p.AskForget(count=count, total=total, peer=peer)):
                return False
            try:
                return stream.answers.get(timeout=APPROVAL_TIMEOUT) == "yes"
            except queue.Empty:
                return False

        o = request.options
        common: dict[str, Any] = dict(mode=o.mode, batch_size=o.batch_size, idle_timeout=o.idle_timeout,
                                      spool_max_bytes=o.spool_max_bytes, vectors=o.vectors, report=report,
                                      on_session=stream.attach, forget_limit=_forget_limit(o.max_forget),
                                      confirm_forget=confirm_forget)
        if stream.cancelled.is_set():
            raise ImprintError(stream.reason)
        if isinstance(request, p.Serve):
            stats = core.serve(relay=request.relay, listen=request.listen, approver=approver,
                               default_relay=request.default_relay, **common)
        else:
            stats = core.join(target=request.target, pin=request.pin, default_relay=request.default_relay, **common)
        return encode_event(stats)

    def _chat(self, conn: Connection, core: Any, request: p.ChatAsk, stream: Streaming) -> str:
        import json

        from imprint.chat.agent import Chat, CoreMemory, run_turn

        conversations = core.conversations()
        if request.conversation:
            conversation = conversations.require(request.conversation)["id"]
        else:
            conversation = conversations.create()["id"]

        def emit(event: dict[str, Any]) -> None:
            conn.send(p.ChatOut(data=json.dumps(event).encode()))

        emit({"type": "conversation", "id": conversation})
        chat = Chat(CoreMemory(core), endpoint_of(request.endpoint), settings=core.settings)
        run_turn(chat, conversations, conversation, request.question, emit, stream.cancelled)
        return conversation

    def _dashboard(self, conn: Connection, core: Any, port: int, stream: Streaming, *, default_relay: str,
                   chat: p.ChatEndpoint = p.ChatEndpoint()) -> None:
        import uvicorn

        from imprint.actors.embedder import WarmUp
        from imprint.messages.events import UiReady, encode_event
        from imprint.ui.app import create_app
        from imprint.ui.server import HOST, bind_dashboard

        sock = bind_dashboard(port)
        url = f"http://{HOST}:{port}/"
        conn.send(p.Note(text="starting the dashboard…"))
        scope = next((s for s, c in self._cores.items() if c is core), None)
        with self._state:
            self._pinned[scope] = self._pinned.get(scope, 0) + 1
        try:
            core.local["embedder"].tell(WarmUp())  # in the background: the first search then need not wait
            app = create_app(core.settings, local=core.local, core=core, default_relay=default_relay,
                             chat_endpoint=endpoint_of(chat))
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                   timeout_graceful_shutdown=3))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ui-server", daemon=True)
            with self._state:
                self._dashboards += 1
            thread.start()
            try:
                while not server.started and thread.is_alive() and not stream.cancelled.wait(0.05):
                    pass
                if server.started:
                    conn.send(p.EventOut(data=encode_event(UiReady(url=url))))
                    stream.cancelled.wait()
            finally:
                server.should_exit = True
                thread.join(timeout=CANCEL_WAIT)
                with self._state:
                    self._dashboards -= 1
        finally:
            with self._state:
                self._pinned[scope] -= 1
            sock.close()
        return None

    # ---------------------------------------------------------------- status

    def _timed(self, kind: str, seconds: float) -> None:
        with self._state:
            self._latency.setdefault(kind, collections.deque(maxlen=LATENCY_WINDOW)).append(seconds)

    def latency(self) -> dict[str, tuple[int, float, float]]:
        with self._state:
            windows = {kind: sorted(values) for kind, values in self._latency.items() if values}
        return {kind: (len(v), round(v[len(v) // 2] * 1000, 1), round(v[min(len(v) - 1, int(0.99 * (len(v) - 1) + 0.5))] * 1000, 1))
                for kind, v in windows.items()}

    def info(self) -> p.ServiceInfo:
        import psutil

        with self._cores_lock:
            cores = dict(self._cores)
        loaded = []
        syncs = 0
        for scope, core in cores.items():
            try:
                if core.model_loaded():
                    loaded.append(scope.model)
            except ImprintError:
                pass
            syncs += core.syncs_running
        with self._state:
            clients = len(self._clients)
            dashboards = self._dashboards
        return p.ServiceInfo(pid=os.getpid(), version=p.VERSION, protocol=p.PROTOCOL, started=self.started,
                             uptime=time.time() - self.started, rss_bytes=psutil.Process().memory_info().rss,
                             socket=str(self.socket_path), clients=clients, syncs=syncs, dashboards=dashboards,
                             idle_exit=self.idle, models_loaded=tuple(sorted(set(loaded))),
                             workspaces=tuple(sorted({s.workspace for s in cores})), latency_ms=self.latency(),
                             chat_model_loaded=_chat_model_loaded())


def _chat_model_loaded() -> bool:
    if "imprint.chat.models" not in sys.modules:
        return False
    from imprint.chat.models import LocalModel

    return LocalModel._instance is not None and LocalModel._instance.loaded


def endpoint_of(chat: p.ChatEndpoint) -> Any:
    from imprint.chat.models import Endpoint

    return Endpoint(base_url=chat.base_url, model=chat.model, api_key=chat.api_key, timeout=chat.timeout)


def _same_user(sock: socket.socket) -> bool:
    """Whether the connecting process runs as this service's user (the socket's 0600 mode and the
    0700 data dir already say so; this holds even if a user loosened them)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return True  # no peer credentials on this platform: the file modes decide
    if uid not in (os.getuid(), 0):
        logger.warning("service: refused a connection from uid {}", uid)
        return False
    return True


def run_service(data_dir: Path, *, idle: float | None = None, on_ready: Callable[[Service], None] | None = None) -> int:
    """The service's main: lock, listen, serve until idle or stopped. 0 also when another
    service already holds the data dir (a start race lost: that one serves)."""
    service = Service(data_dir, idle=idle if idle is not None else idle_setting())
    # Many clients wait on sockets while a sync's stages compute: hand the GIL over more often,
    # so a search is not queued 5 ms at every step behind them (bench_service: p99 halved).
    sys.setswitchinterval(SWITCH_INTERVAL)
    # A service holds many long-lived objects (stores' versions, pages, sessions): full collections
    # over them stall every client at once, so they run a hundred times less often.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    if not service.acquire():
        logger.info("service: another service holds {}; leaving it to that one", data_dir)
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: service.stop())
        signal.signal(signal.SIGINT, lambda signum, frame: service.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        service.bind()
        if on_ready is not None:
            on_ready(service)
        service.serve_forever()
    finally:
        service.shutdown()
    return 0


def _forget_limit(text: str) -> Any:
    from imprint.protocol.forgets import ForgetLimit

    try:
        return ForgetLimit.parse(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None
