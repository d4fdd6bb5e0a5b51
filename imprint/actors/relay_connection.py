"""RelayConnection: the only code that touches the websocket.

It owns one websocket-client connection to `ws[s]://relay/ROOM?role=…`. A
reader thread (not the actor's thread) blocks on receive and hands each frame
to the actor; the actor decodes it with the current codec and tells the
session's listener. Until a codec is installed (during the handshake) frames
go up raw.

Backpressure: the reader holds at most `window` undelivered frames; a batch
frame counts until its consumer says `FrameHandled`, so a slow store stops
the reader, TCP stops the relay, and the relay stops the sender. Sends are
asked, so a fast sender waits for the socket.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import msgspec
import pykka
import websocket
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ProtocolError, RelayError
from imprint.messages.session import (
    BadFrame,
    CloseConnection,
    ConnectionLost,
    FrameHandled,
    FrameReceived,
    RawFrameReceived,
    SendFrame,
    SendRaw,
    UseCodec,
)
from imprint.messages.wire import FactBatch, MemoryBatch

#: Largest frame we accept from the relay (the decoder caps a plaintext frame at 32 MiB).
MAX_INCOMING_BYTES = 33 * 1024 * 1024


class _Incoming(msgspec.Struct, frozen=True):
    data: bytes | str


class _ReaderEnded(msgspec.Struct, frozen=True):
    reason: str


def _cap_frame_length(ws: websocket.WebSocket, limit: int) -> None:
    """Refuse a frame whose header declares more than `limit` bytes, before reading it.

    websocket-client has no size cap of its own; without this a hostile relay
    could make us buffer gigabytes.
    """
    buffer = ws.frame_buffer
    original = buffer.recv_length

    def recv_length() -> None:
        original()
        if buffer.length is not None and buffer.length > limit:
            raise websocket.WebSocketProtocolException(
                f"the relay announced a frame of {buffer.length} bytes, over the {limit} limit"
            )

    buffer.recv_length = recv_length


def _close_reason(frame: Any) -> str:
    data = bytes(getattr(frame, "data", b"") or b"")
    if len(data) >= 2:
        code = struct.unpack("!H", data[:2])[0]
        reason = data[2:].decode("utf-8", "replace").strip()
        return f"relay closed the connection ({code}{': ' + reason if reason else ''})"
    return "relay closed the connection"


class RelayConnection(ImprintActor):
    """Connects on start (with retry and backoff); then sends and receives frames.

    Args:
        url: full websocket URL including room and role.
        listener: gets Connected/RawFrameReceived/FrameReceived/BadFrame/ConnectionLost via `tell`.
        attempts: connection attempts before giving up.
        window: frames the reader may hand on before the consumer catches up.
    """

    def __init__(self, *, url: str, listener: Any, attempts: int = 5, window: int = 4, connect_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.listener = listener
        self.attempts = attempts
        self.connect_timeout = connect_timeout
        self._ws: websocket.WebSocket | None = None
        self._codec: Any = None
        self._credits = threading.Semaphore(window)
        self._stopping = threading.Event()
        self._closing = False
        self._reader: threading.Thread | None = None
        self._dead = False
        self._lost = False

    # ---------------------------------------------------------------- lifecycle

    def start_up(self) -> None:
        delay = 0.25
        last_error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                self._ws = websocket.create_connection(self.url, timeout=self.connect_timeout, enable_multithread=True)
                break
            except websocket.WebSocketBadStatusException as exc:
                status = getattr(exc, "status_code", "?")
                raise RelayError(f"the relay refused {self._safe_url()} (HTTP {status})") from None
            except (OSError, websocket.WebSocketException) as exc:
                last_error = str(exc) or type(exc).__name__
                logger.debug("connect attempt {} to {} failed: {}", attempt, self._safe_url(), last_error)
                if attempt < self.attempts:
                    time.sleep(delay)  # back off before retrying: not synchronisation
                    delay = min(delay * 2, 4.0)
        else:
            raise RelayError(f"cannot reach the relay at {self._safe_url()}: {last_error}")
        self._ws.settimeout(None)
        _cap_frame_length(self._ws, MAX_INCOMING_BYTES)
        self._reader = threading.Thread(target=self._read_loop, name="relay-reader", daemon=True)
        self._reader.start()
        logger.debug("connected to {}", self._safe_url())

    def _safe_url(self) -> str:
        return self.url.split("?", 1)[0]

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *_: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._closing = True
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            # Closing a socket does not wake a thread blocked in recv on it (Linux);
            # shutting it down does, so the reader ends now instead of at the join timeout.
            sock = getattr(ws, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already disconnected
            try:
                ws.shutdown()
            except Exception:
                logger.debug("socket shutdown failed", exc_info=True)
        self._credits.release()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=10)
            if self._reader.is_alive():
                logger.error("relay reader thread did not stop")

    # ---------------------------------------------------------------- reader thread

    def _read_loop(self) -> None:
        ws = self._ws
        reason = "connection closed"
        try:
            while not self._stopping.is_set():
                while not self._credits.acquire(timeout=0.5):
                    if self._stopping.is_set():
                        return
                if self._stopping.is_set():
                    return
                opcode, frame = ws.recv_data_frame(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    reason = _close_reason(frame)
                    # websocket-client has answered the close; close the socket
                    # too, or the relay waits its close_timeout before it
                    # tells our peer that we are gone.
                    try:
                        ws.shutdown()
                    except Exception:
                        logger.debug("socket shutdown failed", exc_info=True)
                    break
                data = frame.data if hasattr(frame, "data") else frame
                data = bytes(data)
                if len(data) > MAX_INCOMING_BYTES:
                    reason = f"the relay sent a frame of {len(data)} bytes, over the {MAX_INCOMING_BYTES} limit"
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    try:
                        payload: bytes | str = data.decode("utf-8")
                    except UnicodeDecodeError:
                        reason = "the relay sent a text frame that is not UTF-8"
                        break
                else:
                    payload = data
                self.actor_ref.tell(_Incoming(data=payload))
        except (websocket.WebSocketConnectionClosedException, OSError) as exc:
            reason = "connection to the relay lost" if not self._closing else "closed"
            logger.debug("reader ended: {!r}", exc)
        except websocket.WebSocketException as exc:
            reason = f"websocket error: {exc}"
        except pykka.ActorDeadError:
            return
        try:
            self.actor_ref.tell(_ReaderEnded(reason=reason))
        except pykka.ActorDeadError:
            pass

    # ---------------------------------------------------------------- messages

    def handle(self, message: Any) -> Any:
        match message:
            case _Incoming(data=data):
                self._deliver(data)
            case SendFrame(frame=frame):
                self._send(self._codec.encode(frame))
            case SendRaw(data=data):
                self._send(data)
            case UseCodec(codec=codec):
                self._codec = codec
            case FrameHandled():
                self._credits.release()
            case CloseConnection(reason=reason):
                self._close(reason)
            case _ReaderEnded(reason=reason):
                # After a BadFrame the reader stops on purpose and the session
                # already knows; anything more would be a second, false report.
                if not self._dead:
                    self._lost = True
                    self.listener.tell(ConnectionLost(reason=reason, expected=self._closing))
            case _:
                return super().handle(message)
        return None

    def _deliver(self, data: bytes | str) -> None:
        if self._dead:
            self._credits.release()
            return
        if self._codec is None:
            self._credits.release()
            self.listener.tell(RawFrameReceived(data=data))
            return
        try:
            frame = self._codec.decode(data)
        except ProtocolError as exc:
            # Nothing more is read: a bad frame ends the session.
            self._dead = True
            self._stopping.set()
            self.listener.tell(BadFrame(message=str(exc)))
            return
        if not isinstance(frame, (MemoryBatch, FactBatch)):
            self._credits.release()
        self.listener.tell(FrameReceived(frame=frame))

    def _send(self, data: bytes | str) -> None:
        if self._ws is None or self._closing or self._lost:
            raise RelayError("the relay connection is closed")
        try:
            if isinstance(data, str):
                self._ws.send(data, opcode=websocket.ABNF.OPCODE_TEXT)
            else:
                self._ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)
        except websocket.WebSocketConnectionClosedException:
            raise RelayError("the connection to the relay closed while sending") from None
        except (websocket.WebSocketException, OSError) as exc:
            raise RelayError(f"sending to the relay failed: {exc or type(exc).__name__}") from None

    def _close(self, reason: str) -> None:
        if self._closing or self._ws is None:
            return
        self._closing = True
        try:
            # Close frame only; the reader thread sees the relay's answer and ends.
            self._ws.send_close(reason=reason.encode("utf-8")[:120])
        except (websocket.WebSocketException, OSError):
            self._stopping.set()
