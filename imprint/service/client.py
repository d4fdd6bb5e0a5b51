"""The client side of the service: what every command uses to reach the memory.

`ServiceClient(settings)` connects to the data dir's service, starting it
when nobody listens (like ssh-agent or Ollama's server: nothing to run by
hand). It imports no torch, transformers, sentence-transformers or Qdrant:
a warm `imprint search` is the process start, this module, one round trip.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import msgspec

from imprint.config import Settings
from imprint.errors import ImprintError
from imprint.service import protocol as p
from imprint.service.paths import connect, service_log, socket_path

#: Seconds a new service may take to listen (its imports, on a busy machine).
START_WAIT = 120.0
#: Seconds an old service may take to exit when asked to make way for this version.
EXIT_WAIT = 30.0
#: Seconds a Ctrl-C waits for what the request started to stop.
CANCEL_WAIT = 10.0
#: What a command's environment must not hand the service: they are per request.
_PER_REQUEST = ("IMPRINT_WORKSPACE", "IMPRINT_MODEL", "IMPRINT_QDRANT_URL", "IMPRINT_DATA_DIR")

Handler = Callable[[Any], Any]


def _error_class(kind: str) -> type[ImprintError]:
    import imprint.errors as errors

    found = getattr(errors, kind, None) if kind != "ServiceError" else p.ServiceError
    if isinstance(found, type) and issubclass(found, ImprintError):
        return found
    return ImprintError


def raise_failure(failed: p.Failed) -> None:
    """The service's error as the same ImprintError subclass, message and exit code."""
    cls = _error_class(failed.kind)
    exc = ImprintError.__new__(cls)
    Exception.__init__(exc, failed.message)
    exc.exit_code = failed.exit_code
    raise exc


class ServiceClient:
    """A connection to the data dir's service, for one command.

    Args:
        settings: the command's options (the data dir, and the scope of every request).
        start: start the service when none runs (False: `ServiceError` instead).
    """

    def __init__(self, settings: Settings, *, start: bool = True) -> None:
        self.settings = settings
        self.scope = p.Scope(workspace=settings.workspace, model=settings.model, qdrant_url=settings.qdrant_url)
        self.start = start
        self.sock: socket.socket | None = None
        self.welcome: p.Welcome | None = None
        self._send_lock = threading.Lock()
        #: Read-only media (Settings.read_only): the requests are answered in this process.
        self._here: InProcess | None = None

    # ---------------------------------------------------------------- connecting

    def __enter__(self) -> ServiceClient:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> ServiceClient:
        if self.sock is not None or self._here is not None:
            return self
        if self.settings.read_only:
            self._here = InProcess(self.settings)
            return self
        sock = self._connect_or_start()
        welcome = self._hello(sock)
        if welcome.protocol != p.PROTOCOL:
            sock = self._replace(sock, welcome)
            welcome = self._hello(sock)
        self.sock, self.welcome = sock, welcome
        return self

    def _connect_or_start(self) -> socket.socket:
        path = socket_path(self.settings.data_dir)
        try:
            return connect(path, timeout=10)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise p.ServiceError(f"cannot reach the imprint service at {path}: {exc.strerror or exc}") from None
        if not self.start:
            raise p.ServiceError(f"no imprint service runs for {self.settings.data_dir}")
        return self._spawn_and_connect()

    def _spawn_and_connect(self) -> socket.socket:
        path = socket_path(self.settings.data_dir)
        log = service_log(self.settings.data_dir)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _PER_REQUEST}
        with open(log, "ab") as err:
            child = subprocess.Popen(
                [sys.executable, "-m", "imprint", "--data-dir", str(self.settings.data_dir), "service", "run"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + START_WAIT
        while True:
            try:
                return connect(path, timeout=10)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise p.ServiceError(f"cannot reach the imprint service at {path}: {exc.strerror or exc}") from None
            code = child.poll()
            if code not in (None, 0):
                raise p.ServiceError(f"the imprint service could not start (exit {code}): {_last_line(log)}")
            if time.monotonic() > deadline:
                raise p.ServiceError(f"the imprint service did not start within {START_WAIT:.0f} s (see {log})")
            time.sleep(0.05)

    def _hello(self, sock: socket.socket) -> p.Welcome:
        try:
            sock.settimeout(30)
            p.send_frame(sock, p.Hello(protocol=p.PROTOCOL, version=p.VERSION, pid=os.getpid()))
            body = p.read_frame(sock)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise p.ServiceError(f"the imprint service did not answer: {exc.strerror or exc}") from None
        if body is None:
            sock.close()
            raise p.ServiceError("the imprint service closed the connection at once")
        try:
            welcome = p.service_frames.decode(body)
        except msgspec.DecodeError:
            welcome = None
        if not isinstance(welcome, p.Welcome):
            sock.close()
            raise p.ServiceError("what answers on the data dir's socket is not an imprint service")
        return welcome

    def _replace(self, sock: socket.socket, welcome: p.Welcome) -> socket.socket:
        """A service of another version: restart it if nothing else uses it, else one clear line."""
        self.sock = sock
        try:
            stopping = self._call(p.StopService(if_idle=True), bool)
        finally:
            self.close()
        if not stopping:
            raise p.ServiceError(
                f"the imprint service for {self.settings.data_dir} is another version (protocol {welcome.protocol}, "
                f"this imprint speaks {p.PROTOCOL}) and is in use; run 'imprint service stop' once its syncs and "
                "dashboards are done")
        path = socket_path(self.settings.data_dir)
        deadline = time.monotonic() + EXIT_WAIT
        while time.monotonic() < deadline:
            try:
                connect(path, timeout=5).close()
            except OSError:
                break
            time.sleep(0.05)
        return self._spawn_and_connect()

    def close(self) -> None:
        if self._here is not None:
            here, self._here = self._here, None
            here.close()
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    # ---------------------------------------------------------------- requests

    def call(self, request: p.Request, reply: Any = Any, *, on_note: Handler | None = None,
             on_event: Handler | None = None, on_ask: Callable[[Any, str], str] | None = None,
             on_forget: Callable[[int, int, Any], bool] | None = None,
             on_chat: Handler | None = None) -> Any:
        """Send one request (in this client's scope) and return its reply, decoded as `reply`.

        Notes, events and approval prompts that come first go to the handlers. Ctrl-C
        cancels what the request started (a sync stops; the service lives on) and is
        raised once the service says it stopped, or after CANCEL_WAIT seconds.
        """
        self.open()
        if self._here is not None:
            return self._here.call(request, reply, on_note=on_note)
        request = msgspec.structs.replace(request, scope=self.scope)
        return self._call(request, reply, on_note=on_note, on_event=on_event, on_ask=on_ask, on_forget=on_forget,
                          on_chat=on_chat)

    def _call(self, request: Any, reply: Any, *, on_note: Handler | None = None, on_event: Handler | None = None,
              on_ask: Callable[[Any, str], str] | None = None,
              on_forget: Callable[[int, int, Any], bool] | None = None, on_chat: Handler | None = None) -> Any:
        assert self.sock is not None
        try:
            with self._send_lock:
                p.send_frame(self.sock, request)
        except OSError as exc:
            raise self._gone(exc) from None
        try:
            return self._replies(reply, on_note=on_note, on_event=on_event, on_ask=on_ask, on_forget=on_forget,
                                 on_chat=on_chat)
        except KeyboardInterrupt as interrupt:
            self._cancel(interrupt)
            raise

    def _replies(self, reply: Any, *, on_note: Handler | None, on_event: Handler | None,
                 on_ask: Callable[[Any, str], str] | None, until: float | None = None,
                 on_forget: Callable[[int, int, Any], bool] | None = None, on_chat: Handler | None = None) -> Any:
        assert self.sock is not None
        while True:
            if until is not None:
                self.sock.settimeout(max(0.05, until - time.monotonic()))
            try:
                body = p.read_frame(self.sock)
            except OSError as exc:
                raise self._gone(exc) from None
            if body is None:
                raise self._gone(None)
            try:
                frame = p.service_frames.decode(body)
            except msgspec.DecodeError as exc:
                raise p.ServiceError(f"the imprint service sent something unreadable: {exc}") from None
            match frame:
                case p.Done(value=value):
                    return msgspec.msgpack.decode(value, type=reply)
                case p.Failed():
                    raise_failure(frame)
                case p.Note(text=text):
                    if on_note is not None:
                        on_note(text)
                case p.EventOut(data=data):
                    if on_event is not None:
                        from imprint.messages.events import decode_event

                        on_event(decode_event(data))
                case p.ChatOut(data=data):
                    if on_chat is not None:
                        import json

                        on_chat(json.loads(data))
                case p.AskApproval(peer=peer, warning=warning):
                    # The user answers on a thread: events keep coming (and printing) meanwhile.
                    threading.Thread(target=self._ask_user, args=(on_ask, peer, warning), name="approval-prompt",
                                     daemon=True).start()
                case p.AskForget(count=count, total=total, peer=peer):
                    threading.Thread(target=self._ask_forget, args=(on_forget, count, total, peer),
                                     name="forget-prompt", daemon=True).start()

    def _ask_user(self, on_ask: Callable[[Any, str], str] | None, peer: Any, warning: str) -> None:
        try:
            answer = on_ask(peer, warning) if on_ask is not None else ""
        except Exception:
            answer = ""
        self._send(p.Answer(text=answer or ""))

    def _ask_forget(self, on_forget: Callable[[int, int, Any], bool] | None, count: int, total: int,
                    peer: Any) -> None:
        try:
            accept = bool(on_forget(count, total, peer)) if on_forget is not None else False
        except Exception:
            accept = False
        self._send(p.Answer(text="yes" if accept else "no"))

    def _send(self, frame: Any) -> None:
        with self._send_lock:
            if self.sock is not None:
                try:
                    p.send_frame(self.sock, frame)
                except OSError:
                    pass

    def _cancel(self, interrupt: BaseException) -> None:
        """After Ctrl-C: tell the service to stop what this request started, and wait a little for it."""
        from imprint.errors import INTERRUPTED

        if self.sock is None:
            return
        try:
            self._send(p.Cancel(reason=INTERRUPTED))
            self._replies(Any, on_note=None, on_event=None, on_ask=None, until=time.monotonic() + CANCEL_WAIT)
        except (ImprintError, OSError, KeyboardInterrupt):
            pass
        finally:
            self.close()

    def _gone(self, exc: OSError | None) -> p.ServiceError:
        self.close()
        why = f" ({exc.strerror or exc})" if exc is not None else ""
        return p.ServiceError(
            f"the imprint service stopped before answering{why}; what it confirmed before is stored. "
            f"Run the command again (the service's messages: {service_log(self.settings.data_dir)})")


def _last_line(path: Any) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no message"
    return lines[-1][:300] if lines else "no message"


#: What a command may ask of a data dir on read-only media (reads; the rest would write).
READS = (p.ModelOf, p.Search, p.SourceChunks, p.Sources, p.OverviewOf, p.Get, p.Count, p.MemoryPageOf, p.FactPageOf,
         p.FactList, p.FactShow)


class InProcess:
    """The answers of a service, computed in this process, reading only: for a data dir on
    read-only media, where no service can listen (its socket lives in the data dir) and
    nothing may be written. Started on the first request (the model only if it needs it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local: Any = None
        self.core: Any = None

    def call(self, request: Any, reply: Any, *, on_note: Handler | None = None) -> Any:
        from imprint.errors import ConfigError
        from imprint.service.dispatch import answer

        if not isinstance(request, READS):
            raise ConfigError(f"data dir {self.settings.data_dir} is read-only: only reading commands work on it")
        if self.core is None:
            from imprint.core import Core
            from imprint.local import LocalActors

            needs_model = isinstance(request, (p.ModelOf, p.Search))
            self.local = LocalActors(self.settings, embedder=needs_model, read_only=True).__enter__()
            self.core = Core(self.settings, local=self.local)
        value = answer(self.core, request, on_note or (lambda _text: None))
        # As the service would send it: the reply type the caller asked for, and no shared objects.
        return msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=reply)

    def close(self) -> None:
        if self.local is not None:
            self.local.stop()
            self.local = None
