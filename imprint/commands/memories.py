"""Memory commands: add, import, export, search, and status."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import msgspec

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import InputError
from imprint.messages.records import TAG_KEYS
from imprint.service import protocol as p
from imprint.service.client import ServiceClient

#: Records per store round trip when importing.
IMPORT_BATCH = 256
#: Bytes of records (and vectors) per round trip, well under the service's frame limit.
IMPORT_BATCH_BYTES = 8 * 1024 * 1024
#: Records per page of an export.
EXPORT_PAGE = 1000
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
    p.set_defaults(reads=True)
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
    p.set_defaults(reads=True)
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
    p.set_defaults(read_only=True)  # on a data dir that does not exist: zeros, and nothing is created


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


def _loading(text: str) -> None:
    note(f"imprint: {text}")


def cmd_add(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.records import MemoryRecord
    from imprint.messages.store import Document, StoredText

    from imprint.chunks import MAX_DOCUMENT_BYTES

    content = _read_stdin_text() if args.text == "-" else args.text
    if len(content) > MAX_DOCUMENT_BYTES // 4 and len(content.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise InputError(f"cannot add memory: the text is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    raw = {"content": content, "project": args.project, "source": args.source, "type": args.type, "tags": _parse_tags(args.tag)}
    try:
        msgspec.convert({**raw, "content": content[:1000] or content}, MemoryRecord)  # the fields, as a record has them
        document = msgspec.convert(raw, Document)
    except msgspec.ValidationError as exc:
        raise InputError(f"cannot add memory: {exc}") from None
    with ServiceClient(settings) as service:
        [done] = service.call(p.StoreDocuments(documents=(document,)), tuple[StoredText, ...], on_note=_loading)
    inserted, updated = bool(done.inserted), bool(done.updated)
    if len(done.ids) > 1:
        shown = (f"{len(done.ids)} chunks of source {done.source!r} ({done.inserted} new); "
                 f"'imprint show {done.source}' prints it whole")
    else:
        shown = done.ids[0] if inserted else f"{done.ids[0]} (updated: a newer text of this memory)" if updated else \
            f"{done.ids[0]} (already there)"
    out.result({"id": done.ids[0], "ids": list(done.ids), "source": done.source, "inserted": inserted,
                "updated": updated}, shown)
    return 0


def _read_stdin_text() -> str:
    from imprint.chunks import MAX_DOCUMENT_BYTES

    data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 4)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InputError(f"cannot add memory: the text on standard input is larger than "
                         f"{MAX_DOCUMENT_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot add memory: standard input is not UTF-8 text (bad byte at offset {exc.start})") from None


def _jsonl_lines(path: str) -> tuple[Iterator[bytes], int | None]:
    """The file's lines, and how many there are (None for standard input)."""
    if path == "-":
        return iter(sys.stdin.buffer), None
    p = Path(path)
    try:
        fh = p.open("rb")
        count = 0
        last = b"\n"
        with p.open("rb") as counting:  # a first pass, at disk speed: the bar then counts records
            while chunk := counting.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return iter(fh), count + (last != b"\n")


def plain_json_error(exc: Exception) -> str:
    """What is wrong with a JSONL line, in words a person reads (msgspec's own, reworded)."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        text = text.replace("Object missing required field", "the record has no field")
        return text.replace("Expected `object`, got", "a record is a JSON object ({…}), not")
    if "truncated" in text:
        return "not JSON: it ends before the record is complete (a missing closing brace or quote?)"
    if "malformed" in text:
        return f"not JSON ({text.replace('JSON is malformed: ', '')}): each line must be one JSON object"
    return f"not a JSON record: {text}"


def cmd_import(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    import array

    from imprint.errors import ModelError
    from imprint.messages.records import (
        carried_vector_decoder,
        content_hash,
        decode_memory_input,
        finalize_memory,
        vector_from_field,
    )
    from imprint.messages.store import ModelInfo, StoreResult

    lines, total_lines = _jsonl_lines(args.file)
    inserted = updated = skipped = rejected = reused = 0
    batch: list = []
    batch_bytes = 0
    given: dict[tuple[str, str], bytes] = {}
    now = time.time()
    number = 0
    interrupted = True
    try:
        with ServiceClient(settings) as service, _progress(total=total_lines, unit=" lines", desc="import") as bar:
            model = service.call(p.ModelOf(), ModelInfo)
            flushed = False

            def flush() -> None:
                nonlocal inserted, updated, skipped, flushed, batch_bytes
                if batch:
                    request = p.Remember(records=tuple(batch), chunk=True, given=tuple(p.Given(id=i, hash=h, vector=v)
                                                                            for (i, h), v in given.items()))
                    result = service.call(request, StoreResult, on_note=_loading)
                    inserted += result.inserted
                    updated += result.updated
                    skipped += result.skipped - result.updated
                    batch.clear()
                    given.clear()
                    batch_bytes = 0
                    flushed = True

            def reject(number: int, reason: str) -> None:
                nonlocal rejected
                rejected += 1
                if rejected <= MAX_REPORTED_LINES:
                    note(f"imprint: line {number}: rejected: {reason}")

            for number, line in enumerate(lines, start=1):
                bar.update(1)
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
                    reject(number, "not UTF-8 text" if _not_utf8(line) else plain_json_error(exc))
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
                        vector = vector_from_field(carried.vector, model.dimension)
                    except ValueError as exc:
                        reject(number, str(exc))
                        continue
                    key = (record.id, content_hash(record.content))
                    if key not in given:
                        given[key] = array.array("f", vector).tobytes()
                        batch_bytes += 4 * len(vector)
                    reused += 1
                batch.append(record)
                batch_bytes += len(line)
                if len(batch) >= IMPORT_BATCH or batch_bytes >= IMPORT_BATCH_BYTES:
                    flush()
            flush()
            interrupted = False
    finally:
        if interrupted:  # Ctrl-C or an error: say what is stored, so nobody wonders whether to start over
            note(f"imprint: stopped at line {number:,}: {inserted:,} new and {updated:,} updated memories are "
                 "stored; running the same import again skips them")
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


def _memory_pages(service: ServiceClient, *, vectors: bool) -> Iterator[Any]:
    from imprint.messages.store import MemoryPage

    after = None
    while True:
        page = service.call(p.MemoryPageOf(after=after, limit=EXPORT_PAGE, vectors=vectors), MemoryPage)
        yield page
        if page.next_after is None:
            return
        after = page.next_after


def _fact_pages(service: ServiceClient) -> Iterator[Any]:
    from imprint.messages.store import FactPage

    after = None
    while True:
        page = service.call(p.FactPageOf(after=after, limit=EXPORT_PAGE), FactPage)
        yield page
        if page.next_after is None:
            return
        after = page.next_after


def cmd_export(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    encoder = msgspec.json.Encoder()
    write = sys.stdout.buffer.write
    if args.dataset == "facts" and args.vectors:
        raise InputError("--vectors applies to memories only (facts have no vectors)")
    with ServiceClient(settings) as service:
        if args.dataset == "memories" and args.vectors:
            from imprint.messages.records import vector_to_text

            for page in _memory_pages(service, vectors=True):
                for record, vector, model in zip(page.records, page.vectors, page.models):
                    if not vector:  # a peer's vector not checked yet: the line goes without (import embeds)
                        write(encoder.encode(record) + b"\n")
                        continue
                    # the record's object, with two more fields before its closing brace
                    write(encoder.encode(record)[:-1] + b',"vector":"' + vector_to_text(vector).encode()
                          + b'","vector_model":' + encoder.encode(model) + b"}\n")
        elif args.dataset == "memories":
            for page in _memory_pages(service, vectors=False):
                write(b"".join(encoder.encode(record) + b"\n" for record in page.records))
        else:
            for page in _fact_pages(service):
                write(b"".join(encoder.encode(fact.record) + b"\n" for fact in page.facts))
    sys.stdout.flush()
    return 0


def cmd_forget(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.commands.render import confirm
    from imprint.core import check_memory_ids
    from imprint.messages.records import MemoryRecord
    from imprint.messages.store import Forgotten, MemoryFilter

    if args.ids and args.project is not None:
        raise InputError("give ids or --project, not both")
    if not args.ids and args.project is None:
        raise InputError("forget what? give memory ids, or --project P (with --source or --type to narrow it)")
    if args.project is None and (args.source is not None or args.type is not None):
        raise InputError("--source and --type narrow --project; give --project too")
    ids = check_memory_ids(args.ids)
    with ServiceClient(settings) as service:
        if ids:
            found = {r.id: r for r in service.call(p.Get(ids=ids), tuple[MemoryRecord, ...])}
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise InputError(f"no memory with id {unknown[0]}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                                 + "; nothing was forgotten")
            for r in found.values():
                snippet = " ".join(r.content.split())
                out.line(f"  {r.id}  [{r.project}]  {snippet[:80] + ('…' if len(snippet) > 80 else '')}")
            request = p.Forget(ids=ids)
            what = f"{len(ids)} memor{'y' if len(ids) == 1 else 'ies'}"
        else:
            where = MemoryFilter(project=args.project, source=args.source, type=args.type)
            count = service.call(p.Count(where=where), int)
            if not count:
                out.result({"forgotten": 0, "ids": []}, "no memories match; nothing to forget")
                return 0
            narrowed = "".join(f", {k} {v!r}" for k, v in (("source", args.source), ("type", args.type)) if v is not None)
            what = f"{count:,} memor{'y' if count == 1 else 'ies'} of project {args.project!r}{narrowed}"
            request = p.Forget(where=where)
        confirm(f"Forget {what} here and, at the next sync, on your other machines?", yes=args.yes)
        done = service.call(request, Forgotten)
    n = len(done.forgotten)
    out.result({"forgotten": n, "ids": list(done.forgotten)}, f"forgot {n} memor{'y' if n == 1 else 'ies'}")
    return 0


def cmd_search(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.messages.store import SearchHit

    if not args.query.strip():
        raise InputError("search query is empty")
    if not 1 <= args.k <= 1000:
        raise InputError("-k must be between 1 and 1000")
    with ServiceClient(settings) as service:
        hits = service.call(p.Search(query=args.query, k=args.k, project=args.project), tuple[SearchHit, ...],
                            on_note=_loading)
    if not hits:
        out.line("no memories found")
    for hit in hits:
        r = hit.record
        snippet = " ".join(r.content.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:99] + "…"
        where = f"  {r.source}#{r.chunk_index}" if r.source else ""
        out.result(
            {"id": r.id, "score": round(hit.score, 6), "content": r.content, "project": r.project, "source": r.source,
             "chunk_index": r.chunk_index},
            f"{hit.score:.3f}  {r.id}  [{r.project}]{where}  {snippet}",
        )
    return 0


def cmd_reembed(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.actors.embedder import precision_setting

    wanted = precision_setting()  # a bad setting is said even when there is nothing to do
    if settings.qdrant_url:
        raise InputError("imprint reembed converts the embedded store; for a Qdrant server, export the memories "
                         "and import them into a new --workspace (import embeds them with this model)")
    if not settings.memories_path.exists():
        out.result({"reembedded": 0}, "no memory store here: nothing to re-embed")
        return 0
    with _service_stopped(settings):
        return _reembed(settings, out, wanted=wanted)


def _reembed(settings: Settings, out: Output, *, wanted: str) -> int:
    from imprint.actors.embedder import encode, load_model, resolve_precision
    from imprint.fingerprint import model_fingerprint
    from imprint.messages.store import MemoryFilter
    from imprint.storage.edge import EdgeBackend, read_meta
    from imprint.storage.reembed import recover, reembed

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


@contextmanager
def _service_stopped(settings: Settings) -> Iterator[None]:
    """Hold the data dir while re-embedding: the service (if idle) stops first, and none starts meanwhile."""
    import fcntl

    from imprint.service.paths import lock_path

    client = ServiceClient(settings, start=False)
    try:
        client.open()
    except p.ServiceError:
        client = None
    if client is not None:
        with client:
            if not client.call(p.StopService(if_idle=True), bool):
                raise p.ServiceError("the imprint service is in use (a sync, the dashboard or an agent): run "
                                     "reembed once they are done")
        note("imprint: stopped the idle imprint service; the next command starts it again")
    deadline = time.monotonic() + 30
    with open(lock_path(settings.data_dir), "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise p.ServiceError("the imprint service did not stop within 30 s; try 'imprint service stop'") from None
                time.sleep(0.1)
        yield


def cmd_status(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Read-only: loads no model, creates nothing, works on a data dir it may not write."""
    from imprint.core import read_last_sync
    from imprint.errors import StoreError
    from imprint.fingerprint import model_fingerprint
    from imprint.identity import read_fingerprint
    from imprint.messages.store import CountFacts, DescribeStore, DescribeVectorChecks, FactCounts, VectorChecks
    from imprint.readonly import read_only_media
    from imprint.spool import read_pending, spool_path
    from imprint.storage.legacy import LegacyStore

    store_exists = bool(settings.qdrant_url) or settings.memories_path.exists()
    legacy = LegacyStore(settings.legacy_qdrant_path, settings.collection)
    old_format = not store_exists and legacy.exists()
    busy = ""
    service_info = None
    store: Any = None
    # The service holds the store while it runs: ask it (it starts none, creates nothing).
    client = ServiceClient(settings, start=False)
    try:
        client.open()
    except p.ServiceError:
        client = None
    held = None
    if client is not None:
        with client:
            service_info = client.call(p.ServiceStatus(), p.ServiceInfo)
            held = client.call(p.StoreStatus(), p.StoreStatusReply | None)
    checks = VectorChecks()
    if held is not None:
        store = held
        facts = FactCounts(active=held.facts_active, ended=held.facts_ended)
        checks = VectorChecks(waiting=held.vectors_unchecked, distrusted=held.distrusted)
        store_exists, old_format = True, False
    else:  # no service holds this workspace's store: read it here, read-only
        from imprint.actors.base import ask
        from imprint.local import LocalActors

        try:
            with LocalActors(settings, memories=store_exists, facts=True, read_only=True) as local:
                store = ask(local["memory_store"], DescribeStore()) if store_exists else None
                checks = ask(local["memory_store"], DescribeVectorChecks()) if store_exists else checks
                facts = ask(local["fact_store"], CountFacts())
        except StoreError as exc:
            if "another imprint process" not in str(exc):
                raise
            busy = "the store is open in another imprint process; counts shown by it"
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
        "last_sync": read_last_sync(settings) or None,
        "vectors_unchecked": checks.waiting,
        "vectors_distrusted_from": list(checks.distrusted),
        "service": ({"pid": service_info.pid, "uptime": round(service_info.uptime, 1),
                     "model_loaded": settings.model in service_info.models_loaded} if service_info else None),
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
    shown["service"] = (f"running (pid {service_info.pid}, model "
                        f"{'loaded' if settings.model in service_info.models_loaded else 'not loaded'}; "
                        "'imprint service status' tells more)" if service_info else "not running (the next command "
                        "that needs the store starts it)")
    if read_only_media(settings.data_dir):
        shown["service"] = "none: the data dir is read-only (search, export, show and fact list read it; nothing " \
                           "can be added or changed)"
    if not info["last_sync"]:
        shown["last_sync"] = "never (in this workspace)"
    if info["vectors_unchecked"]:
        shown["vectors_unchecked"] = (f"{info['vectors_unchecked']:,} received with their vectors, checked in the "
                                      "background when the service is idle (not sent on until then)")
    else:
        del shown["vectors_unchecked"]
    if info["vectors_distrusted_from"]:
        shown["vectors_distrusted_from"] = (", ".join(info["vectors_distrusted_from"]) + " (sent vectors that were "
                                            "not this model's: replaced; theirs are not used again)")
    else:
        del shown["vectors_distrusted_from"]
    if info["waiting_in_spool"]:
        shown["waiting_in_spool"] = (f"{info['waiting_in_spool']:,} received records, stored by the next command "
                                     "that opens the store")
    else:
        del shown["waiting_in_spool"]
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        out.line(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0
