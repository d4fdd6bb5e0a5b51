"""`imprint ui`: serve the dashboard on 127.0.0.1 and open it in a browser."""

from __future__ import annotations

import argparse
import threading
import webbrowser
from typing import Any, Callable

from imprint.cli_output import Output, note
from imprint.config import Settings
from imprint.errors import ConfigError

DEFAULT_PORT = 8765
HOST = "127.0.0.1"


def cmd_ui(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    import uvicorn

    from imprint.ui.app import create_app

    if not 0 < args.port < 65536:
        raise ConfigError("--port must be between 1 and 65535")
    url = f"http://{HOST}:{args.port}/"
    app = create_app(settings)
    config = uvicorn.Config(app, host=HOST, port=args.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    def announce() -> None:
        # Runs once uvicorn has bound the port and the actors have started.
        note(f"imprint: dashboard on {url} (Ctrl-C to stop)")
        out.result({"event": "ui", "url": url})
        if not args.no_browser:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                note("imprint: no browser to open; visit the address above")

    def watch() -> None:
        while not server.started and not server.should_exit:
            ready.wait(0.2)
        if server.started:
            announce()

    ready = threading.Event()
    opener = threading.Thread(target=watch, name="ui-announce", daemon=True)
    opener.start()
    note("imprint: starting the dashboard (loading the model)…")
    try:
        server.run()
    finally:
        ready.set()
        opener.join(timeout=5)
    if not server.started:
        raise ConfigError(f"could not serve the dashboard on {HOST}:{args.port} (port in use?)")
    return 0


def add_ui_command(sub: Any, common: argparse.ArgumentParser, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("ui", cmd_ui, "open the local web dashboard (memories, search, stats, facts, trust, sync)",
                description="Serve a dashboard on http://127.0.0.1:PORT and open it in the default browser. "
                            "Sync from the page: serve with live approval, or join with a PIN.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
