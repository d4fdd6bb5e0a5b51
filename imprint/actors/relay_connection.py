"""RelayConnection: the only code that touches the websocket.

It owns one websocket-client connection to `ws[s]://relay/ROOM?role=…`. A
reader thread (not the actor's thread) blocks on receive and hands each frame
to the actor; the actor decodes it with the current codec and tells the
session's listener. Until a codec is installed (during the handshake) frames
go up raw.

Backpressure: the reader holds at most `window` undelivered frames (and, past
the first, `window_bytes` of them); a batch frame counts until the Puller
says `FrameHandled`, which it does as soon as the batch is in the spool, so
the socket is read at the speed of the disk, never of embedding. Sends are
asked, so a fast sender waits for the socket.

Memory: a frame is read into one buffer of its announced size (never a list
of pieces joined afterwards), a fragmented message is capped on its running
total, and text frames stay bytes until the codec decodes them, so a frame
of N bytes costs about N, not 2-4 N.
"""

from __future__ import annotations

import collections
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
    DeliverRawTo,
    FrameHandled,
    FrameReceived,
    RawFrameReceived,
    SendFrame,
    SendRaw,
    UseCodec,
)
from imprint.messages.wire import FactBatch, MemoryBatch
from imprint.relay.rooms import CLOSE_RESTARTING

#: Largest frame we accept from the relay in the encrypted mode (the decoder
#: caps the sealed plaintext at 32 MiB).
MAX_INCOMING_BYTES = 33 * 1024 * 1024
#: Bytes of undelivered frames the reader may hold beyond the first one.
WINDOW_BYTES = 64 * 1024 * 1024
#: Frames at least this big are read into one preallocated buffer.
_BIG_READ = 1 << 20
#: Seconds a room in which nothing has moved yet is opened again after its relay closed it
#: for a restart (1012): a systemd restart, or HAProxy taking the relay out (its check runs
#: every second) and sending the room to another.
REJOIN_FOR = 60.0
#: Seconds one attempt to open the room again may take.
REJOIN_CONNECT = 3.0


class _Incoming(msgspec.Struct, frozen=True):
    data: bytes | bytearray
    text: bool


class _ReaderEnded(msgspec.Struct, frozen=True):
    reason: str


class FrameTooLarge(websocket.WebSocketProtocolException):
    """The relay sent (or announced) more bytes in one message than we accept."""


def _harden(ws: websocket.WebSocket, limit: int) -> None:
    """Cap every message at `limit` bytes and read big frames in one buffer.

    websocket-client has no size cap of its own, checks a message's size only
    once all its fragments are joined (by repeated `+=`), and reads a frame
    as a list of 16 KiB pieces joined at the end (twice the frame at peak).
    Without this a hostile relay could make us buffer gigabytes.
    """
    buffer = ws.frame_buffer
    original_length = buffer.recv_length
    original_strict = buffer.recv_strict

    def recv_length() -> None:
        original_length()
        if buffer.length is not None and buffer.length > limit:
            raise FrameTooLarge(f"the relay announced a frame of {buffer.length:,} bytes, over the limit of {limit:,}")

    def recv_strict(size: int) -> bytes | bytearray:
        if size < _BIG_READ or buffer.recv_buffer:
            return original_strict(size)
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size:
            chunk = buffer.recv(min(_BIG_READ, size - filled))
            if not chunk:
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return out

    buffer.recv_length = recv_length
    buffer.recv_strict = recv_strict

    frames = ws.cont_frame
    original_add = frames.add

    def add(frame: Any) -> None:
        held = len(frames.cont_data[1]) if frames.cont_data else 0
        if held + len(frame.data) > limit:
            frames.cont_data = None  # let go of what was gathered
            raise FrameTooLarge(f"the relay sent a fragmented message of more than {limit:,} bytes")
        if frames.cont_data and not isinstance(frames.cont_data[1], bytearray):
            frames.cont_data[1] = bytearray(frames.cont_data[1])  # grow in place, not by copying
        original_add(frame)

    frames.add = add


class Hangup:
    """Cuts the connection at once, from any thread: what Ctrl-C needs while the
    actor is blocked in a send that the relay does not read (a stop message
    would wait behind it). The socket stays the RelayConnection's: this only
    shuts it down, which wakes its blocked send and its reader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            fire = self._fired
        if fire:
            self()

    def __call__(self) -> None:
        with self._lock:
            self._fired = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected


def _close_code(frame: Any) -> int | None:
    data = bytes(getattr(frame, "data", b"") or b"")
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def _close_reason(frame: Any) -> str:
    code = _close_code(frame)
    if code is not None:
        reason = bytes(frame.data)[2:].decode("utf-8", "replace").strip()
        if code == CLOSE_RESTARTING:  # drained for a restart: nothing is lost, the next run reaches a relay that is up
            return "the relay is restarting (1012): run the same command again"
        return f"relay closed the connection ({code}{': ' + reason if reason else ''})"
    return "relay closed the connection"


class RelayConnection(ImprintActor):
    """Connects on start (with retry and backoff); then sends and receives frames.

    Args:
        url: full websocket URL including room and role.
        listener: the session: gets FrameReceived, BadFrame and ConnectionLost via `tell`
            once a codec is installed. Before that, raw frames (and a lost
            connection) go to the handshake (see :class:`DeliverRawTo`), in the order
            they came, so its verdict on a frame always comes before the news that
            the peer left.
        attempts: connection attempts before giving up.
        window: frames the reader may hand on before the consumer catches up.
        window_bytes: bytes of frames it may hand on beyond the first one.
        max_frame_bytes: largest message accepted (bigger in the plaintext mode).
    """

    def __init__(
        self,
        *,
        url: str,
        listener: Any,
        attempts: int = 5,
        window: int = 4,
        window_bytes: int = WINDOW_BYTES,
        max_frame_bytes: int = MAX_INCOMING_BYTES,
        connect_timeout: float = 10.0,
        hangup: Hangup | None = None,
    ) -> None:
        super().__init__(boss=listener)
        self.hangup = hangup
        self.url = url
        self.listener = listener
        self.attempts = attempts
        self.connect_timeout = connect_timeout
        self.window = window
        self.window_bytes = window_bytes
        self.max_frame_bytes = max_frame_bytes
        self._ws: websocket.WebSocket | None = None
        self._codec: Any = None
        self._flow = threading.Condition()
        self._inflight_frames = 0
        self._inflight_bytes = 0
        self._held_sizes: collections.deque[int] = collections.deque()
        self._stopping = threading.Event()
        self._closing = False
        self._reader: threading.Thread | None = None
        self._dead = False
        self._lost = False
        self._lost_reason = ""
        self._reader_reason = ""
        self._raw_to: Any = None
        self._early: list[tuple[bytes | bytearray, bool]] = []
        #: Whether anything was sent: until then a room closed for a restart is opened again.
        self._spoke = False

    # ---------------------------------------------------------------- lifecycle

    def _connect(self, timeout: float | None = None) -> websocket.WebSocket:
        # UTF-8 is checked by our decoder in C-speed slices; websocket-client's
        # own check is a pure-Python loop over every byte of every text frame.
        return websocket.create_connection(
            self.url, timeout=timeout or self.connect_timeout, enable_multithread=True, skip_utf8_validation=True
        )

    def _use(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(None)
        _harden(ws, self.max_frame_bytes)
        self._ws = ws
        if self.hangup is not None:
            self.hangup.attach(getattr(ws, "sock", None))

    def start_up(self) -> None:
        delay = 0.25
        last_error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                self._ws = self._connect()
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
        self._use(self._ws)
        self._reader = threading.Thread(target=self._read_loop, name="relay-reader", daemon=True)
        self._reader.start()
        logger.debug("connected to {}", self._safe_url())

    def _safe_url(self) -> str:
        return self.url.split("?", 1)[0]

    def shut_down(self) -> None:
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
        with self._flow:
            self._flow.notify_all()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=10)
            if self._reader.is_alive():
                logger.error("relay reader thread did not stop")

    # ---------------------------------------------------------------- reader thread

    def _read_loop(self) -> None:
        ws = self._ws
        reason = "connection closed"
        heard = False
        rejoin_until = 0.0
        rejoined_at: float | None = None
        try:
            while not self._stopping.is_set():
                if not self._wait_for_room():
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
                    if _close_code(frame) == CLOSE_RESTARTING and not heard and not self._spoke:
                        # REJOIN_FOR per restart: a room reopened long ago gets it again; one that a
                        # relay still draining closes as soon as it is reopened does not.
                        if rejoined_at is None or time.monotonic() - rejoined_at > REJOIN_FOR:
                            rejoin_until = time.monotonic() + REJOIN_FOR
                        if self._rejoin(rejoin_until):
                            ws = self._ws
                            rejoined_at = time.monotonic()
                            continue
                    break
                heard = True
                data = frame.data if hasattr(frame, "data") else frame
                if len(data) > self.max_frame_bytes:
                    reason = f"the relay sent a frame of {len(data):,} bytes, over the limit of {self.max_frame_bytes:,}"
                    break
                with self._flow:
                    self._inflight_frames += 1
                    self._inflight_bytes += len(data)
                self.actor_ref.tell(_Incoming(data=data, text=opcode == websocket.ABNF.OPCODE_TEXT))
        except (websocket.WebSocketConnectionClosedException, OSError) as exc:
            reason = "connection to the relay lost" if not self._closing else "closed"
            logger.debug("reader ended: {!r}", exc)
        except FrameTooLarge as exc:
            reason = str(exc)
            self._hang_up(ws, 1009)  # free what the relay sent and stop it sending more
        except websocket.WebSocketException as exc:
            reason = f"websocket error: {exc}"
            self._hang_up(ws, 1002)
        except pykka.ActorDeadError:
            return
        self._reader_reason = reason  # for a send that fails meanwhile: it can say why
        try:
            self.actor_ref.tell(_ReaderEnded(reason=reason))
        except pykka.ActorDeadError:
            pass

    def _rejoin(self, until: float) -> bool:
        """Open the room again after its relay closed it for a restart, when nothing has moved in
        it yet (a `serve` waiting for its peer says nothing first): the room and PIN the user
        handed on stay good, and the relay that takes it over (another behind the proxy, or the
        same one restarted) pairs it with the peer who comes. Retries with backoff until `until`;
        False when stopped or out of time (the session then reports the restart)."""
        delay = 0.25
        while time.monotonic() < until:
            if self._stopping.wait(delay):  # stopped meanwhile (Ctrl-C): not a timing wait
                return False
            delay = min(delay * 2, 4.0)
            try:
                ws = self._connect(min(self.connect_timeout, REJOIN_CONNECT))  # a Ctrl-C waits for it
            except (OSError, websocket.WebSocketException) as exc:
                logger.debug("opening {} again failed: {}", self._safe_url(), exc or type(exc).__name__)
                continue
            self._use(ws)
            if self._stopping.is_set():
                self._hang_up(ws, 1000)
                return False
            logger.info("the relay restarted: {} is open again, waiting for the peer", self._safe_url())
            return True
        return False

    @staticmethod
    def _hang_up(ws: websocket.WebSocket, code: int) -> None:
        try:
            ws.send_close(status=code)
        except Exception:  # the socket may be gone already
            pass
        try:
            ws.shutdown()
        except Exception:
            logger.debug("socket shutdown failed", exc_info=True)

    def _wait_for_room(self) -> bool:
        """Block until the window has room for another frame; False once stopping."""
        with self._flow:
            while not self._stopping.is_set():
                full = self._inflight_frames >= self.window or (
                    self._inflight_frames > 0 and self._inflight_bytes >= self.window_bytes
                )
                if not full:
                    return True
                self._flow.wait(timeout=0.5)
        return False

    def _release(self, size: int) -> None:
        with self._flow:
            self._inflight_frames -= 1
            self._inflight_bytes -= size
            self._flow.notify_all()

    # ---------------------------------------------------------------- messages

    def handle(self, message: Any) -> Any:
        match message:
            case _Incoming(data=data, text=text):
                self._deliver(data, text)
            case SendFrame(frame=frame, quiet=quiet):
                try:
                    self._send(self._codec.encode(frame))
                except RelayError as exc:
                    if not quiet:
                        raise
                    logger.debug("could not send a {}: {}", type(frame).__name__, exc)
            case SendRaw(data=data):
                self._send(data)
            case UseCodec(codec=codec):
                self._codec = codec
            case FrameHandled():
                if self._held_sizes:
                    self._release(self._held_sizes.popleft())
            case CloseConnection(reason=reason):
                self._close(reason)
            case DeliverRawTo(target=target):
                self._raw_to = target
                early, self._early = self._early, []
                for data, text in early:
                    self._deliver(data, text)
            case _ReaderEnded(reason=reason):
                # After a BadFrame the reader stops on purpose and the session
                # already knows; anything more would be a second, false report.
                if not self._dead:
                    self._lost = True
                    self._lost_reason = reason
                    lost = ConnectionLost(reason=reason, expected=self._closing)
                    # Behind the raw frames, on the same path: the handshake's verdict first.
                    (self._raw_to if self._codec is None and self._raw_to is not None else self.listener).tell(lost)
            case _:
                return super().handle(message)
        return None

    def _deliver(self, data: bytes | bytearray, text: bool) -> None:
        size = len(data)
        if self._dead:
            self._release(size)
            return
        if self._codec is None:
            if self._raw_to is None:
                self._early.append((data, text))  # the handshake is being started
                return
            self._release(size)
            if text:
                try:
                    raw: bytes | str = bytes(data).decode("utf-8")
                except UnicodeDecodeError:
                    self._fail_frame("the relay sent a text frame that is not UTF-8")
                    return
            else:
                raw = bytes(data)
            self._raw_to.tell(RawFrameReceived(data=raw))
            return
        try:
            frame = self._codec.decode(data, text=text)
        except ProtocolError as exc:
            self._release(size)
            self._fail_frame(str(exc))
            return
        del data  # the decoded frame is all we keep
        if isinstance(frame, (MemoryBatch, FactBatch)):
            self._held_sizes.append(size)  # until the Puller has it in the spool
        else:
            self._release(size)
        self.listener.tell(FrameReceived(frame=frame))

    def _fail_frame(self, message: str) -> None:
        # Nothing more is read: a bad frame ends the session.
        self._dead = True
        self._stopping.set()
        self.listener.tell(BadFrame(message=message))

    def _send(self, data: bytes | str) -> None:
        if self._ws is None or self._closing or self._lost:
            # Say why: "a consumer is already connected to room X" beats "closed".
            raise RelayError(self._lost_reason or "the relay connection is closed")
        self._spoke = True
        try:
            if isinstance(data, str):
                self._ws.send(data, opcode=websocket.ABNF.OPCODE_TEXT)
            else:
                self._ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)
        except websocket.WebSocketConnectionClosedException:
            raise RelayError(self._why_closed("the connection to the relay closed while sending")) from None
        except (websocket.WebSocketException, OSError) as exc:
            raise RelayError(self._why_closed(f"sending to the relay failed: {exc or type(exc).__name__}")) from None

    def _why_closed(self, fallback: str) -> str:
        """The relay's own reason for closing, when the reader is about to have it (a close
        frame racing our send): "a consumer is already connected" beats "closed while sending"."""
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)
        return self._reader_reason or fallback

    def _close(self, reason: str) -> None:
        if self._closing or self._ws is None:
            return
        self._closing = True
        try:
            # Close frame only; the reader thread sees the relay's answer and ends.
            self._ws.send_close(reason=reason.encode("utf-8")[:120])
        except (websocket.WebSocketException, OSError):
            self._stopping.set()
