"""Memory commands: add, import, export, search, and status."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import InputError
from imprint.local import LocalActors, all_facts, all_memories, given_key
from imprint.messages.records import TAG_KEYS

#: Records per store round trip when importing.
IMPORT_BATCH = 256
#: Bad lines named one by one before the rest are only counted.
MAX_REPORTED_LINES = 20


def register(cli: CommandLine) -> None:
    p = cli.command("add", cmd_add, "store one memory and print its id")
    p.add_argument("text", help="the memory's text, or - to read it from standard input (for long or multi-line text)")
    p.add_argument("--project", default="default", help="project the memory belongs to (default: default)")
    p.add_argument("--source", default="", help="where it came from, e.g. a file path")
    p.add_argument("--type", default="note", help="kind of memory (default: note)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a tag; KEY is one of {', '.join(TAG_KEYS)}; repeat for several")

    p = cli.command("import", cmd_import, "bulk-import memory records from a JSONL file",
                    description="Import memory records, one JSON object per line: content (required), project, type, "
                                "tags (lang, layer, kind, domain, topics), source, chunk_index, source_mtime, timestamp "
                                "- the shape 'imprint export' writes. Bad lines are named and skipped; the rest are "
                                "stored; exit 1 if any line was rejected. Lines written by 'imprint export --vectors' "
                                "carry their vector and the fingerprint of the model that made it: when that is this "
                                "store's model the vector is stored as it is (nothing re-embedded); vectors of another "
                                "model are refused unless --reembed.")
    p.add_argument("file", help="JSONL file, or - for standard input")
    p.add_argument("--reembed", action="store_true",
                   help="ignore vectors the file carries and embed every text with this model (needed when the "
                        "file's vectors come from another model)")

    p = cli.command("export", cmd_export, "print every record as JSONL (what sync sends)")
    p.add_argument("--dataset", choices=("memories", "facts"), default="memories", help="which records (default: memories)")
    p.add_argument("--vectors", action="store_true",
                   help="add each memory's vector (base64 float32) and its model's fingerprint, so 'imprint import' "
                        "restores or moves the store without re-embedding")

    p = cli.command("forget", cmd_forget, "forget memories here and, through sync, on your other machines",
                    description="Forget memories by id (as search and export show them), or every memory of a "
                                "project (narrowed by --source and --type). They disappear from search, export and "
                                "stats, and each leaves a tombstone: a sync with your other machines forgets them "
                                "there too, and a copy offered again (an old export, a peer that has not synced "
                                "since) is skipped. Adding the same text later makes it a memory again. Shows how many "
                                "and asks first; --yes skips the question.")
    p.add_argument("ids", nargs="*", metavar="ID", help="ids of memories to forget")
    p.add_argument("--project", help="forget every memory of this project")
    p.add_argument("--source", help="with --project: only those from this source")
    p.add_argument("--type", help="with --project: only those of this type")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")

    p = cli.command("search", cmd_search, "semantic search over memories, best first")
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, default=5, metavar="N", help="how many results (default 5)")
    p.add_argument("--project", default=None, help="only memories of this project")

    p = cli.command("reembed", cmd_reembed, "re-embed every memory with this model (for a store built with another)",
                    description="A store remembers which model made its vectors and will not mix another model's "
                                "in: after switching models (--model, IMPRINT_MODEL) search and sync refuse it. This "
                                "reads every memory, embeds it with the current model into a new store beside the "
                                "old one, and swaps them once all is done (with a progress bar). Interrupted, the "
                                "old store stays as it was: run it again. Ids, texts, times, tombstones and facts "
                                "do not change.")

    p = cli.command("status", cmd_status, "show data dir, workspace, device id, model and counts (read-only, fast)")
    p.set_defaults(read_only=True)


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


def _progress(**kw: Any):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=None, dynamic_ncols=True, **kw)


def cmd_add(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.records import MemoryRecord, finalize_memory

    content = _read_stdin_text() if args.text == "-" else args.text
    raw = {"content": content, "project": args.project, "source": args.source, "type": args.type, "tags": _parse_tags(args.tag)}
    try:
        record = finalize_memory(msgspec.convert(raw, MemoryRecord))
    except msgspec.ValidationError as exc:
        raise InputError(f"cannot add memory: {exc}") from None
    with LocalActors(settings, embedder=True) as local:
        result = local.store_memories((record,))
    inserted, updated = bool(result.inserted), bool(result.updated)
    shown = record.id if inserted else f"{record.id} (updated: a newer text of this memory)" if updated else \
        f"{record.id} (already there)"
    out.result({"id": record.id, "inserted": inserted, "updated": updated}, shown)
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
    from imprint.errors import ModelError
    from imprint.messages.records import (
        carried_vector_decoder,
        decode_memory_input,
        finalize_memory,
        vector_from_field,
    )

    lines, total_bytes = _jsonl_lines(args.file)
    inserted = updated = skipped = rejected = reused = 0
    batch: list = []
    given: dict[tuple[str, str], list[float]] = {}
    now = time.time()
    with LocalActors(settings, embedder=True) as local, _progress(total=total_bytes, unit="B", unit_scale=True, desc="import") as bar:
        model = local.model
        flushed = False

        def flush() -> None:
            nonlocal inserted, updated, skipped, flushed
            if batch:
                result = local.store_memories(tuple(batch), given=given)
                inserted += result.inserted
                updated += result.updated
                skipped += result.skipped - result.updated
                batch.clear()
                given.clear()
                flushed = True

        def reject(number: int, reason: str) -> None:
            nonlocal rejected
            rejected += 1
            if rejected <= MAX_REPORTED_LINES:
                note(f"imprint: line {number}: rejected: {reason}")

        for number, line in enumerate(lines, start=1):
            bar.update(len(line))
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark, as some editors write
            if not line.strip():
                continue
            try:
                line = line.rstrip(b"\r\n")
                record = finalize_memory(decode_memory_input(line), now=now)
                carried = None if args.reembed else carried_vector_decoder.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                # msgspec raises UnicodeDecodeError for bad bytes inside a JSON string.
                reject(number, "not UTF-8 text" if _not_utf8(line) else str(exc))
                continue
            if carried is not None and carried.vector is not None and carried.vector_model:
                if carried.vector_model != model.fingerprint:
                    why = (f"its vector comes from another model (fingerprint {carried.vector_model}; "
                           f"{model.name} here is {model.fingerprint})")
                    if not flushed and not rejected:
                        raise ModelError(f"{args.file}: line {number}: {why}; nothing was imported. Run again with "
                                         "--reembed to embed the texts with this model instead")
                    reject(number, why + "; use --reembed")
                    continue
                try:
                    given.setdefault(given_key(record), vector_from_field(carried.vector, model.dimension))
                except ValueError as exc:
                    reject(number, str(exc))
                    continue
                reused += 1
            batch.append(record)
            if len(batch) >= IMPORT_BATCH:
                flush()
        flush()
    if rejected > MAX_REPORTED_LINES:
        note(f"imprint: … and {rejected - MAX_REPORTED_LINES} more rejected lines")
    out.result(
        {"inserted": inserted, "updated": updated, "skipped": skipped, "rejected": rejected, "vectors_reused": reused},
        f"inserted {inserted}" + (f", updated {updated} (newer texts of memories held)" if updated else "")
        + f", skipped {skipped} (already there)" + (f", rejected {rejected} lines" if rejected else "")
        + (f"; {reused} vectors from the file used as they are (same model)" if reused else ""),
    )
    return 1 if rejected else 0


def _not_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def cmd_export(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    encoder = msgspec.json.Encoder()
    write = sys.stdout.buffer.write
    if args.dataset == "memories" and args.vectors:
        from imprint.local import all_memories_with_vectors
        from imprint.messages.records import vector_to_text

        with LocalActors(settings, memories=True, facts=False) as local:
            for record, vector, model in all_memories_with_vectors(local["memory_store"]):
                # the record's object, with two more fields before its closing brace
                write(encoder.encode(record)[:-1] + b',"vector":"' + vector_to_text(vector).encode()
                      + b'","vector_model":' + encoder.encode(model) + b"}\n")
    elif args.dataset == "memories":
        with LocalActors(settings, memories=True, facts=False) as local:
            for record in all_memories(local["memory_store"]):
                write(encoder.encode(record) + b"\n")
    else:
        if args.vectors:
            raise InputError("--vectors applies to memories only (facts have no vectors)")
        with LocalActors(settings, memories=False, facts=True) as local:
            for fact in all_facts(local["fact_store"]):
                write(encoder.encode(fact.record) + b"\n")
    sys.stdout.flush()
    return 0


def cmd_forget(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    import re

    from imprint.actors.base import ask
    from imprint.commands.render import confirm
    from imprint.messages.store import (
        CountMemories,
        ForgetMemories,
        MemoryFilter,
        RetrieveMemories,
    )

    if args.ids and args.project is not None:
        raise InputError("give ids or --project, not both")
    if not args.ids and args.project is None:
        raise InputError("forget what? give memory ids, or --project P (with --source or --type to narrow it)")
    if args.project is None and (args.source is not None or args.type is not None):
        raise InputError("--source and --type narrow --project; give --project too")
    bad = [i for i in args.ids if not re.fullmatch(r"[0-9a-f]{16}", i)]
    if bad:
        raise InputError(f"not a memory id: {bad[0]!r} (16 hex digits, as search and export show)")
    with LocalActors(settings, memories=True, facts=False) as local:
        store = local["memory_store"]
        if args.ids:
            ids = tuple(dict.fromkeys(args.ids))
            found = {r.id: r for r in ask(store, RetrieveMemories(ids=ids))}
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise InputError(f"no memory with id {unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                                 + "; nothing was forgotten")
            for r in found.values():
                snippet = " ".join(r.content.split())
                out.line(f"  {r.id}  [{r.project}]  {snippet[:80] + ('…' if len(snippet) > 80 else '')}")
            request = ForgetMemories(deleted_at=time.time(), ids=ids)
            what = f"{len(ids)} memor{'y' if len(ids) == 1 else 'ies'}"
        else:
            where = MemoryFilter(project=args.project, source=args.source, type=args.type)
            count = ask(store, CountMemories(where=where))
            if not count:
                out.result({"forgotten": 0, "ids": []}, "no memories match; nothing to forget")
                return 0
            narrowed = "".join(f", {k} {v!r}" for k, v in (("source", args.source), ("type", args.type)) if v is not None)
            what = f"{count:,} memor{'y' if count == 1 else 'ies'} of project {args.project!r}{narrowed}"
            request = ForgetMemories(deleted_at=time.time(), where=where)
        confirm(f"Forget {what} here and, at the next sync, on your other machines?", yes=args.yes)
        done = ask(store, request)
    n = len(done.forgotten)
    out.result({"forgotten": n, "ids": list(done.forgotten)}, f"forgot {n} memor{'y' if n == 1 else 'ies'}")
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.base import ask
    from imprint.messages.store import EmbedTexts, SearchMemories

    if not args.query.strip():
        raise InputError("search query is empty")
    if not 1 <= args.k <= 1000:
        raise InputError("-k must be between 1 and 1000")
    with LocalActors(settings, embedder=True, facts=False) as local:
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


def cmd_reembed(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.embedder import (
        encode,
        load_model,
        precision_setting,
        resolve_precision,
    )
    from imprint.fingerprint import model_fingerprint
    from imprint.messages.store import MemoryFilter
    from imprint.storage.edge import EdgeBackend, read_meta
    from imprint.storage.reembed import recover, reembed

    wanted = precision_setting()  # a bad setting is said even when there is nothing to do
    if settings.qdrant_url:
        raise InputError("imprint reembed converts the embedded store; for a Qdrant server, export the memories "
                         "and import them into a new --workspace (import embeds them with this model)")
    path = settings.memories_path
    recover(path)
    meta = read_meta(path)
    fingerprint = model_fingerprint(settings.model)
    if meta is None:
        out.result({"reembedded": 0, "model": fingerprint}, "no memory store here: nothing to re-embed")
        return 0
    if meta.model == fingerprint:
        out.result({"reembedded": 0, "model": fingerprint},
                   f"the store is already embedded with {settings.model} ({fingerprint}): nothing to do")
        return 0
    model = load_model(settings.model)
    precision = resolve_precision(wanted)
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dim())
    probe = EdgeBackend(path)
    try:
        total = probe.count(MemoryFilter())
    finally:
        probe.close()

    def embed(texts: list[str]) -> list[list[float]]:
        return encode(model, texts, precision)

    with _progress(total=total, unit="mem", desc="reembed") as bar:
        done = reembed(path, fingerprint=fingerprint, model_name=settings.model, dimension=dimension, embed=embed,
                       progress=bar.update)
    out.result({"reembedded": done, "model": fingerprint},
               f"re-embedded {done:,} memories with {settings.model} ({fingerprint}; it was {meta.model or '?'})")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Read-only: loads no model, creates nothing, works on a data dir it may not write."""
    from imprint.actors.base import ask
    from imprint.errors import StoreError
    from imprint.fingerprint import model_fingerprint
    from imprint.identity import read_fingerprint
    from imprint.messages.store import CountFacts, DescribeStore
    from imprint.spool import read_pending, spool_path
    from imprint.storage.legacy import LegacyStore

    store_exists = bool(settings.qdrant_url) or settings.memories_path.exists()
    legacy = LegacyStore(settings.legacy_qdrant_path, settings.collection)
    old_format = not store_exists and legacy.exists()
    busy = ""
    try:
        with LocalActors(settings, memories=store_exists, facts=True, read_only=True) as local:
            store = ask(local["memory_store"], DescribeStore()) if store_exists else None
            facts = ask(local["fact_store"], CountFacts())
    except StoreError as exc:
        if "another imprint process" not in str(exc):
            raise
        busy = "the store is open in another imprint process (serve or ui); counts shown by them"
        store = None
        with LocalActors(settings, memories=False, facts=True, read_only=True) as local:
            facts = ask(local["fact_store"], CountFacts())
    model_fp = model_fingerprint(settings.model, cache_dir=settings.cache_dir, write_cache=False)
    info = {
        "data_dir": str(settings.data_dir),
        "workspace": settings.workspace,
        "workspace_exists": settings.workspace_dir.exists(),
        "device_id": read_fingerprint(settings.data_dir),
        "model": settings.model,
        "model_fingerprint": model_fp,
        "store_model_fingerprint": store.model if store else None,
        "dimension": store.dimension if store else (legacy.dimension() if old_format else None),
        "memory_store": store.location if store else (settings.qdrant_url or str(settings.memories_path)),
        "store_engine": store.kind if store else ("qdrant-client local mode (old)" if old_format else
                                                   ("server" if settings.qdrant_url else "edge")),
        "memories": store.count if store else (legacy.rows() if old_format else (None if busy else 0)),
        "facts_active": facts.active,
        "facts_ended": facts.ended,
        "waiting_in_spool": read_pending(spool_path(settings.workspace_dir)).total,
    }
    if out.json_mode:
        out.result(info)
        return 0
    shown = dict(info)
    shown["device_id"] = info["device_id"] or "none yet (created by the first sync)"
    shown["dimension"] = info["dimension"] or "-"
    if not info["workspace_exists"]:
        shown["workspace"] = f"{settings.workspace} (empty: nothing stored yet)"
    del shown["workspace_exists"]
    if old_format:
        shown["memory_store"] = (f"{settings.legacy_qdrant_path} (old format: moved to {settings.memories_path} by the "
                                 "next command that opens it)")
    if busy:
        shown["memories"] = busy
    store_fp = info["store_model_fingerprint"]
    if store_fp and store_fp != model_fp:
        shown["store_model_fingerprint"] = f"{store_fp} (DIFFERS from the model's: its vectors came from another model)"
    elif not store_fp:
        del shown["store_model_fingerprint"]
    if info["waiting_in_spool"]:
        shown["waiting_in_spool"] = (f"{info['waiting_in_spool']:,} received records, stored by the next command "
                                     "that opens the store")
    else:
        del shown["waiting_in_spool"]
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        out.line(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0
