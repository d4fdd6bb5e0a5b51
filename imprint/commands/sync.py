"""Sync commands: serve, join (and `sync`, the names Imprint's own CLI uses),
relay, and demo."""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path
from typing import Any

import msgspec

from imprint.commands import CommandLine, size_type
from imprint.commands.render import (
    HumanReporter,
    Output,
    note,
    reporter,
    stdin_approver,
    stdin_forget,
)
from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError
from imprint.messages import events
from imprint.protocol.addresses import check_pin
from imprint.protocol.forgets import DEFAULT_MAX_FORGET
from imprint.sync.network import default_relay
from imprint.service import protocol as p
from imprint.sync.runner import mode_of

_encoder = msgspec.json.Encoder()


def _options_of(args: argparse.Namespace) -> p.SyncOptions:
    from imprint.spool import default_max_bytes

    return p.SyncOptions(mode=mode_of(args.plaintext), batch_size=args.batch_size, idle_timeout=args.timeout,
                         spool_max_bytes=args.spool_limit if args.spool_limit is not None else default_max_bytes(),
                         vectors=not args.reembed, max_forget="none" if args.yes else args.max_forget)


def _run_in_service(settings: Settings, out: Output, request: p.Request) -> int:
    """A sync runs in the data dir's service; its events come back here as they happen.
    Ctrl-C stops the sync (the service lives on)."""
    from imprint.service.client import ServiceClient

    with ServiceClient(settings) as service:
        service.call(request, Any, on_event=reporter(out), on_ask=stdin_approver, on_forget=stdin_forget,
                     on_note=lambda text: note(f"imprint: {text}"))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    request = p.Serve(relay=args.relay, listen=args.listen, default_relay=default_relay(), options=_options_of(args))
    return _run_in_service(settings, out, request)


def cmd_join(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    if args.plaintext:
        note("imprint: WARNING: --plaintext: the relay can read the PIN and every record of this sync")
    request = p.Join(target=args.target, pin=check_pin(args.pin), default_relay=default_relay(),
                     options=_options_of(args))
    return _run_in_service(settings, out, request)


def cmd_sync(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """`imprint sync serve …` or `imprint sync TARGET --pin PIN`."""
    if args.target == "serve":
        if args.pin:
            raise ConfigError("serve makes its own PIN; --pin is for the joining side")
        return cmd_serve(args, settings, out)
    if not args.pin:
        raise ConfigError("joining needs the PIN that serve printed: imprint sync TARGET --pin PIN")
    return cmd_join(args, settings, out)


def cmd_relay(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.relay.server import run_relay

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be between 0 and 65535")
    if not 0 < args.drain_timeout < float("inf"):  # also refuses nan
        raise ConfigError("--drain-timeout must be a positive number of seconds")
    return run_relay(host=args.host, port=args.port, budget_bytes=args.budget, max_rooms=args.max_rooms,
                     max_rooms_per_address=args.rooms_per_address, trusted_proxies=args.trusted_proxy,
                     metrics=args.metrics, drain_timeout=args.drain_timeout)


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
    from imprint.local import LocalActors, all_facts, all_memories

    with LocalActors(settings) as local:
        mems = [_encoder.encode(r) for r in all_memories(local["memory_store"])]
        facts = [_encoder.encode(f.record) for f in all_facts(local["fact_store"])]
    return mems, facts


def cmd_demo(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Two temporary data dirs sync through a relay on 127.0.0.1; both end with the union.

    The demo's machines are its own temporary data dirs, run in this process: no
    service is started for them, and the user's data dir is not touched."""
    from imprint.relay.server import RelayServer
    from imprint.sync.runner import run_join, run_serve

    report_a = HumanReporter(prefix="[A] ") if not out.json_mode else out.event
    report_b = HumanReporter(prefix="[B] ") if not out.json_mode else out.event
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
        rooms: list[events.Room] = []
        ready = threading.Event()
        outcome: dict[str, Any] = {}

        def report_provider(event: events.Event) -> None:
            if isinstance(event, events.Room):
                rooms.append(event)
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
            run_join(b, target=f"ws://127.0.0.1:{port}/{rooms[0].room}", pin=rooms[0].pin, mode="encrypted",
                     batch_size=500, idle_timeout=120, report=report_b)
            thread.join(timeout=120)
            if "a_error" in outcome:
                raise outcome["a_error"]
        finally:
            server.stop()
        mems_a, facts_a = _export(a)
        mems_b, facts_b = _export(b)
    same = mems_a == mems_b and facts_a == facts_b
    out.event(events.DemoResult(identical=same, memories=len(mems_a), facts=len(facts_a)))
    out.line(f"\nBoth machines now hold {len(mems_a)} memories and {len(facts_a)} facts; exports identical: "
             f"{'yes' if same else 'NO'}")
    if same and not getattr(args, "no_keep", False):
        kept = _keep_for_chat(settings, mems_b)
        if kept:
            note(f"imprint: your memory was empty, so the demo's {kept} memories are now in it (project \"demo\"): "
                 "try `imprint ui` (its Chat tab) or `imprint chat \"who owns billing?\"`; "
                 "`imprint forget --project demo` removes them")
    return 0 if same else 1


def _keep_for_chat(settings: Settings, memories: list[bytes]) -> int:
    """On a fresh install, the demo's memories become the user's (project "demo"), through the data
    dir's service; a memory that holds anything is left alone. Returns how many were stored."""
    from imprint.messages.records import MemoryRecord, finalize_memory
    from imprint.messages.store import StoreResult
    from imprint.service.client import ServiceClient

    records = tuple(finalize_memory(msgspec.structs.replace(msgspec.json.decode(m, type=MemoryRecord), project="demo",
                                                            id="")) for m in memories)
    with ServiceClient(settings.prepare()) as service:
        if service.call(p.Count(), int):
            return 0
        done = service.call(p.Remember(records=records), StoreResult)
    return done.inserted


# ---------------------------------------------------------------- parser


def _forget_limit(text: str) -> str:
    from imprint.protocol.forgets import ForgetLimit

    try:
        ForgetLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sync_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plaintext", action="store_true",
                   help="speak the plaintext protocol of Imprint's own sync clients (its Go CLI and dashboard), "
                        "to sync with them; the relay can then read the PIN and every record")
    p.add_argument("--batch-size", type=int, default=500, metavar="N", help="records per batch (default 500)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up when the peer is silent this long mid-transfer, or (join) when nobody serves "
                        "the room this long (default 120)")
    p.add_argument("--spool-limit", type=size_type, default=None, metavar="SIZE",
                   help="how much received data may wait on disk to be stored, e.g. 4G "
                        "(env IMPRINT_SPOOL_LIMIT; default 2G)")
    p.add_argument("--reembed", action="store_true",
                   help="embed every memory received here, even from a machine running the same model (by default "
                        "that machine's vectors are used, after embedding a sample to check them)")
    p.add_argument("--max-forget", type=_forget_limit, default=DEFAULT_MAX_FORGET, metavar="N|P%",
                   help="ask before the other machine makes this one forget more than N records, P%% of the store, "
                        "or both ('100,10%%', the default: more than 100 records and more than 10%%); without a "
                        "terminal to ask on, such a sync forgets nothing and says so. What a sync forgets goes to "
                        "'imprint trash' for 30 days")
    p.add_argument("-y", "--yes", action="store_true",
                   help="forget whatever the other machine has forgotten, without asking (scripts)")


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relay", default=None, metavar="RELAY",
                   help="relay address: HOST, ws://HOST:PORT or wss://HOST (env IMPRINT_RELAY); "
                        "default: run a relay in this process and print this machine's LAN address")
    p.add_argument("--listen", default="0.0.0.0:8430", metavar="HOST:PORT",
                   help="where the built-in relay listens when no --relay is given (default 0.0.0.0:8430)")


def register(cli: CommandLine) -> None:
    p = cli.command("serve", cmd_serve, "offer this machine's memories for one sync (provider)",
                    description="Print a command with a one-time PIN for the other machine, wait for it, ask you to "
                                "approve it (unless trusted), then merge both ways and exit. Encrypted end to end by "
                                "default.")
    _serve_options(p)
    _sync_options(p)

    p = cli.command("join", cmd_join, "sync with a machine running serve (consumer)",
                    description="Join the room that serve printed: pull its records, push ours, print what changed on "
                                "both sides.")
    p.add_argument("target", help="ROOM (with IMPRINT_RELAY), HOST/ROOM, or ws[s]://HOST/ROOM as serve printed")
    p.add_argument("--pin", required=True, help="the 8-character PIN serve printed")
    _sync_options(p)

    p = cli.command("sync", cmd_sync, "'sync serve' or 'sync TARGET --pin PIN' (the names Imprint's own CLI uses)",
                    description="imprint sync serve [--relay R]  |  imprint sync TARGET --pin PIN")
    p.add_argument("target", metavar="serve|TARGET", help="'serve' to provide, or the target serve printed")
    p.add_argument("--pin", default=None, help="the PIN serve printed (joining side)")
    _serve_options(p)
    _sync_options(p)

    p = cli.command("relay", cmd_relay, "run a relay server (stateless forwarder between peers)",
                    description="Forward frames between the two sides of each room; never reads them. Everything it "
                                "holds at once (frames held, read, in flight) stays within --budget; a client that "
                                "would pass it is refused with close 1009, the others go on.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8430, help="port (default 8430)")
    p.add_argument("--budget", type=size_type, default=512 * 1024 * 1024, metavar="SIZE",
                   help="memory for frames across all rooms, e.g. 1G (default 512M)")
    p.add_argument("--max-rooms", type=int, default=1000, metavar="N", help="rooms open at once (default 1000)")
    p.add_argument("--rooms-per-address", type=int, default=16, metavar="N",
                   help="rooms one client address may have open (default 16)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="a proxy (address or CIDR, repeatable) whose PROXY protocol header or X-Forwarded-For "
                        "names the real client, so per-address limits apply to users, not to the proxy; "
                        "ignored from any other address")
    p.add_argument("--metrics", action="store_true",
                   help="answer GET /metrics on the relay's port in Prometheus' text format (no room ids)")
    p.add_argument("--drain-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="on SIGTERM, stop opening rooms and let syncs under way finish for this long before "
                        "closing them with 'relay restarting' (default 300); a second SIGTERM or Ctrl-C stops "
                        "at once")
    p.set_defaults(no_data_dir=True)

    p = cli.command("demo", cmd_demo, "sync two temporary data dirs on this machine and show the merge",
                    description="Seed two temporary data dirs, sync them through a relay on 127.0.0.1 and compare "
                                "their exports. If your own memory (the data dir's workspace) is still empty, the "
                                "merged memories are then stored in it under project \"demo\", so the dashboard "
                                "and `imprint chat` have something to answer from (`imprint forget --project demo` "
                                "removes them); --no-keep leaves it empty.")
    p.add_argument("--no-keep", action="store_true",
                   help="do not store the demo's memories in your (empty) memory afterwards")
    p.set_defaults(no_data_dir=True)  # its sync runs in temporary dirs
