"""Running a sync: `run_serve` and `run_join`, for the CLI, the dashboard and the demo.

Each starts what its role needs (the local actors, unless the caller lends
running ones; for serve without --relay, a relay in this process that admits
only its own room), runs one session, and stops it all. The session can be
cancelled from another thread through `on_session`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

from imprint.config import Settings
from imprint.messages import events
from imprint.messages.events import Mode

Reporter = Callable[[events.Event], None]
#: `default_relay` not given: IMPRINT_RELAY of this process's environment.
FROM_ENVIRONMENT: Any = object()


def resolve_default_relay(given: Any) -> str | None:
    """The relay a bare room means: `given`, or IMPRINT_RELAY when it is FROM_ENVIRONMENT."""
    if given is FROM_ENVIRONMENT:
        from imprint.sync.network import default_relay

        return default_relay()
    return given or None


def mode_of(plaintext: bool) -> Mode:
    """The sync mode a `--plaintext` flag (or the dashboard's checkbox) asks for."""
    return "plaintext" if plaintext else "encrypted"


def _session_parts(settings: Settings, local: Any = None) -> tuple[Any, Any, Any, bool]:
    """Identity, host info, the LocalActors to use, and whether we own (start/stop) them."""
    from imprint.identity import host_info, load_identity
    from imprint.local import LocalActors

    identity = load_identity(settings.data_dir)
    if local is not None:
        return identity, host_info(), local, False
    return identity, host_info(), LocalActors(settings, embedder=True), True


def _spool_options(settings: Settings, max_bytes: int | None) -> dict[str, Any]:
    from imprint.spool import default_max_bytes, spool_path

    return {"spool_path": spool_path(settings.workspace_dir),
            "spool_max_bytes": max_bytes if max_bytes is not None else default_max_bytes()}


def _forget_options(limit: Any) -> dict[str, Any]:
    """`forget_limit` (an imprint.protocol.forgets.ForgetLimit) if given; else the session's default."""
    return {"forget_limit": limit} if limit is not None else {}


def run_serve(
    settings: Settings,
    *,
    relay: str | None,
    listen: str,
    mode: Mode,
    batch_size: int,
    idle_timeout: float,
    report: Reporter,
    approver: Any,
    local: Any = None,
    on_session: Callable[[Any], None] | None = None,
    spool_max_bytes: int | None = None,
    vectors: bool = True,
    default_relay: Any = FROM_ENVIRONMENT,
    forget_limit: Any = None,
    confirm_forget: Any = None,
) -> events.Stats:
    """Provider: prints the command for the other side, serves one peer, returns the stats event.

    `local`: running LocalActors (with the embedder) to use instead of starting
    our own; the caller keeps owning it (the dashboard holds one for its lifetime).
    `on_session`: called with the session before it runs, so the caller can
    `cancel()` it from another thread. `default_relay`: the relay a bare room
    means (the user's IMPRINT_RELAY; by default this process's).
    """
    from imprint.protocol.addresses import (
        display_target,
        new_pin,
        new_room,
        parse_listen,
        relay_base,
    )
    from imprint.relay.server import RelayServer
    from imprint.sync.network import lan_address
    from imprint.sync.session import SessionConfig, SyncSession
    from imprint.trust import TrustList

    identity, host, local, owned = _session_parts(settings, local)
    pin, room = new_pin(), new_room()
    fallback = resolve_default_relay(default_relay)
    chosen = relay or fallback
    server = None
    try:
        if chosen:
            base = relay_base(chosen)
            connect_base = base
        else:
            host_part, port = parse_listen(listen)
            # Only this serve's room: the port is open to the LAN while serve waits,
            # and nobody else may park rooms (or memory) in this process.
            server = RelayServer(host=host_part, port=port, rooms={room})
            port = server.start_in_thread()
            public_host = lan_address() if host_part in ("", "0.0.0.0") else host_part
            base = f"ws://{public_host}:{port}"
            connect_base = f"ws://127.0.0.1:{port}" if host_part in ("", "0.0.0.0") else base
        with local if owned else nullcontext(local):
            session = SyncSession(
                role="provider",
                config=SessionConfig(url=f"{connect_base}/{room}?role=provider", room=room, pin=pin, mode=mode,
                                     batch_size=batch_size, idle_timeout=idle_timeout,
                                     vectors=vectors, **_spool_options(settings, spool_max_bytes),
                                     **_forget_options(forget_limit)),
                local=local, identity=identity, host=host, report=report,
                trust_list=TrustList(settings.trust_path), approver=approver, confirm_forget=confirm_forget,
            )
            if on_session is not None:
                on_session(session)  # lets the caller cancel it
            try:
                # No PIN and no command for the other machine until the relay answers.
                session.connect()
            except BaseException:
                session.stop()
                raise
            target = display_target(base, room, default=fallback)
            report(events.Room(target=target, pin=pin, room=room, relay=base, fingerprint=identity.fingerprint,
                               hostname=host.hostname, mode=mode))
            return session.run()
    finally:
        if server is not None:
            server.stop()


def run_join(
    settings: Settings,
    *,
    target: str,
    pin: str,
    mode: Mode,
    batch_size: int,
    idle_timeout: float,
    report: Reporter,
    local: Any = None,
    on_session: Callable[[Any], None] | None = None,
    spool_max_bytes: int | None = None,
    confirm: Callable[[Any, str], str] | None = None,
    vectors: bool = True,
    default_relay: Any = FROM_ENVIRONMENT,
    forget_limit: Any = None,
    confirm_forget: Any = None,
) -> events.Stats:
    """Consumer: joins the provider's room, pulls, pushes, returns the stats event.

    `local`: as for :func:`run_serve`. `confirm(peer, verification)`: asked once
    connected, before any record moves; anything but "accept" stops the join.
    """
    from imprint.protocol.addresses import parse_target
    from imprint.sync.session import SessionConfig, SyncSession

    where = parse_target(target, default_relay=resolve_default_relay(default_relay))
    pin = pin.strip()
    identity, host, local, owned = _session_parts(settings, local)
    with local if owned else nullcontext(local):
        session = SyncSession(
            role="consumer",
            config=SessionConfig(url=where.url("consumer"), room=where.room, pin=pin, mode=mode,
                                 batch_size=batch_size, idle_timeout=idle_timeout,
                                 vectors=vectors, **_spool_options(settings, spool_max_bytes),
                                 **_forget_options(forget_limit)),
            local=local, identity=identity, host=host, report=report, confirm=confirm,
            confirm_forget=confirm_forget,
        )
        if on_session is not None:
            on_session(session)
        return session.run()


