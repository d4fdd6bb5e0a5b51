"""The `imprint` command line. Thin: it resolves settings, starts the actors a
command needs, asks them with timeouts and stops them all in a `finally`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec

from imprint.cli_output import Output, note
from imprint.config import Settings, settings_from, validate_workspace
from imprint.errors import ConfigError, ImprintError, InputError
from imprint.messages.records import TAG_KEYS

#: Records per store round trip when importing.
IMPORT_BATCH = 256
#: Bad lines named one by one before the rest are only counted.
MAX_REPORTED_LINES = 20

Handler = Callable[[argparse.Namespace, Settings, Output], int]


# ---------------------------------------------------------------- argument parsing


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("global options")
    g.add_argument("--data-dir", metavar="DIR", default=default, help="data folder (env IMPRINT_DATA_DIR; default ~/.local/share/imprint)")
    g.add_argument("--workspace", metavar="NAME", default=default, help="workspace: its own memory collection and facts database (env IMPRINT_WORKSPACE; default 'default')")
    g.add_argument("--model", metavar="NAME", default=default, help="sentence-transformers model name or path, loaded offline (env IMPRINT_MODEL; default all-MiniLM-L6-v2, bundled)")
    g.add_argument("--qdrant-url", metavar="URL", default=default, help="use a Qdrant server instead of the embedded store (env IMPRINT_QDRANT_URL)")
    g.add_argument("--json", action="store_true", default=default, help="print one JSON object per line on stdout and nothing else")
    g.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logs on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprint",
        description="Memory layer for AI agents: memories (semantic search) and facts, synced between your machines through a relay that never sees them.",
        epilog="Run 'imprint COMMAND --help' for a command's options. Quick start: 'imprint demo'.",
    )
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    def command(name: str, handler: Handler, help_: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=kw.pop("description", help_), **kw)
        p.set_defaults(handler=handler)
        return p

    p = command("add", cmd_add, "store one memory and print its id")
    p.add_argument("text", help="the memory's text, or - to read it from standard input (for long or multi-line text)")
    p.add_argument("--project", default="default", help="project the memory belongs to (default: default)")
    p.add_argument("--source", default="", help="where it came from, e.g. a file path")
    p.add_argument("--type", default="note", help="kind of memory (default: note)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help=f"a tag; KEY is one of {', '.join(TAG_KEYS)}; repeat for several")

    p = command("import", cmd_import, "bulk-import memory records from a JSONL file",
                description="Import memory records, one JSON object per line: content (required), project, type, tags "
                            "(lang, layer, kind, domain, topics), source, chunk_index, source_mtime, timestamp - the "
                            "shape 'imprint export' writes. Bad lines are named and skipped; the rest are stored; exit 1 if any line was rejected.")
    p.add_argument("file", help="JSONL file, or - for standard input")

    p = command("export", cmd_export, "print every record as JSONL (what sync sends)")
    p.add_argument("--dataset", choices=("memories", "facts"), default="memories", help="which records (default: memories)")

    p = command("search", cmd_search, "semantic search over memories, best first")
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, default=5, metavar="N", help="how many results (default 5)")
    p.add_argument("--project", default=None, help="only memories of this project")

    fact = command("fact", _fact_usage, "add, list and end facts (subject–predicate–object)")
    fsub = fact.add_subparsers(dest="fact_command", metavar="ACTION")
    p = fsub.add_parser("add", parents=[common], help="add a fact valid from now")
    p.set_defaults(handler=cmd_fact_add)
    p.add_argument("subject")
    p.add_argument("predicate")
    p.add_argument("object")
    p.add_argument("--source", default="", help="where the fact came from")
    p = fsub.add_parser("list", parents=[common], help="list facts (open ones unless --all)")
    p.set_defaults(handler=cmd_fact_list)
    p.add_argument("--subject")
    p.add_argument("--predicate")
    p.add_argument("--all", action="store_true", help="include ended facts")
    p = fsub.add_parser("end", parents=[common], help="end an open fact now")
    p.set_defaults(handler=cmd_fact_end)
    p.add_argument("fact_id", type=int, metavar="ID", help="the id 'fact list' shows")

    p = command("status", cmd_status, "show data dir, workspace, device id, model and counts (read-only, fast)")
    p.set_defaults(read_only=True)

    try:
        from imprint.sync_cli import add_sync_commands
    except ImportError:  # sync commands not built yet
        pass
    else:
        add_sync_commands(sub, common, command)
    try:
        from imprint.ui.cli import add_ui_command
    except ImportError:  # dashboard dependencies (fastapi, uvicorn) not installed
        pass
    else:
        add_ui_command(sub, common, command)
    return parser


def _fact_usage(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    raise ConfigError("fact needs an action: add, list or end (see 'imprint fact --help')")


# ---------------------------------------------------------------- helpers


def _parse_tags(pairs: list[str]) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in TAG_KEYS:
            raise InputError(f"bad --tag {pair!r}: expected KEY=VALUE with KEY one of {', '.join(TAG_KEYS)}")
        if key in ("domain", "topics"):
            tags.setdefault(key, []).append(value)
        else:
            tags[key] = value
    return tags


def _local(settings: Settings, **kw: Any):
    from imprint.local import LocalActors

    return LocalActors(settings, **kw)


def _progress(**kw: Any):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=None, dynamic_ncols=True, **kw)


# ---------------------------------------------------------------- memory commands


def cmd_add(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.records import MemoryRecord, finalize_memory

    content = _read_stdin_text() if args.text == "-" else args.text
    raw = {"content": content, "project": args.project, "source": args.source, "type": args.type, "tags": _parse_tags(args.tag)}
    try:
        record = finalize_memory(msgspec.convert(raw, MemoryRecord))
    except msgspec.ValidationError as exc:
        raise InputError(f"cannot add memory: {exc}") from None
    with _local(settings, embedder=True) as local:
        result = local.store_memories((record,))
    inserted = bool(result.inserted)
    out.result({"id": record.id, "inserted": inserted}, record.id if inserted else f"{record.id} (already there)")
    return 0


def _read_stdin_text() -> str:
    from imprint.messages.records import MAX_RECORD_BYTES

    data = sys.stdin.buffer.read(MAX_RECORD_BYTES + 4)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if len(data) > MAX_RECORD_BYTES:
        raise InputError("cannot add memory: the text on standard input is larger than 1 MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot add memory: standard input is not UTF-8 text (bad byte at offset {exc.start})") from None


def _jsonl_lines(path: str) -> tuple[Iterator[bytes], int | None]:
    if path == "-":
        return iter(sys.stdin.buffer), None
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return iter(fh), p.stat().st_size


def cmd_import(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.records import decode_memory_input, finalize_memory

    lines, total_bytes = _jsonl_lines(args.file)
    inserted = skipped = rejected = 0
    batch: list = []
    now = time.time()
    with _local(settings, embedder=True) as local, _progress(total=total_bytes, unit="B", unit_scale=True, desc="import") as bar:

        def flush() -> None:
            nonlocal inserted, skipped
            if batch:
                result = local.store_memories(tuple(batch))
                inserted += result.inserted
                skipped += result.skipped
                batch.clear()

        for number, line in enumerate(lines, start=1):
            bar.update(len(line))
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark, as some editors write
            if not line.strip():
                continue
            try:
                record = finalize_memory(decode_memory_input(line.rstrip(b"\r\n")), now=now)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                # msgspec raises UnicodeDecodeError for bad bytes inside a JSON string.
                rejected += 1
                if rejected <= MAX_REPORTED_LINES:
                    reason = "not UTF-8 text" if _not_utf8(line) else str(exc)
                    note(f"imprint: line {number}: rejected: {reason}")
                continue
            batch.append(record)
            if len(batch) >= IMPORT_BATCH:
                flush()
        flush()
    if rejected > MAX_REPORTED_LINES:
        note(f"imprint: … and {rejected - MAX_REPORTED_LINES} more rejected lines")
    out.result(
        {"inserted": inserted, "skipped": skipped, "rejected": rejected},
        f"inserted {inserted}, skipped {skipped} (already there)" + (f", rejected {rejected} lines" if rejected else ""),
    )
    return 1 if rejected else 0


def _not_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def cmd_export(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.store import PageFacts, PageMemories

    encoder = msgspec.json.Encoder()
    write = sys.stdout.buffer.write
    if args.dataset == "memories":
        with _local(settings, memories=True, facts=False) as local:
            after = None
            while True:
                page = ask(local["memory_store"], PageMemories(limit=500, after=after))
                for record in page.records:
                    write(encoder.encode(record) + b"\n")
                if page.next_after is None:
                    break
                after = page.next_after
    else:
        with _local(settings, memories=False, facts=True) as local:
            after_fact = None
            while True:
                fpage = ask(local["fact_store"], PageFacts(limit=500, after=after_fact))
                for fact in fpage.facts:
                    write(encoder.encode(fact.record) + b"\n")
                if fpage.next_after is None:
                    break
                after_fact = fpage.next_after
    sys.stdout.flush()
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.store import EmbedTexts, SearchMemories

    if not args.query.strip():
        raise InputError("search query is empty")
    if not 1 <= args.k <= 1000:
        raise InputError("-k must be between 1 and 1000")
    with _local(settings, embedder=True, facts=False) as local:
        vector = ask(local["embedder"], EmbedTexts(texts=(args.query,))).vectors[0]
        hits = ask(local["memory_store"], SearchMemories(vector=vector, limit=args.k, project=args.project)).hits
    if not hits:
        out.line("no memories found")
    for hit in hits:
        r = hit.record
        snippet = " ".join(r.content.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:99] + "…"
        out.result(
            {"id": r.id, "score": round(hit.score, 6), "content": r.content, "project": r.project, "source": r.source},
            f"{hit.score:.3f}  {r.id}  [{r.project}]  {snippet}",
        )
    return 0


# ---------------------------------------------------------------- facts


def _fact_json(stored: Any) -> dict[str, Any]:
    return {"id": stored.fact_id, **msgspec.to_builtins(stored.record)}


def _fact_line(stored: Any) -> str:
    r = stored.record
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.valid_from))
    ended = f"  (ended {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.ended))})" if r.ended is not None else ""
    return f"{stored.fact_id:>6}  {r.subject} —{r.predicate}→ {r.object}  since {when}{ended}"


def cmd_fact_add(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.records import FactRecord
    from imprint.messages.store import AddFact

    raw = {"subject": args.subject, "predicate": args.predicate, "object": args.object, "valid_from": time.time(), "source": args.source}
    try:
        record = msgspec.convert(raw, FactRecord)
    except msgspec.ValidationError as exc:
        raise InputError(f"cannot add fact: {exc}") from None
    with _local(settings, memories=False) as local:
        stored = ask(local["fact_store"], AddFact(record=record))
    out.result(_fact_json(stored), str(stored.fact_id))
    return 0


def cmd_fact_list(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.store import ListFacts

    with _local(settings, memories=False) as local:
        facts = ask(local["fact_store"], ListFacts(subject=args.subject, predicate=args.predicate, include_ended=args.all, limit=100_000))
    if not facts:
        out.line("no facts")
    for stored in facts:
        out.result(_fact_json(stored), _fact_line(stored))
    return 0


def cmd_fact_end(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.store import EndFact

    with _local(settings, memories=False) as local:
        stored = ask(local["fact_store"], EndFact(fact_id=args.fact_id, ended=time.time()))
    out.result(_fact_json(stored), f"ended fact {stored.fact_id}")
    return 0


# ---------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Read-only: loads no model, creates nothing, works on a data dir it may not write."""
    from imprint.actors.base import ask
    from imprint.identity import read_fingerprint
    from imprint.messages.store import CountFacts, DescribeStore

    from imprint.spool import read_pending, spool_path

    store_exists = bool(settings.qdrant_url) or settings.qdrant_path.exists()
    with _local(settings, memories=store_exists, facts=True, read_only=True) as local:
        store = ask(local["memory_store"], DescribeStore()) if store_exists else None
        facts = ask(local["fact_store"], CountFacts())
    info = {
        "data_dir": str(settings.data_dir),
        "workspace": settings.workspace,
        "workspace_exists": settings.workspace_dir.exists(),
        "device_id": read_fingerprint(settings.data_dir),
        "model": settings.model,
        "dimension": store.dimension if store else None,
        "memory_store": store.location if store else (settings.qdrant_url or str(settings.qdrant_path)),
        "memories": store.count if store else 0,
        "facts_active": facts.active,
        "facts_ended": facts.ended,
        "waiting_in_spool": read_pending(spool_path(settings.workspace_dir)).total,
    }
    if out.json_mode:
        out.result(info)
    else:
        shown = dict(info)
        shown["device_id"] = info["device_id"] or "none yet (created by the first sync)"
        shown["dimension"] = info["dimension"] or "-"
        if not info["workspace_exists"]:
            shown["workspace"] = f"{settings.workspace} (empty: nothing stored yet)"
        del shown["workspace_exists"]
        if info["waiting_in_spool"]:
            shown["waiting_in_spool"] = (f"{info['waiting_in_spool']:,} received records, stored by the next command "
                                         "that opens the store")
        else:
            del shown["waiting_in_spool"]
        width = max(len(k) for k in shown)
        for key, value in shown.items():
            out.line(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


# ---------------------------------------------------------------- entry point


def _raise_terminated(signum: int, frame: Any) -> None:
    from imprint.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    out = Output(json_mode=bool(args.json))
    # Everything imprint creates (stores, spool, logs, keys, trust list) is for this user only.
    os.umask(0o077)
    from imprint.logs import setup_logging

    setup_logging(verbose=bool(args.verbose), log_dir=None)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM as Ctrl-C: unwind through every `finally`, so stores close and peers are told.
        signal.signal(signal.SIGTERM, _raise_terminated)
    settings: Settings | None = None
    interrupted = False
    try:
        settings = settings_from(data_dir=args.data_dir, workspace=args.workspace, model=args.model, qdrant_url=args.qdrant_url)
        if getattr(args, "read_only", False):
            validate_workspace(settings.workspace)
        elif not getattr(args, "no_data_dir", False):
            settings.prepare()
            setup_logging(verbose=bool(args.verbose), log_dir=settings.log_dir)
        return args.handler(args, settings, out)
    except ImprintError as exc:
        note(f"imprint: error: {exc}")
        if out.json_mode:
            out.result({"event": "error", "message": str(exc)})
        return exc.exit_code
    except KeyboardInterrupt as exc:
        interrupted = True
        code = getattr(exc, "exit_code", 130)
        note("imprint: stopped (SIGTERM)" if code == 143 else "imprint: interrupted")
        return code
    except BrokenPipeError:
        # stdout closed early (e.g. `imprint export | head`): not an error for the user.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line for the user, the traceback in the log
        from loguru import logger

        logger.opt(exception=exc).debug("unexpected error")
        where = f" (details in {settings.log_dir / 'imprint.log'})" if settings is not None else ""
        note(f"imprint: internal error: {type(exc).__name__}: {str(exc)[:200]}{where}")
        if out.json_mode:
            out.result({"event": "error", "message": f"internal error: {type(exc).__name__}"})
        return 1
    finally:
        from imprint.local import stop_leftovers

        stop_leftovers(interrupted=interrupted)


def run() -> None:
    """The `imprint` command: `main()`, then exit at once.

    Every store is closed and every actor stopped by the time `main` returns;
    what is left is the interpreter's teardown of torch and friends, about a
    second on these machines, which a user would wait through after every
    command (and after Ctrl-C). Output is flushed and the log closed first.
    """
    code = main()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass
    try:
        sys.stderr.flush()
    except (ValueError, OSError):
        pass
    from loguru import logger

    logger.remove()  # flushes and closes the log file
    os._exit(code)


if __name__ == "__main__":
    run()
