"""The sync relay: a stateless WebSocket forwarder between two peers.

A client connects to ``ws://HOST:PORT/{room}?role=provider|consumer``. Every
frame one role sends (text or binary) is forwarded unchanged, in order, to the
other role in the same room. The relay never parses frames and never logs
their contents; sync peers encrypt end to end, so it needs no trust.

Rules, in the order a connection meets them:

* ``GET /health`` answers ``200`` with JSON ``{"status": "ok", "rooms": N}``.
* Before the WebSocket upgrade, the path must be ``/{room}`` with a room id
  matching ``^[A-Za-z0-9_-]{1,64}$`` and exactly one ``role`` query parameter,
  ``provider`` or ``consumer``. Anything else gets HTTP ``400`` with a short
  plain-text reason.
* The first client of a room creates it. If ``max_rooms`` rooms already exist
  the new client is upgraded and then closed with ``1013`` ("relay full");
  this check runs after the upgrade, where it is atomic with the creation of
  the room. Joining an existing room is never refused for this reason.
* A second client for a role that is already connected to the room is
  refused with ``4409`` ("a provider is already connected to room X"); the
  first client keeps working. The original relay silently replaced the first
  client, which let anyone who knew the room id hijack a session.
* Frames sent before the other role has joined are held and delivered, in
  order, as soon as it joins (the original dropped them). At most
  ``max_pending_frames`` frames and ``max_pending_bytes`` bytes are held per
  room and direction; a sender exceeding that is closed with ``4413``.
* A frame larger than ``max_frame_bytes`` closes its sender with ``1009``
  (websockets does this through ``max_size``).
* When either side disconnects, for whatever reason, the room is removed and
  the other side is closed with ``1000`` ("peer disconnected"), after the
  frames already accepted from the leaver have been delivered.
* A room expires ``room_ttl`` seconds (default one hour) after it was
  created: both sides are closed with ``4410`` ("room expired").
* Stopping the relay closes every connection with ``1001``; draining it
  (SIGTERM, :meth:`RelayServer.drain`) refuses new rooms and closes waiting
  ones with ``1012`` at once, lets syncs under way finish for up to
  ``drain_timeout`` seconds, then closes the rest with ``1012``. ``/health``
  answers ``503`` {"status": "draining"} meanwhile.
* ``GET /metrics`` (with ``metrics=True``) answers Prometheus' text format.
* Behind a proxy listed in ``trusted_proxies`` the per-address limits apply
  to the address the proxy reports (PROXY protocol or X-Forwarded-For, see
  :mod:`imprint.relay.proxy`).

The rules themselves (rooms, roles, holds, limits, counters) live in
:mod:`imprint.relay.rooms` without I/O; this module does the I/O.

Forwarding awaits ``send`` on the receiving connection, so a slow reader
slows its sender down through TCP instead of filling a queue in the relay.

websockets only reports a connection gone once its TCP connection is closed.
A client should therefore close its socket after the closing handshake
(with websocket-client: call ``shutdown()`` after reading a close frame);
one that does not delays the "peer disconnected" its peer gets after a
``1009`` by up to ``close_timeout`` (10 s).

Close codes::

    1000  peer disconnected        the other side left; the room is gone
    1001  relay shutting down
    1009  frame too big            (sent by websockets)
    1011  relay error              the frame hook failed
    1012  relay restarting         drained for a restart; run the sync again
    1013  relay full               max_rooms reached; try again later
    4409  role already connected   another client holds this role in the room
    4410  room expired             room_ttl elapsed since the room was created
    4413  too many held frames     the peer did not join before the hold filled
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from imprint.errors import ConfigError, RelayError
from imprint.relay.limits import (
    CONNECTION_BURST,
    DEFAULT_BUDGET_BYTES,
    DEFAULT_CONNECTIONS_PER_SECOND,
    DEFAULT_ROOMS_PER_ADDRESS,
    SMALL_FRAME_BYTES,
    AddressLimits,
    MemoryBudget,
    Meter,
    release_memory,
    scrub,
    set_frame_cap,
    tune_allocator,
)
from imprint.relay.proxy import (
    V2_MAX_BODY,
    ProxyHeaderError,
    TrustedProxies,
    parse_proxy_header,
    peer_of,
)
from imprint.relay.rooms import (
    CLOSE_PEER_DISCONNECTED,
    CLOSE_RELAY_ERROR,
    CLOSE_RELAY_FULL,
    CLOSE_RESTARTING,
    CLOSE_ROLE_TAKEN,
    CLOSE_ROOM_EXPIRED,
    CLOSE_SHUTTING_DOWN,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_HELD,
    CLOSE_TOO_MANY_ROOMS,
    RESTARTING_REASON,
    ROLES,
    Refused,
    Room,
    RoomTable,
    other,
)

__all__ = [
    "CLOSE_PEER_DISCONNECTED",
    "CLOSE_RELAY_ERROR",
    "CLOSE_RELAY_FULL",
    "CLOSE_RESTARTING",
    "CLOSE_ROLE_TAKEN",
    "CLOSE_ROOM_EXPIRED",
    "CLOSE_SHUTTING_DOWN",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_MANY_HELD",
    "CLOSE_TOO_MANY_ROOMS",
    "DEFAULT_PORT",
    "ROLES",
    "FrameHook",
    "RelayServer",
    "parse_target",
    "run_relay",
]

DEFAULT_PORT = 8430
#: Largest frame passed: Imprint's own clients put 500 records with 768-float
#: vectors in a batch and cap nothing (10-80 MB frames occur); our plaintext
#: mode accepts up to 256 MiB, and a frame's envelope needs a little more.
MAX_FRAME_BYTES = 256 * 1024 * 1024 + 64 * 1024
#: Keepalive: ping every PING_INTERVAL s, drop a peer silent for PING_TIMEOUT s.
PING_INTERVAL = 20.0
PING_TIMEOUT = 300.0
ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

FrameHook = Callable[[str, str, str | bytes], list[str | bytes]]
"""``frame_hook(room, sender_role, frame)`` returns the frames to forward instead."""


def parse_target(path: str) -> tuple[str, str]:
    """Split a request path into its room id and role.

    Args:
        path: The request target, e.g. ``/k3Jd9_x?role=provider``.

    Returns:
        ``(room, role)``.

    Raises:
        ValueError: With a short reason fit for an HTTP 400 body.
    """
    parts = urlsplit(path)
    room = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not room:
        raise ValueError("missing room id: connect to /{room}?role=provider|consumer")
    if ROOM_ID_PATTERN.fullmatch(room) is None:
        raise ValueError("bad room id: use 1 to 64 characters from A-Z a-z 0-9 _ -")
    roles = parse_qs(parts.query, keep_blank_values=True).get("role", [])
    if len(roles) != 1 or roles[0] not in ROLES:
        raise ValueError("bad role: add ?role=provider or ?role=consumer")
    return room, roles[0]


def _frame_size(frame: str | bytes) -> int:
    return len(frame.encode("utf-8")) if isinstance(frame, str) else len(frame)


#: The address each connection is limited as (its own, or the one a trusted proxy gave).
_client_addresses: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()

#: Refusal reasons always present on /metrics (at 0 until one happens).
REFUSAL_REASONS = ("bad_request", "unknown_room", "connections", "connection_rate", "relay_full",
                   "rooms_per_address", "role_taken", "too_many_held", "too_big", "budget", "room_expired",
                   "draining", "restart", "relay_error", "proxy_header")


def _respond(connection: ServerConnection, status: HTTPStatus, body: str, content_type: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


class _ProxiedConnection(ServerConnection):
    """A connection that reads a PROXY protocol header (v1 or v2) first, when its
    peer is a trusted proxy; from anyone else the bytes go to HTTP untouched."""

    proxies: TrustedProxies = TrustedProxies()
    on_bad_header: Callable[[], None] = staticmethod(lambda: None)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.proxied_address: str | None = None
        self._proxy_pending = bool(peer) and self.proxies.trusts(str(peer[0]))
        self._proxy_buffer = b""

    def data_received(self, data: bytes) -> None:
        if self._proxy_pending:
            self._proxy_buffer += data
            try:
                result = parse_proxy_header(self._proxy_buffer)
                if result is None and len(self._proxy_buffer) > 16 + V2_MAX_BODY:
                    raise ProxyHeaderError("PROXY header too long")
            except ProxyHeaderError as exc:
                logger.warning("relay: dropped a connection from a trusted proxy: {}", exc)
                type(self).on_bad_header()
                self.transport.abort()
                return
            if result is None:
                return
            self.proxied_address, used = result
            self._proxy_pending = False
            data, self._proxy_buffer = self._proxy_buffer[used:], b""
            if not data:
                return
        super().data_received(data)


@dataclass(eq=False)
class _RoomIO:
    """The server's per-room I/O state, kept on :attr:`Room.io`.

    A sender's lock is held while its frames are sent to the peer or while
    the peer drains the frames held for it, which keeps them in order.
    """

    locks: dict[str, asyncio.Lock] = field(
        default_factory=lambda: {role: asyncio.Lock() for role in ROLES}
    )
    expiry: asyncio.TimerHandle | None = None


class RelayServer:
    """A WebSocket relay pairing one provider and one consumer per room.

    Run it either inside an event loop with :meth:`serve_forever`, or in a
    daemon thread of its own with :meth:`start_in_thread`; :meth:`stop` ends
    both. See the module docstring for the rules it enforces.

    Args:
        host: Interface to listen on.
        port: TCP port; ``0`` picks a free one (read it from :attr:`port`).
        room_ttl: Seconds after creation at which a room is closed.
        max_rooms: Rooms that may exist at once.
        max_frame_bytes: Largest frame (message) accepted, in bytes.
        max_pending_frames: Frames held per room and direction while the
            other role has not joined yet.
        max_pending_bytes: Bytes held per room and direction, likewise.
        budget_bytes: Bytes of frames held or in flight across all rooms.
        max_rooms_per_address: Rooms one client address may have open.
        connections_per_second: New connections one client address may open
            per second (with a burst of CONNECTION_BURST).
        rooms: When given, the only room ids admitted (`serve`'s built-in
            relay admits its own room and no other).
        max_connections: Connections open at once (default: two per room).
        connection_burst: New connections one address may open at once
            before `connections_per_second` applies.
        frame_hook: Called as ``frame_hook(room, sender_role, frame)`` for
            every frame received; the frames it returns are forwarded instead
            (an empty list drops the frame). ``None`` forwards unchanged.
            Meant for tests that need a recording or tampering relay. It runs
            on the relay's event loop, so it must not block.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        room_ttl: float = 3600.0,
        max_rooms: int = 1000,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_pending_frames: int = 64,
        max_pending_bytes: int = 64 * 1024 * 1024,
        frame_hook: FrameHook | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        max_rooms_per_address: int = DEFAULT_ROOMS_PER_ADDRESS,
        connections_per_second: float = DEFAULT_CONNECTIONS_PER_SECOND,
        rooms: frozenset[str] | set[str] | None = None,
        max_connections: int | None = None,
        connection_burst: int = CONNECTION_BURST,
        trusted_proxies: Iterable[str] = (),
        metrics: bool = False,
        drain_timeout: float = 300.0,
    ) -> None:
        for name, value in (
            ("room_ttl", room_ttl),
            ("max_rooms", max_rooms),
            ("max_frame_bytes", max_frame_bytes),
            ("max_pending_frames", max_pending_frames),
            ("max_pending_bytes", max_pending_bytes),
            ("budget_bytes", budget_bytes),
            ("max_rooms_per_address", max_rooms_per_address),
            ("connections_per_second", connections_per_second),
            ("drain_timeout", drain_timeout),
        ):
            if value <= 0:
                raise ConfigError(f"relay {name} must be positive, not {value}")
        if not 0 <= port <= 65535:
            raise ConfigError(f"relay port must be between 0 and 65535, not {port}")
        self.host = host
        self.port = port
        self.room_ttl = room_ttl
        self.max_rooms = max_rooms
        self.max_frame_bytes = max_frame_bytes
        self.frame_hook = frame_hook
        self.budget = MemoryBudget(budget_bytes)
        self.allowed_rooms = frozenset(rooms) if rooms is not None else None
        self._limits = AddressLimits(rate=connections_per_second, burst=connection_burst)
        self.table = RoomTable(max_rooms=max_rooms, rooms_per_address=max_rooms_per_address,
                               max_pending_frames=max_pending_frames, max_pending_bytes=max_pending_bytes)
        self.proxies = TrustedProxies(trusted_proxies)
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self.max_connections = max_connections or 2 * max_rooms
        self._meters: weakref.WeakKeyDictionary[ServerConnection, Meter] = weakref.WeakKeyDictionary()
        self._trimmed_at = 0.0
        self.url = ""
        # How long a leaver's frames may take to reach the peer before the
        # peer is closed anyway; also websockets' closing-handshake timeout.
        self.close_timeout = 10.0

        #: Notified whenever a room opens or closes (for callers on other threads).
        self._rooms_changed = threading.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._stop_signal: asyncio.Event | None = None
        self._stop_requested = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: RelayError | None = None

    @property
    def room_count(self) -> int:
        """Rooms currently open (safe to read from any thread)."""
        return len(self.table)

    def wait_for_rooms(self, count: int, timeout: float) -> bool:
        """Wait (from another thread) until exactly `count` rooms are open; False on timeout."""
        with self._rooms_changed:
            return self._rooms_changed.wait_for(lambda: len(self.table) == count, timeout)

    def _rooms_did_change(self) -> None:
        if self._drained is not None and not len(self.table):
            self._drained.set()
        with self._rooms_changed:
            self._rooms_changed.notify_all()

    # ----------------------------------------------------------------- running

    async def serve_forever(self) -> None:
        """Serve in the running event loop until :meth:`stop` is called.

        Cancelling the task running it stops the relay as well.

        Raises:
            RelayError: If the port cannot be bound.
        """
        await self._serve()

    def start_in_thread(self, timeout: float = 10.0) -> int:
        """Start the relay on its own event loop in a daemon thread.

        Args:
            timeout: Seconds to wait for the relay to listen.

        Returns:
            The bound port (useful with ``port=0``).

        Raises:
            RelayError: If the port cannot be bound, or the relay did not
                start within ``timeout``.
        """
        if self._thread is not None:
            raise RelayError(f"the relay on {self.url or self.host} is already running")
        ready = threading.Event()
        self._start_error = None
        self._stop_requested = False
        self._stopped.clear()

        def run() -> None:
            try:
                asyncio.run(self._serve(on_ready=lambda _port: ready.set()))
            except RelayError as exc:
                self._start_error = exc
            except BaseException as exc:  # the thread must report, not vanish
                logger.exception("relay thread failed")
                self._start_error = RelayError(f"relay failed: {exc}")
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="imprint-relay", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            self.stop(timeout)
            raise RelayError(f"relay did not start listening within {timeout:g} s")
        if self._start_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise self._start_error
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the server, then join the relay thread.

        Idempotent. Called from the relay's own event loop (e.g. inside a
        coroutine running next to :meth:`serve_forever`) it only requests the
        stop, since blocking there would deadlock.

        Args:
            timeout: Seconds to wait for the relay to finish.

        Raises:
            RelayError: If the relay is still running after ``timeout``.
        """
        self._stop_requested = True
        loop, stop_signal = self._loop, self._stop_signal
        if loop is not None and stop_signal is not None:
            # RuntimeError: the loop already closed, nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_signal.set)
        if threading.get_ident() == self._loop_thread_id:
            return
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RelayError(f"relay thread did not stop within {timeout:g} s")
            self._thread = None
        elif loop is not None and not self._stopped.wait(timeout):
            raise RelayError(f"relay did not stop within {timeout:g} s")

    async def _serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Bind, call ``on_ready(port)``, serve until stopped, then clean up."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._stop_signal = asyncio.Event()
        self._stopped.clear()
        try:
            try:
                server = await serve(
                    self._handle,
                    self.host,
                    self.port,
                    process_request=self._process_request,
                    # Every connection starts with small frames only; a room with
                    # both sides raises its sides' cap to max_frame_bytes.
                    max_size=min(SMALL_FRAME_BYTES, self.max_frame_bytes),
                    # Frames buffered per connection before reading pauses: one.
                    # The budget, not websockets' queue, decides what is held.
                    max_queue=1,
                    # Peers encrypt end to end: nothing to gain from deflate.
                    compression=None,
                    # A pong queues behind the data frames ahead of it: while a slow
                    # consumer embeds, the relay stops reading its provider (that is
                    # the backpressure) and the pong waits with the rest. 60 s killed
                    # healthy 20k-record syncs; 5 minutes still frees a dead peer's role.
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_TIMEOUT,
                    close_timeout=self.close_timeout,
                    create_connection=self._connection_class(),
                )
            except OSError as exc:
                raise RelayError(self._bind_error(exc)) from exc
            self.port = server.sockets[0].getsockname()[1]
            self.url = f"ws://{self._url_host()}:{self.port}"
            logger.info(
                "relay ready on {} (room ttl {:g} s, at most {} rooms)", self.url, self.room_ttl, self.max_rooms
            )
            try:
                if on_ready is not None:
                    on_ready(self.port)
                if not self._stop_requested:
                    await self._stop_signal.wait()
            finally:
                await self._shutdown(server)
        finally:
            self._loop = None
            self._stop_signal = None
            self._loop_thread_id = None
            self._stop_requested = False
            self._stopped.set()

    async def _shutdown(self, server: Server) -> None:
        logger.info("relay stopping ({} rooms open)", len(self.table))
        server.close(code=CLOSE_SHUTTING_DOWN, reason="relay shutting down")
        await server.wait_closed()
        # Every room had a connection whose handler retired it; this is a net.
        for room in list(self.table.rooms.values()):
            self._retire(room, "relay stopped")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        logger.info("relay stopped")

    def _connection_class(self) -> type[ServerConnection] | None:
        if not self.proxies:
            return None
        table = self.table
        return type("ProxiedConnection", (_ProxiedConnection,),
                    {"proxies": self.proxies, "on_bad_header": staticmethod(lambda: table.refuse("proxy_header"))})

    def _bind_error(self, exc: OSError) -> str:
        in_use = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}
        if exc.errno in in_use:
            return f"port {self.port} on {self.host} is already in use"
        return f"cannot listen on {self.host} port {self.port}: {exc.strerror or exc}"

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # --------------------------------------------------------------- handshake

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer ``/health`` and ``/metrics``; reject bad targets before the upgrade."""
        path = urlsplit(request.path).path
        if path == "/health":
            status = "draining" if self.table.draining else "ok"
            body = json.dumps({"status": status, "rooms": len(self.table)})
            # 503 while draining: a load balancer's health check takes this relay out at once.
            code = HTTPStatus.SERVICE_UNAVAILABLE if self.table.draining else HTTPStatus.OK
            return _respond(connection, code, body, "application/json")
        if path == "/metrics" and self.metrics:
            return _respond(connection, HTTPStatus.OK, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        address = self.proxies.client_address(connection, request)
        _client_addresses[connection] = address
        try:
            room_id, _ = parse_target(request.path)
        except ValueError as exc:
            logger.debug("relay refused {}: {}", request.path[:100], exc)
            self.table.refuse("bad_request")
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        if self.allowed_rooms is not None and room_id not in self.allowed_rooms:
            self.table.refuse("unknown_room")
            return connection.respond(HTTPStatus.NOT_FOUND, "no such room on this relay\n")
        if len(self._meters) >= self.max_connections:
            logger.warning("relay full: {} connections", len(self._meters))
            self.table.refuse("connections")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "relay full; try again later\n")
        if not self._limits.connection_allowed(address):
            logger.warning("relay: too many connections from {}", address)
            self.table.refuse("connection_rate")
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                      "too many new connections from your address; slow down\n")
        self._meters[connection] = Meter(self.budget, connection)
        self.table.counters.connections_accepted += 1
        return None

    def metrics_text(self) -> str:
        """The relay's figures in Prometheus' text format (no room ids, no addresses)."""
        counters = self.table.counters
        held_frames, held_bytes = self.table.held_totals()
        waiting = len(self.table.waiting())
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, int]]) -> None:
            lines.append(f"# HELP imprint_relay_{name} {help_}")
            lines.append(f"# TYPE imprint_relay_{name} {kind}")
            lines.extend(f"imprint_relay_{name}{labels} {int(value)}" for labels, value in samples)

        metric("rooms_open", "gauge", "Rooms open now.", [("", len(self.table))])
        metric("rooms_waiting", "gauge", "Rooms with one side only (waiting for the peer).", [("", waiting)])
        metric("rooms_opened_total", "counter", "Rooms opened since start.", [("", counters.rooms_opened)])
        metric("connections", "gauge", "WebSocket connections open now.", [("", len(self._meters))])
        metric("connections_accepted_total", "counter", "Connections accepted since start.",
               [("", counters.connections_accepted)])
        metric("frames_forwarded_total", "counter", "Frames (or fragments) forwarded.",
               [("", counters.frames_forwarded)])
        metric("bytes_forwarded_total", "counter", "Payload bytes forwarded.", [("", counters.bytes_forwarded)])
        metric("frames_held", "gauge", "Frames held for a side that has not joined.", [("", held_frames)])
        metric("bytes_held", "gauge", "Bytes held for a side that has not joined.", [("", held_bytes)])
        metric("budget_bytes_used", "gauge", "Memory budget in use (frames read, held, in flight).",
               [("", self.budget.used)])
        metric("budget_bytes_limit", "gauge", "Memory budget (--budget).", [("", self.budget.limit)])
        metric("budget_bytes_peak", "gauge", "Highest budget use since start.", [("", self.budget.peak)])
        metric("draining", "gauge", "1 while draining for a restart.", [("", int(self.table.draining))])
        reasons = sorted(set(REFUSAL_REASONS) | set(counters.refusals))
        metric("refusals_total", "counter", "Connections refused or closed by the relay, by reason.",
               [(f'{{reason="{reason}"}}', counters.refusals[reason]) for reason in reasons])
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------- connection

    async def _handle(self, ws: ServerConnection) -> None:
        """Serve one upgraded connection from join to leave."""
        assert ws.request is not None  # set by the opening handshake
        meter = self._meters.get(ws) or Meter(self.budget, ws)
        try:
            await self._serve_connection(ws, meter)
        finally:
            scrub(ws)
            meter.close()
            self._meters.pop(ws, None)
            self._maybe_trim()

    async def _serve_connection(self, ws: ServerConnection, meter: Meter) -> None:
        room_id, role = parse_target(ws.request.path)
        address = _client_addresses.get(ws) or peer_of(ws)
        try:
            room, opened = self.table.join(room_id, role, address, ws)
        except Refused as refusal:
            logger.warning("room {}: refused a {} from {}: {}", room_id, role, address, refusal.reason)
            await ws.close(refusal.code, refusal.reason)
            return
        if opened:
            self._opened(room)
        # From here to the first await of _deliver_held nothing yields, so the
        # frames held for this role go out before any sent after it joined.
        logger.info("room {}: {} joined ({} of 2)", room_id, role, len(room.sides))
        if len(room.sides) == 2:
            # A sync can begin: its frames may now be big (Imprint's own clients send 10-80 MB).
            for side in room.sides.values():
                set_frame_cap(side, self.max_frame_bytes)
        try:
            await self._deliver_held(room, to_role=role, ws=ws)
            await self._relay_messages(room, role, ws, meter)
        except Refused as refusal:
            logger.warning("room {}: closing {}: {}", room_id, role, refusal.reason)
            # Forget the room first, so it is gone by the time the client
            # reads the close frame.
            self._retire(room, f"{role} refused")
            # Tell the peer now rather than after this client's closing
            # handshake, which a client that never closes its socket drags
            # out to close_timeout.
            await asyncio.gather(self._close_now(ws, refusal.code, refusal.reason), self._close_peer(room, role))
        except ConnectionClosed as exc:
            # Our own side failed (e.g. 1009 frame too big or over budget, or keepalive).
            logger.info("room {}: {} connection lost: {}", room_id, role, exc)
            if exc.rcvd is None and exc.sent is not None and exc.sent.code == CLOSE_TOO_BIG:
                # websockets closed it at the frame's header: over the size cap, or over the budget.
                self.table.refuse("budget" if exc.sent.reason.startswith("relay busy") else "too_big")
        finally:
            await self._leave(room, role)

    async def _relay_messages(self, room: Room, role: str, ws: ServerConnection, meter: Meter) -> None:
        """Forward every message of `role`; a fragmented one fragment by fragment.

        websockets reads an unfragmented frame whole before handing it over, so
        such a frame is held whole (and budgeted); a fragmented message streams
        through, holding one fragment at a time.
        """
        while True:
            fragments = ws.recv_streaming()
            try:
                first = await anext(fragments)
            except StopAsyncIteration:
                continue
            first_size = _frame_size(first)
            claims = [meter.claim(first_size)]
            try:
                second = await anext(fragments)
            except StopAsyncIteration:
                await self._forward(room, role, first, claims[0], first_size)
                continue
            claims.append(meter.claim(_frame_size(second)))
            await self._forward_fragments(room, role, first, second, fragments, claims, meter)

    async def _forward_fragments(self, room: Room, sender: str, first: str | bytes, second: str | bytes,
                                 rest: Any, claims: list[int], meter: Meter) -> None:
        peer = room.sides.get(other(sender))
        if peer is None or room.held[sender] or self.frame_hook is not None or room.closed:
            # Nobody to stream to yet (or a test hook that wants whole frames): gather
            # it. Before the room has both sides a message is small (SMALL_FRAME_BYTES).
            parts = [first, second]
            async for fragment in rest:
                claims.append(meter.claim(_frame_size(fragment)))
                parts.append(fragment)
            whole: str | bytes = "".join(parts) if isinstance(first, str) else b"".join(parts)  # type: ignore[arg-type]
            await self._forward(room, sender, whole, sum(claims))
            return
        table = self.table

        async def stream() -> Any:
            for fragment in (first, second):
                size = _frame_size(fragment)
                yield fragment
                table.forwarded(size)
                self.budget.release(claims.pop(0))
            async for fragment in rest:
                size = _frame_size(fragment)
                claim = meter.claim(size)
                try:
                    yield fragment
                    table.forwarded(size)
                finally:
                    self.budget.release(claim)

        async with room.io.locks[sender]:
            try:
                await peer.send(stream())
            except ConnectionClosed:
                pass  # the peer left; its handler closes this side
            finally:
                for claim in claims:
                    self.budget.release(claim)

    @staticmethod
    async def _close_now(ws: ServerConnection, code: int, reason: str) -> None:
        """Close promptly: the close frame goes out now, and the socket follows
        after a short wait for the client's answer (not close_timeout)."""
        try:
            async with asyncio.timeout(2):
                await ws.close(code, reason)
        except TimeoutError:
            ws.transport.abort()

    def _opened(self, room: Room) -> None:
        room.io = _RoomIO()
        self._rooms_did_change()
        assert self._loop is not None
        room.io.expiry = self._loop.call_later(self.room_ttl, self._expire, room)
        logger.info("room {} opened ({} rooms)", room.room_id, len(self.table))

    async def _deliver_held(self, room: Room, *, to_role: str, ws: ServerConnection) -> None:
        """Send ``to_role`` the frames its peer sent before it joined."""
        sender = other(to_role)
        async with room.io.locks[sender]:
            if room.held[sender]:
                logger.debug("room {}: delivering {} held frames to {}", room.room_id, len(room.held[sender]),
                             to_role)
            while (item := self.table.take_held(room, sender)) is not None:
                frame, size, claim = item
                try:
                    await ws.send(frame)
                    self.table.forwarded(size)
                finally:
                    self.budget.release(claim)

    async def _forward(self, room: Room, sender: str, frame: str | bytes, claim: int = 0,
                       size: int | None = None) -> None:
        """Forward one received frame to the peer, or hold it until it joins.

        `claim` is the frame's share of the memory budget; it goes back when
        the frame has left (or is dropped), or travels with it when held.
        """
        frames = self._apply_hook(room, sender, frame)
        # The caller's size of the frame, unless a test hook changed it (a text frame's costs an encode).
        known = size if self.frame_hook is None else None
        receiver = other(sender)
        async with room.io.locks[sender]:
            try:
                for item in frames:
                    if room.closed:
                        return
                    item_size = known if known is not None else _frame_size(item)
                    if self.table.must_hold(room, sender):
                        if not room.held[sender]:
                            logger.debug("room {}: holding frames from {} until the {} joins", room.room_id,
                                         sender, receiver)
                        self.table.hold(room, sender, item, item_size, claim)
                        claim = 0
                        continue
                    try:
                        await room.sides[receiver].send(item)
                    except ConnectionClosed:
                        return  # the peer left; its handler closes this side
                    self.table.forwarded(item_size)
            finally:
                self.budget.release(claim)

    def _apply_hook(self, room: Room, sender: str, frame: str | bytes) -> list[str | bytes]:
        if self.frame_hook is None:
            return [frame]
        try:
            frames = list(self.frame_hook(room.room_id, sender, frame))
        except Exception:
            logger.exception("room {}: frame_hook failed on a frame from {}", room.room_id, sender)
            self.table.refuse("relay_error")
            raise Refused(CLOSE_RELAY_ERROR, "relay error", "relay_error") from None
        if not all(isinstance(item, (str, bytes)) for item in frames):
            logger.error("room {}: frame_hook returned something other than str or bytes", room.room_id)
            self.table.refuse("relay_error")
            raise Refused(CLOSE_RELAY_ERROR, "relay error", "relay_error")
        return frames

    async def _leave(self, room: Room, role: str) -> None:
        """Remove the room after ``role`` left and close the other side."""
        logger.info("room {}: {} left", room.room_id, role)
        if not room.closed:
            self._retire(room, f"{role} left")
        await self._close_peer(room, role)

    async def _close_peer(self, room: Room, role: str) -> None:
        """Close the side opposite ``role`` with "peer disconnected"."""
        peer = room.sides.get(other(role))
        if peer is None or peer.state is State.CLOSED:
            return  # alone in the room, or the peer left first and closed us
        # Frames already accepted from the leaver (held ones the peer is
        # draining, say) reach the peer before the close frame does.
        try:
            async with asyncio.timeout(self.close_timeout):
                async with room.io.locks[role]:
                    pass
        except TimeoutError:
            logger.warning("room {}: gave up delivering the {}'s last frames", room.room_id, role)
        await peer.close(CLOSE_PEER_DISCONNECTED, "peer disconnected")

    def _maybe_trim(self) -> None:
        """Give freed memory back to the OS once the relay holds little (at most once a second)."""
        now = time.monotonic()
        if self.budget.used < 4 * SMALL_FRAME_BYTES and now - self._trimmed_at > 1.0:
            self._trimmed_at = now
            gc.collect()  # finished connections sit in reference cycles
            release_memory()

    def _expire(self, room: Room) -> None:
        if room.closed:
            return
        self._retire(room, f"expired after {self.room_ttl:g} s")
        self.table.refuse("room_expired")
        self._close_all(room, CLOSE_ROOM_EXPIRED, "room expired")

    def _close_all(self, room: Room, code: int, reason: str) -> None:
        for ws in list(room.sides.values()):
            task = asyncio.get_running_loop().create_task(ws.close(code, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _retire(self, room: Room, why: str) -> None:
        """Mark ``room`` closed and forget it; a new client starts a new room."""
        had = room.room_id in self.table.rooms
        dropped, claims = self.table.retire(room)
        if had and room.room_id not in self.table.rooms:
            self._rooms_did_change()
        if room.io is not None and room.io.expiry is not None:
            room.io.expiry.cancel()
        for claim in claims:
            self.budget.release(claim)
        logger.info(
            "room {} closed: {} ({} held frames dropped, {} rooms left)", room.room_id, why, dropped, len(self.table)
        )

    # ------------------------------------------------------------------ drain

    def start_drain(self, timeout: float | None = None) -> Any:
        """:meth:`drain` from another thread; returns its concurrent future."""
        if self._loop is None:
            raise RelayError("the relay is not running")
        return asyncio.run_coroutine_threadsafe(self.drain(timeout), self._loop)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop opening rooms, let the rooms under way finish, then stop.

        Rooms still waiting for their second side are closed at once with 1012
        (nothing has moved in them; run again, they reach another relay); a
        room whose sync is under way may finish for up to `timeout` seconds
        (default :attr:`drain_timeout`), after which the rest are closed with
        1012 too. ``/health`` answers 503 meanwhile.
        """
        timeout = self.drain_timeout if timeout is None else timeout
        self.table.draining = True
        waiting = self.table.waiting()
        logger.info("relay draining: {} rooms under way, {} waiting closed; up to {:g} s",
                    len(self.table) - len(waiting), len(waiting), timeout)
        for room in waiting:
            self._restart(room)
        self._drained = asyncio.Event()
        if not len(self.table):
            self._drained.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        for room in list(self.table.rooms.values()):
            self._restart(room)
        self.stop()

    def _restart(self, room: Room) -> None:
        self._retire(room, "relay restarting")
        self.table.refuse("restart")
        self._close_all(room, CLOSE_RESTARTING, RESTARTING_REASON)


def run_relay(*, host: str, port: int, **limits: Any) -> int:
    """Run a relay in the foreground until Ctrl-C or SIGTERM.

    SIGTERM (systemd's stop, a rolling restart) drains: no new rooms, rooms
    under way finish for up to ``drain_timeout`` seconds, the rest are closed
    with 1012. A second SIGTERM, or Ctrl-C (SIGINT), stops at once (1001).

    Prints ``relay listening on ws://HOST:PORT`` to stderr once bound.

    Args:
        host: Interface to listen on.
        port: TCP port to listen on.
        limits: RelayServer's limits (budget_bytes, max_rooms, max_rooms_per_address…).

    Returns:
        The process exit code: 0 after a clean stop, 1 if the port cannot
        be bound (after printing a one-line error to stderr).
    """
    import signal

    tune_allocator()
    relay = RelayServer(host=host, port=port, **limits)

    def on_ready(_port: int) -> None:
        print(f"relay listening on {relay.url}", file=sys.stderr, flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        draining: list[asyncio.Task[None]] = []

        def on_term() -> None:
            if draining:
                relay.stop()
                return
            busy = len(relay.table) - len(relay.table.waiting())
            print(f"relay draining: {busy} syncs under way (up to {relay.drain_timeout:g} s); no new rooms; "
                  "SIGTERM again to stop now", file=sys.stderr, flush=True)
            draining.append(loop.create_task(relay.drain()))

        # Not on Windows nor off the main thread; KeyboardInterrupt still works.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, relay.stop)
            loop.add_signal_handler(signal.SIGTERM, on_term)
        await relay._serve(on_ready=on_ready)

    try:
        asyncio.run(main())
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
