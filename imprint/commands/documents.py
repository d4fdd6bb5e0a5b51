"""Documents: `imprint ingest` (files and trees as chunked memories), `imprint show` (one back whole),
and `imprint mcp` (the memory for agents)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imprint.commands import CommandLine, size_type
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import ConfigError, InputError
from imprint.service import protocol as p
from imprint.service.client import ServiceClient

#: Chunks' worth of text (bytes) sent to the service per request: the model then embeds in full batches.
INGEST_BATCH_BYTES = 64 * 1024
#: Files per request at most.
INGEST_BATCH_FILES = 64


def register(cli: CommandLine) -> None:
    a = cli.command("ingest", cmd_ingest, "store files and directories as searchable, chunked memories",
                    description="Store text files (Markdown, text, source code) as memories: each file is split into "
                                "chunks the model reads whole, with source = its path from the root given and "
                                "chunk_index 0…n-1. Directories are walked (what git ignores, hidden paths, binaries "
                                "and files over --max-size are skipped and counted). Ingesting again replaces a changed "
                                "file's chunks (the old ones are forgotten here and, at the next sync, everywhere) "
                                "and skips an unchanged one without embedding anything.")
    a.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    a.add_argument("--project", help="project of the memories (default: the name of each root directory)")
    a.add_argument("--type", default="document", help="type of the memories (default: document)")
    a.add_argument("--max-size", type=size_type, default=None, metavar="SIZE",
                   help="skip files larger than this, e.g. 4M (default 2M)")

    a = cli.command("show", cmd_show, "print a document (a source's chunks, in order) whole",
                    description="Print the document stored under SOURCE (as search, list_sources or ingest show it): "
                                "its chunks in order, each overlap said once.")
    a.add_argument("source", help="the source, e.g. docs/runbook.md")
    a.add_argument("--project", default=None, help="only the chunks of this project")
    a.add_argument("--chunks", action="store_true", help="print each chunk with its index and id instead")
    a.set_defaults(reads=True)

    a = cli.command("mcp", cmd_mcp, "serve the memory to AI agents over MCP (stdio, or --http)",
                    description="An MCP server for agent hosts (Claude Code, Cursor, Codex…): tools search, store, "
                                "delete, kg_query, kg_edit, status, list_sources and file_chunks, each a call into "
                                "this data dir's service (so any number of agents, the CLI and the dashboard share "
                                "one store). Over stdio by default (what hosts start: claude mcp add imprint -- "
                                "imprint mcp); --http [HOST:]PORT serves streamable HTTP on a loopback address.")
    a.add_argument("--http", metavar="[HOST:]PORT", default=None,
                   help="serve streamable HTTP at http://HOST:PORT/mcp instead (HOST 127.0.0.1 by default; "
                        "loopback only)")


# ---------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.chunks import join
    from imprint.messages.records import MemoryRecord

    with ServiceClient(settings) as service:
        chunks = service.call(p.SourceChunks(source=args.source, project=args.project), tuple[MemoryRecord, ...])
    if not chunks:
        raise InputError(f"no memories with source {args.source!r}"
                         + (f" in project {args.project!r}" if args.project else ""))
    if out.json_mode:
        for r in chunks:
            out.result({"id": r.id, "project": r.project, "source": r.source, "chunk_index": r.chunk_index,
                        "content": r.content})
        return 0
    if args.chunks:
        for r in chunks:
            out.line(f"--- chunk {r.chunk_index} (id {r.id}, project {r.project}) ---")
            out.line(r.content)
        return 0
    projects = {r.project for r in chunks}
    if len(projects) > 1:
        note(f"imprint: {args.source!r} is in several projects ({', '.join(sorted(projects))}); "
             "--project picks one")
    out.line(join([r.content for r in chunks]))
    return 0


# ---------------------------------------------------------------- ingest


def cmd_ingest(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from tqdm import tqdm

    from imprint.ingest import DEFAULT_MAX_BYTES, read_text, walk
    from imprint.messages.store import Document, StoredText

    max_bytes = args.max_size or DEFAULT_MAX_BYTES
    roots = [Path(p) for p in args.paths]
    for root in roots:
        if not root.exists():
            raise InputError(f"no such file or directory: {root}")
    files: list[tuple[Path, str, str]] = []  # path, source, project
    for root in roots:
        base = root if root.is_dir() else root.parent
        project = args.project or (root.resolve().name if root.is_dir() else base.resolve().name) or "default"
        for path in walk(root):
            files.append((path, path.relative_to(base).as_posix(), project))
    skipped: dict[str, int] = {}
    totals = {"files": 0, "unchanged": 0, "chunks": 0, "new": 0, "updated": 0, "forgotten": 0}
    batch: list[Document] = []
    batch_bytes = 0

    with ServiceClient(settings) as service, tqdm(total=len(files), unit="file", desc="ingest", file=sys.stderr,
                                                  disable=None, dynamic_ncols=True) as bar:
        def flush() -> None:
            nonlocal batch_bytes
            if not batch:
                return
            done = service.call(p.StoreDocuments(documents=tuple(batch), replace=True), tuple[StoredText, ...],
                                on_note=lambda text: note(f"imprint: {text}"))
            for stored in done:
                totals["files"] += 1
                totals["chunks"] += len(stored.ids)
                totals["new"] += stored.inserted
                totals["updated"] += stored.updated
                totals["forgotten"] += stored.forgotten
                totals["unchanged"] += not (stored.inserted or stored.updated or stored.forgotten)
            bar.update(len(batch))
            bar.set_postfix_str(f"{totals['chunks']:,} chunks, {totals['new']:,} new", refresh=False)
            batch.clear()
            batch_bytes = 0

        for path, source, project in files:
            text, why = read_text(path, max_bytes)
            if text is None:
                skipped[why] = skipped.get(why, 0) + 1
                bar.update(1)
                continue
            try:
                mtime = path.stat().st_mtime
            except OSError:
                mtime = 0.0
            batch.append(Document(content=text, project=project, type=args.type, source=source, source_mtime=mtime))
            batch_bytes += len(text)
            if batch_bytes >= INGEST_BATCH_BYTES or len(batch) >= INGEST_BATCH_FILES:
                flush()
        flush()
    result = {**totals, "skipped": skipped}
    why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(skipped.items()))
    out.result(result, f"ingested {totals['files']:,} files as {totals['chunks']:,} chunks ({totals['new']:,} new, "
                       f"{totals['updated']:,} updated; {totals['unchanged']:,} files unchanged; "
                       f"{totals['forgotten']:,} old chunks forgotten)" + (f"; skipped {why}" if why else ""))
    return 0


# ---------------------------------------------------------------- mcp


def cmd_mcp(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.mcp_server import build_server

    server = build_server(settings)
    try:
        if args.http is None:
            server.run("stdio")
            return 0
        import uvicorn

        host, port = _http_address(args.http)
        sock = _listen(host, port)  # bound before it is announced: a client that reads the line can connect
        note(f"imprint: MCP over streamable HTTP at http://{host}:{sock.getsockname()[1]}/mcp (Ctrl-C to stop)")
        app = server.streamable_http_app(host=host)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        return 0
    finally:
        server._imprint_memory.close()


def _listen(host: str, port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def _http_address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host if sep else "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--http {text!r}: give PORT or HOST:PORT") from None
    if not 0 < port < 65536:
        raise ConfigError("--http: the port must be between 1 and 65535")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise ConfigError(f"--http {text!r}: the MCP server listens on a loopback address only (127.0.0.1); "
                          "agents on other machines reach their own imprint, which syncs with this one")
    return host, port
