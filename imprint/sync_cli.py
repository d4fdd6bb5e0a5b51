"""Sync commands: serve, join (and `sync`, the names Imprint's own CLI uses),
relay, trust, demo. Each command starts what it needs and stops it all."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from imprint.cli_output import Output, note, say
from imprint.text import clip
from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError

# ---------------------------------------------------------------- reporting


class HumanReporter:
    """Turns session events into terminal lines and progress bars (stderr).

    Two bars per direction at most: what comes from the other machine
    (stored here, with received as a note) and what goes to it (what it
    confirmed, with what left as a note when it cannot confirm).
    """

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = prefix
        self.bars: dict[tuple[str, str], Any] = {}
        self.notes: dict[tuple[str, str], dict[str, str]] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        p = self.prefix
        if kind == "progress":
            self._progress(event)
        elif kind == "room":
            say(f"{p}On the other machine, run:\n\n    imprint sync {event['target']} --pin {event['pin']}\n")
            say(f"{p}This device: {clip(event['hostname'], 64)} (id: {event['fingerprint']})")
            if event.get("mode") == "plaintext":
                note(f"{p}WARNING: --plaintext: the relay can read the PIN and every record of this sync")
            note(f"{p}Waiting for the other machine… (Ctrl-C to stop)")
        elif kind == "waiting":
            note(f"{p}{event['message']}")
        elif kind == "auto_accepted":
            note(f"{p}Trusted device {clip(event['hostname'], 64)} ({clip(event['fingerprint'], 16)}) accepted")
        elif kind == "approval_required":
            pass  # the prompt itself shows the peer
        elif kind == "peer_connected":
            who = (f"{clip(event['hostname'], 64)} ({clip(event.get('fingerprint', '?'), 16)})" if "hostname" in event
                   else "the other machine")
            verify = f"; verification code {event['verification']}" if event.get("verification") else ""
            note(f"{p}Connected to {who}, {event['mode']}{verify}")
        elif kind == "stats":
            self.close()
            say(p + format_stats(event).replace("\n", "\n" + p))

    def _progress(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        direction, dataset, total = event["direction"], event["dataset"], event["total"]
        way = "in" if direction in ("receive", "store") else "out"
        key = (way, dataset)
        bar = self.bars.get(key)
        if bar is None:
            if not total:
                return  # nothing of this dataset moves this way
            desc = f"{self.prefix}{'receiving' if way == 'in' else 'sending'} {dataset}"
            bar = tqdm(total=total, desc=desc, unit="rec", file=sys.stderr, disable=None, dynamic_ncols=True, leave=True)
            self.bars[key] = bar
            self.notes[key] = {}
        notes = self.notes[key]
        bar.total = total
        if direction == "store" or direction == "peer_store":
            bar.n = event["done"]
            notes["stored"] = "stored" if direction == "store" else "stored there"
        elif direction == "receive":
            notes["received"] = f"received {event['done']:,}"
        elif event.get("confirmed", True):
            notes["received"] = f"received there {event['done']:,}"
        else:
            notes["received"] = f"sent {event['done']:,}"
        bar.set_postfix_str(", ".join(notes.values()), refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _received_text(figures: dict[str, int], *, here: bool) -> str:
    where = "here" if here else "there"
    parts = [f"{figures.get('inserted', 0):,} new", f"{figures.get('skipped', 0):,} already {where}"]
    if figures.get("ended"):
        parts.append(f"{figures['ended']:,} ended")
    if figures.get("rejected"):
        parts.append(f"{figures['rejected']:,} refused")
    return ", ".join(parts)


def format_stats(event: dict[str, Any]) -> str:
    """The summary: per dataset, what came in (new / already here / refused) and what went out."""
    received, sent = event.get("received", {}), event.get("sent", {})
    incoming = "; ".join(f"{d} {_received_text(received.get(d, {}), here=True)}" for d in ("memories", "facts"))
    outgoing = []
    for dataset in ("memories", "facts"):
        figures = sent.get(dataset, {})
        text = f"{dataset} {figures.get('sent', 0):,}"
        if "inserted" in figures:
            text += f" ({_received_text(figures, here=False)})"
        outgoing.append(text)
    return "\n".join([
        "Sync complete.",
        f"  received: {incoming}",
        f"  sent:     {'; '.join(outgoing)}",
    ])


def json_reporter(out: Output) -> Callable[[dict[str, Any]], None]:
    return lambda event: out.result(event)


def _reporter(out: Output) -> Callable[[dict[str, Any]], None]:
    return json_reporter(out) if out.json_mode else HumanReporter()


# ---------------------------------------------------------------- serve / join


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


def run_serve(
    settings: Settings,
    *,
    relay: str | None,
    listen: str,
    mode: str,
    batch_size: int,
    idle_timeout: float,
    report: Callable[[dict[str, Any]], None],
    approver: Any,
    local: Any = None,
    on_session: Callable[[Any], None] | None = None,
    spool_max_bytes: int | None = None,
) -> dict[str, Any]:
    """Provider: prints the command for the other side, serves one peer, returns the stats event.

    `local`: running LocalActors (with the embedder) to use instead of starting
    our own; the caller keeps owning it (the dashboard holds one for its lifetime).
    `on_session`: called with the session before it runs, so the caller can
    `cancel()` it from another thread.
    """
    from imprint.relay import RelayServer
    from imprint.sync.addresses import default_relay, display_target, lan_address, new_pin, new_room, parse_listen, relay_base
    from imprint.sync.session import ProviderSession, SessionConfig
    from imprint.trust import TrustList

    identity, host, local, owned = _session_parts(settings, local)
    pin, room = new_pin(), new_room()
    chosen = relay or default_relay()
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
            session = ProviderSession(
                config=SessionConfig(url=f"{connect_base}/{room}?role=provider", room=room, pin=pin, mode=mode,
                                     batch_size=batch_size, idle_timeout=idle_timeout,
                                     **_spool_options(settings, spool_max_bytes)),
                local=local, identity=identity, host=host, report=report,
                trust_list=TrustList(settings.trust_path), approver=approver,
            )
            if on_session is not None:
                on_session(session)  # lets the caller cancel it
            try:
                # No PIN and no command for the other machine until the relay answers.
                session.connect()
            except BaseException:
                session.stop()
                raise
            target = display_target(base, room, default=default_relay())
            report({"event": "room", "target": target, "pin": pin, "room": room, "relay": base,
                    "fingerprint": identity.fingerprint, "hostname": host.hostname, "mode": mode})
            return session.run()
    finally:
        if server is not None:
            server.stop()


def run_join(
    settings: Settings,
    *,
    target: str,
    pin: str,
    mode: str,
    batch_size: int,
    idle_timeout: float,
    report: Callable[[dict[str, Any]], None],
    local: Any = None,
    on_session: Callable[[Any], None] | None = None,
    spool_max_bytes: int | None = None,
    confirm: Callable[[Any, str], str] | None = None,
) -> dict[str, Any]:
    """Consumer: joins the provider's room, pulls, pushes, returns the stats event.

    `local`: as for :func:`run_serve`. `confirm(peer, verification)`: asked once
    connected, before any record moves; anything but "accept" stops the join.
    """
    from imprint.sync.addresses import default_relay, parse_target
    from imprint.sync.session import ConsumerSession, SessionConfig

    where = parse_target(target, default_relay=default_relay())
    pin = pin.strip()
    identity, host, local, owned = _session_parts(settings, local)
    with local if owned else nullcontext(local):
        session = ConsumerSession(
            config=SessionConfig(url=where.url("consumer"), room=where.room, pin=pin, mode=mode,
                                 batch_size=batch_size, idle_timeout=idle_timeout,
                                 **_spool_options(settings, spool_max_bytes)),
            local=local, identity=identity, host=host, report=report, confirm=confirm,
        )
        if on_session is not None:
            on_session(session)
        return session.run()


def cmd_serve(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.trust_gate import stdin_approver

    mode = "plaintext" if args.plaintext else "encrypted"
    run_serve(settings, relay=args.relay, listen=args.listen, mode=mode, batch_size=args.batch_size,
              idle_timeout=args.timeout, report=_reporter(out), approver=stdin_approver,
              spool_max_bytes=args.spool_limit)
    return 0


def cmd_join(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.sync.addresses import check_pin

    mode = "plaintext" if args.plaintext else "encrypted"
    if args.plaintext:
        note("imprint: WARNING: --plaintext: the relay can read the PIN and every record of this sync")
    run_join(settings, target=args.target, pin=check_pin(args.pin), mode=mode, batch_size=args.batch_size,
             idle_timeout=args.timeout, report=_reporter(out), spool_max_bytes=args.spool_limit)
    return 0


def cmd_sync(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """`imprint sync serve …` or `imprint sync TARGET --pin PIN`."""
    if args.target == "serve":
        if args.pin:
            raise ConfigError("serve makes its own PIN; --pin is for the joining side")
        return cmd_serve(args, settings, out)
    if not args.pin:
        raise ConfigError("joining needs the PIN that serve printed: imprint sync TARGET --pin PIN")
    return cmd_join(args, settings, out)


# ---------------------------------------------------------------- relay, trust


def cmd_relay(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.relay import run_relay

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be between 0 and 65535")
    return run_relay(host=args.host, port=args.port, budget_bytes=args.budget, max_rooms=args.max_rooms,
                     max_rooms_per_address=args.rooms_per_address)


def cmd_trust_list(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.trust import TrustList

    devices = TrustList(settings.trust_path).load()
    if not devices:
        out.line("no trusted devices")
    for d in devices:
        try:
            added = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.added)) if d.added else "?"
        except (OverflowError, ValueError, OSError):
            added = "?"  # a hand-edited file
        out.result({"fingerprint": d.fingerprint, "hostname": d.hostname, "added": d.added, "public_key": d.public_key},
                   f"{clip(d.fingerprint, 16)}  {clip(d.hostname, 64):<24} added {added}"
                   f"{'' if d.public_key else '  (no key: plaintext peer)'}")
    return 0


def cmd_trust_remove(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.trust import TrustList

    if not TrustList(settings.trust_path).remove(args.fingerprint.lower()):
        raise ConfigError(f"{args.fingerprint} is not on the trust list (see 'imprint trust list')")
    out.result({"removed": args.fingerprint.lower()}, f"removed {args.fingerprint.lower()}")
    return 0


def _trust_usage(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    raise ConfigError("trust needs an action: list or remove (see 'imprint trust --help')")


# ---------------------------------------------------------------- demo


DEMO_A = [
    ("The deploy script is ops/deploy.sh; it needs AWS credentials in the environment", "ops"),
    ("Our Postgres runs version 16 with logical replication to the analytics replica", "db"),
    ("Alice prefers reviews on Tuesday mornings", "team"),
    ("The staging cluster is reset every Sunday at 03:00 UTC", "ops"),
    ("Use ruff for linting and black for formatting in every Python repo", "dev"),
]
DEMO_B = [
    ("The deploy script is ops/deploy.sh; it needs AWS credentials in the environment", "ops"),
    ("The mobile app release train leaves every second Thursday", "mobile"),
    ("Bob owns the billing service and its on-call rotation", "team"),
    ("Feature flags live in LaunchDarkly under the project 'core'", "dev"),
]
DEMO_FACTS_A = [("alice", "works_on", "billing"), ("postgres", "version", "16")]
DEMO_FACTS_B = [("alice", "works_on", "billing"), ("bob", "owns", "billing")]


def _demo_seed(settings: Settings, memories: list[tuple[str, str]], facts: list[tuple[str, str, str]]) -> None:
    from imprint.actors.base import ask
    from imprint.local import LocalActors
    from imprint.messages.records import FactRecord, MemoryRecord, finalize_memory
    from imprint.messages.store import StoreFacts

    with LocalActors(settings, embedder=True) as local:
        local.store_memories(tuple(finalize_memory(MemoryRecord(content=c, project=p, source="demo")) for c, p in memories))
        ask(local["fact_store"], StoreFacts(records=tuple(
            FactRecord(subject=s, predicate=pr, object=o, valid_from=1_700_000_000.0 + i, source="demo")
            for i, (s, pr, o) in enumerate(facts))))


def _export(settings: Settings) -> tuple[list[bytes], list[bytes]]:
    import msgspec

    from imprint.actors.base import ask
    from imprint.local import LocalActors
    from imprint.messages.store import PageFacts, PageMemories

    enc = msgspec.json.Encoder()
    with LocalActors(settings) as local:
        mems = [enc.encode(r) for r in ask(local["memory_store"], PageMemories(limit=10_000)).records]
        facts = [enc.encode(f.record) for f in ask(local["fact_store"], PageFacts(limit=10_000)).facts]
    return mems, facts


def cmd_demo(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Two temporary data dirs sync through a relay on 127.0.0.1; both end with the union."""
    import threading

    from imprint.relay import RelayServer
    from imprint.sync.addresses import new_pin

    report_a = HumanReporter(prefix="[A] ") if not out.json_mode else json_reporter(out)
    report_b = HumanReporter(prefix="[B] ") if not out.json_mode else json_reporter(out)
    with tempfile.TemporaryDirectory(prefix="imprint-demo-") as tmp:
        a = Settings(data_dir=Path(tmp) / "machine-a", model=settings.model).prepare()
        b = Settings(data_dir=Path(tmp) / "machine-b", model=settings.model).prepare()
        out.line(f"Demo: machine A has {len(DEMO_A)} memories and {len(DEMO_FACTS_A)} facts, "
                 f"machine B has {len(DEMO_B)} and {len(DEMO_FACTS_B)}; one memory and one fact are on both.")
        out.line("Loading the embedding model and seeding both machines…")
        _demo_seed(a, DEMO_A, DEMO_FACTS_A)
        _demo_seed(b, DEMO_B, DEMO_FACTS_B)
        server = RelayServer(host="127.0.0.1", port=0)
        port = server.start_in_thread()
        out.line(f"Relay on ws://127.0.0.1:{port}; A serves, B joins (encrypted, approval answered 'trust').")
        room_event: dict[str, Any] = {}
        ready = threading.Event()
        outcome: dict[str, Any] = {}

        def report_provider(event: dict[str, Any]) -> None:
            if event["event"] == "room":
                room_event.update(event)
                ready.set()
                return
            report_a(event)

        def provider() -> None:
            try:
                outcome["a"] = run_serve(a, relay=f"ws://127.0.0.1:{port}", listen="", mode="encrypted", batch_size=500,
                                         idle_timeout=120, report=report_provider, approver=lambda peer, warning: "trust")
            except ImprintError as exc:
                outcome["a_error"] = exc
                ready.set()

        thread = threading.Thread(target=provider, name="demo-provider", daemon=True)
        thread.start()
        try:
            if not ready.wait(timeout=300) or "a_error" in outcome:
                raise outcome.get("a_error") or ImprintError("demo provider did not start")
            run_join(b, target=f"ws://127.0.0.1:{port}/{room_event['room']}", pin=room_event["pin"], mode="encrypted",
                     batch_size=500, idle_timeout=120,
                     report=report_b)
            thread.join(timeout=120)
            if "a_error" in outcome:
                raise outcome["a_error"]
        finally:
            server.stop()
        mems_a, facts_a = _export(a)
        mems_b, facts_b = _export(b)
    same = mems_a == mems_b and facts_a == facts_b
    out.result(
        {"event": "demo", "identical": same, "memories": len(mems_a), "facts": len(facts_a)},
        f"\nBoth machines now hold {len(mems_a)} memories and {len(facts_a)} facts; exports identical: {'yes' if same else 'NO'}",
    )
    return 0 if same else 1


# ---------------------------------------------------------------- parser


def _size(text: str) -> int:
    from imprint.spool import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sync_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plaintext", action="store_true",
                   help="speak the plaintext protocol of Imprint's own sync clients (its Go CLI and dashboard), "
                        "to sync with them; the relay can then read the PIN and every record")
    p.add_argument("--batch-size", type=int, default=500, metavar="N", help="records per batch (default 500)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up when the peer is silent this long mid-transfer, or (join) when nobody serves "
                        "the room this long (default 120)")
    p.add_argument("--spool-limit", type=_size, default=None, metavar="SIZE",
                   help="how much received data may wait on disk to be stored, e.g. 4G "
                        "(env IMPRINT_SPOOL_LIMIT; default 2G)")


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relay", default=None, metavar="RELAY",
                   help="relay address: HOST, ws://HOST:PORT or wss://HOST (env IMPRINT_RELAY); "
                        "default: run a relay in this process and print this machine's LAN address")
    p.add_argument("--listen", default="0.0.0.0:8430", metavar="HOST:PORT",
                   help="where the built-in relay listens when no --relay is given (default 0.0.0.0:8430)")


def add_sync_commands(sub: Any, common: argparse.ArgumentParser, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("serve", cmd_serve, "offer this machine's memories for one sync (provider)",
                description="Print a command with a one-time PIN for the other machine, wait for it, ask you to approve it "
                            "(unless trusted), then merge both ways and exit. Encrypted end to end by default.")
    _serve_options(p)
    _sync_options(p)

    p = command("join", cmd_join, "sync with a machine running serve (consumer)",
                description="Join the room that serve printed: pull its records, push ours, print what changed on both sides.")
    p.add_argument("target", help="ROOM (with IMPRINT_RELAY), HOST/ROOM, or ws[s]://HOST/ROOM as serve printed")
    p.add_argument("--pin", required=True, help="the 8-character PIN serve printed")
    _sync_options(p)

    p = command("sync", cmd_sync, "'sync serve' or 'sync TARGET --pin PIN' (the names Imprint's own CLI uses)",
                description="imprint sync serve [--relay R]  |  imprint sync TARGET --pin PIN")
    p.add_argument("target", metavar="serve|TARGET", help="'serve' to provide, or the target serve printed")
    p.add_argument("--pin", default=None, help="the PIN serve printed (joining side)")
    _serve_options(p)
    _sync_options(p)

    p = command("relay", cmd_relay, "run a relay server (stateless forwarder between peers)",
                description="Forward frames between the two sides of each room; never reads them. Everything it "
                            "holds at once (frames held, read, in flight) stays within --budget; a client that "
                            "would pass it is refused with close 1009, the others go on.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8430, help="port (default 8430)")
    p.add_argument("--budget", type=_size, default=512 * 1024 * 1024, metavar="SIZE",
                   help="memory for frames across all rooms, e.g. 1G (default 512M)")
    p.add_argument("--max-rooms", type=int, default=1000, metavar="N", help="rooms open at once (default 1000)")
    p.add_argument("--rooms-per-address", type=int, default=16, metavar="N",
                   help="rooms one client address may have open (default 16)")
    p.set_defaults(no_data_dir=True)

    trust = command("trust", _trust_usage, "list or remove trusted devices")
    tsub = trust.add_subparsers(dest="trust_command", metavar="ACTION")
    t = tsub.add_parser("list", parents=[common], help="show trusted devices")
    t.set_defaults(handler=cmd_trust_list)
    t = tsub.add_parser("remove", parents=[common], help="forget a trusted device")
    t.add_argument("fingerprint", metavar="FP", help="the device's 8-hex id")
    t.set_defaults(handler=cmd_trust_remove)

    p = command("demo", cmd_demo, "sync two temporary data dirs on this machine and show the merge")
    p.set_defaults(no_data_dir=True)  # it works in temporary dirs only
