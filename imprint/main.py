"""The `imprint` command line: the parser, and the dispatch to a command.

Global options, then one module per command group in :mod:`imprint.commands`.
Every failure a user can meet is an ImprintError: one line, exit 1 (2 for a
usage error); Ctrl-C and SIGTERM stop a command within seconds (130, 143).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from imprint.commands import CommandLine, chat, documents, facts, memories, service, sync, trash, trust, ui
from imprint.commands.render import Output, note
from imprint.config import DEFAULT_MODEL, Settings, settings_from, validate_workspace
from imprint.errors import ImprintError, InputError
from imprint.readonly import read_only_media


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("global options")
    g.add_argument("--data-dir", metavar="DIR", default=default,
                   help="data folder (env IMPRINT_DATA_DIR; default ~/.local/share/imprint)")
    g.add_argument("--workspace", metavar="NAME", default=default,
                   help="workspace: its own memory collection and facts database (env IMPRINT_WORKSPACE; default 'default')")
    g.add_argument("--model", metavar="NAME", default=default,
                   help="sentence-transformers model name or path, loaded offline (env IMPRINT_MODEL; default "
                        "all-MiniLM-L6-v2, bundled)")
    g.add_argument("--qdrant-url", metavar="URL", default=default,
                   help="use a Qdrant server instead of the embedded store (env IMPRINT_QDRANT_URL)")
    g.add_argument("--json", action="store_true", default=default,
                   help="print one JSON object per line on stdout and nothing else")
    g.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logs on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imprint",
        description="Memory layer for AI agents: memories (semantic search) and facts, synced between your machines "
                    "through a relay that never sees them.",
        epilog="Run 'imprint COMMAND --help' for a command's options. Quick start: 'imprint demo'.",
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    cli = CommandLine(sub=parser.add_subparsers(dest="command", metavar="COMMAND"), common=common)
    for group in (memories, documents, chat, facts, sync, trash, trust, ui, service):
        group.register(cli)
    return parser


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
        # Ctrl-C always stops what this command started, even when the process that started it had
        # SIGINT ignored or blocked at that moment (C's system() ignores it in the caller while its
        # child runs, and a child inherits that): Python would then never raise KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    settings: Settings | None = None
    interrupted = False
    try:
        settings = settings_from(data_dir=args.data_dir, workspace=args.workspace, model=args.model, qdrant_url=args.qdrant_url)
        if getattr(args, "reads", False) and not settings.data_dir.exists():
            # A command that only reads does not create a store where a mistyped --data-dir points.
            raise InputError(f"there is no imprint data dir at {settings.data_dir} (nothing was created there): "
                             "check --data-dir / IMPRINT_DATA_DIR; `imprint add` or `imprint import` starts one")
        if settings.model != DEFAULT_MODEL and not getattr(args, "read_only", False):
            from imprint.models import resolve_model

            resolve_model(settings.model)  # a model not on this machine fails now, before a service starts for it
        if getattr(args, "read_only", False):
            validate_workspace(settings.workspace)
        elif getattr(args, "reads", False) and read_only_media(settings.data_dir):
            # A backup on read-only media: read it here, in this process, creating nothing.
            validate_workspace(settings.workspace)
            settings = dataclasses.replace(settings, read_only=True)
            setup_logging(verbose=bool(args.verbose), log_dir=None)
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
        if "pykka" in sys.modules:  # a command that ran actors here (not a client of the service)
            from imprint.runtime import check_leftovers

            check_leftovers(interrupted=interrupted)


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
