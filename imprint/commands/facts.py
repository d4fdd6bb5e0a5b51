"""Fact commands: fact add, fact list, fact end."""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import InputError
from imprint.service import protocol as p
from imprint.service.client import ServiceClient

ID_HELP = ("the id '{listing}' shows (the same on every machine; any 4 or more of its first hex digits "
           "that name one fact will do)")


def register(cli: CommandLine) -> None:
    actions = cli.group("fact", "add, list and end facts (subject–predicate–object)",
                        usage_error="fact needs an action: add, list, end or forget (see 'imprint fact --help')")
    p = cli.action(actions, "add", cmd_fact_add, "add a fact valid from now")
    p.add_argument("subject")
    p.add_argument("predicate")
    p.add_argument("object")
    p.add_argument("--source", default="", help="where the fact came from")
    p = cli.action(actions, "list", cmd_fact_list, "list facts (open ones unless --all)")
    p.set_defaults(reads=True)
    p.add_argument("--subject")
    p.add_argument("--predicate")
    p.add_argument("--all", action="store_true", help="include ended facts")
    p = cli.action(actions, "end", cmd_fact_end, "end an open fact now")
    p.add_argument("fact", metavar="ID", help=ID_HELP.format(listing="fact list"))
    p = cli.action(actions, "forget", cmd_fact_forget,
                   "forget a fact here and, through sync, on your other machines (end keeps it as history; "
                   "forget removes it)")
    p.add_argument("fact", metavar="ID", help=ID_HELP.format(listing="fact list --all"))
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")


def _fact_json(stored: Any) -> dict[str, Any]:
    return {"id": stored.key, **msgspec.to_builtins(stored.record)}


def _fact_line(stored: Any) -> str:
    r = stored.record
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.valid_from))
    ended = f"  (ended {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.ended))})" if r.ended is not None else ""
    return f"{stored.short_id}  {r.subject} —{r.predicate}→ {r.object}  since {when}{ended}"


def _note_old_number(ref: str, stored: Any) -> None:
    """A local number from an older version still names its fact, for one release."""
    ref = ref.strip().lower()
    if ref.isdigit() and not stored.key.startswith(ref):
        note(f"note: fact numbers are local to each machine and go away in the next release; "
                 f"this fact's id is {stored.short_id}, the same on every machine")


def cmd_fact_add(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.records import FactRecord
    from imprint.messages.store import StoredFact

    raw = {"subject": args.subject, "predicate": args.predicate, "object": args.object, "valid_from": time.time(), "source": args.source}
    try:
        record = msgspec.convert(raw, FactRecord)
    except msgspec.ValidationError as exc:
        raise InputError(f"cannot add fact: {exc}") from None
    with ServiceClient(settings) as service:
        stored = service.call(p.FactAdd(record=record), StoredFact)
    out.result(_fact_json(stored), stored.short_id)
    return 0


def cmd_fact_list(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.store import StoredFact

    with ServiceClient(settings) as service:
        facts = service.call(p.FactList(subject=args.subject, predicate=args.predicate, include_ended=args.all,
                                        limit=100_000), tuple[StoredFact, ...])
    if not facts:
        out.line("no facts")
    for stored in facts:
        out.result(_fact_json(stored), _fact_line(stored))
    return 0


def cmd_fact_forget(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.commands.render import confirm
    from imprint.messages.store import StoredFact

    with ServiceClient(settings) as service:
        shown = service.call(p.FactShow(fact=args.fact), StoredFact)
        out.line(_fact_line(shown))
        confirm("Forget this fact here and, at the next sync, on your other machines?", yes=args.yes)
        stored = service.call(p.FactForget(fact=shown.key), StoredFact)
    _note_old_number(args.fact, stored)
    out.result({"forgotten": _fact_json(stored)}, f"forgot fact {stored.short_id}")
    return 0


def cmd_fact_end(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.store import StoredFact

    with ServiceClient(settings) as service:
        stored = service.call(p.FactEnd(fact=args.fact), StoredFact)
    _note_old_number(args.fact, stored)
    out.result(_fact_json(stored), f"ended fact {stored.short_id}")
    return 0
