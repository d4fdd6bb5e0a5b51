"""`imprint trash`: what another machine made this one forget, and bringing it back."""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime
from typing import Any

import msgspec

from imprint.commands import CommandLine
from imprint.commands.render import Output, confirm, note
from imprint.config import Settings
from imprint.errors import InputError
from imprint.service import protocol as p
from imprint.service.client import ServiceClient

#: Entries `imprint trash` lists.
LISTED = 1000


def register(cli: CommandLine) -> None:
    about = ("When another machine's sync makes this one forget records (it forgot them there), they are kept "
             "here for 30 days, never synced: list them, restore them (as newer copies, which then win on every "
             "machine at the next sync) or empty the trash. Your own 'imprint forget' does not go to the trash.")
    parser = cli.command("trash", cmd_trash_list, "list what other machines made this one forget (restorable for 30 days)",
                         description=about)
    _filters(parser)
    actions = parser.add_subparsers(dest="trash_command", metavar="ACTION")
    a = cli.action(actions, "list", cmd_trash_list, "list the trash (the default)", description=about)
    _filters(a)
    a = cli.action(actions, "restore", cmd_trash_restore,
                   "bring records back from the trash as newer copies (they win at the next sync, everywhere)")
    a.add_argument("ids", nargs="*", metavar="ID", help="ids as 'imprint trash' shows them (m12, f3)")
    _filters(a)
    a.add_argument("--all", action="store_true", help="restore everything in the trash")
    a = cli.action(actions, "empty", cmd_trash_empty, "drop everything in the trash for good")
    a.add_argument("-y", "--yes", action="store_true", help="do not ask")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="TIME",
                        help="only what was forgotten since TIME: a date (2026-12-01), a date and time "
                             "(2026-12-01T09:30) or an age (30m, 12h, 3d)")
    parser.add_argument("--peer", metavar="FP", help="only what this machine (a fingerprint or its start) made us forget")


def parse_since(text: str | None, *, now: float | None = None) -> float:
    """`--since`: 0 when not given; an age (`12h`) or an ISO date/time (local time)."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match[2]]
        return now - float(match[1]) * scale
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InputError(f"--since {text!r}: give a date (2026-12-01), a date and time (2026-12-01T09:30) "
                         "or an age (30m, 12h, 3d)") from None


def _peer(text: str | None) -> str:
    peer = (text or "").replace(":", "").strip().lower()
    if peer and not re.fullmatch(r"[0-9a-f]{1,64}", peer):
        raise InputError(f"--peer {text!r}: a fingerprint is hex digits (as 'imprint trust list' shows)")
    return peer


def _describe(entry: Any) -> tuple[str, dict[str, Any]]:
    from imprint.core import trash_id
    from imprint.messages.records import FactRecord, MemoryRecord

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.trashed_at))
    peer = entry.peer[:16] or "?"
    common = {"id": trash_id(entry), "dataset": entry.dataset, "trashed_at": entry.trashed_at, "peer": entry.peer}
    try:
        if entry.dataset == "memories":
            r = msgspec.msgpack.decode(entry.record, type=MemoryRecord)
            snippet = " ".join(r.content.split())
            text = f"[{r.project}] {snippet[:70] + ('…' if len(snippet) > 70 else '')}"
            record = msgspec.to_builtins(r)
        else:
            f = msgspec.msgpack.decode(entry.record, type=FactRecord)
            text = f"fact: {f.subject} —{f.predicate}→ {f.object}"
            record = msgspec.to_builtins(f)
    except msgspec.DecodeError:
        text, record = "(unreadable entry)", {}
    return f"{common['id']:>8}  {when}  from {peer}  {text}", {**common, "record": record}


def cmd_trash_list(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.trash import TrashEntry

    request = p.TrashList(since=parse_since(args.since), peer=_peer(args.peer), limit=LISTED + 1)
    with ServiceClient(settings) as service:
        entries = service.call(request, tuple[TrashEntry, ...])
    shown = [_describe(e) for e in entries[:LISTED]]
    if out.json_mode:
        for _, data in shown:
            out.result(data)
        return 0
    if not shown:
        out.line("the trash is empty: no other machine made this one forget anything in the last 30 days")
        return 0
    for line, _ in shown:
        out.line(line)
    more = " (the first 1,000; narrow with --since or --peer)" if len(entries) > LISTED else ""
    note(f"imprint: {len(shown):,} in the trash{more}; 'imprint trash restore ID…' brings them back")
    return 0


def cmd_trash_restore(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.store import TrashRestored

    since, peer = parse_since(args.since), _peer(args.peer)
    if not (args.ids or args.all or since or peer):
        raise InputError("restore what? give ids (as 'imprint trash' shows them), --since, --peer or --all")
    if args.all and (args.ids or since or peer):
        raise InputError("--all restores everything; leave out ids, --since and --peer")
    request = p.TrashRestore(ids=tuple(args.ids), since=since, peer=peer)
    with ServiceClient(settings) as service:
        done = service.call(request, TrashRestored, on_note=lambda text: note(f"imprint: {text}"))
    out.result({"memories": done.memories, "facts": done.facts},
               f"restored {done.memories:,} memories and {done.facts:,} facts; the next sync brings them back on "
               "your other machines")
    return 0


def cmd_trash_empty(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    confirm("Drop everything in the trash for good?", yes=args.yes)
    with ServiceClient(settings) as service:
        dropped = service.call(p.TrashEmpty(), int)
    out.result({"dropped": dropped}, f"dropped {dropped:,} records from the trash")
    return 0
