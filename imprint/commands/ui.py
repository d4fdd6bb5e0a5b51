"""`imprint ui`: the dashboard on 127.0.0.1, served by the data dir's service,
opened in a browser. It runs as long as this command does: Ctrl-C stops the
dashboard (the service, and anything else using it, lives on)."""

from __future__ import annotations

import argparse
import webbrowser
from typing import Any

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import ConfigError
from imprint.messages.events import Event, UiReady
from imprint.ui.server import DEFAULT_PORT, HOST


def register(cli: CommandLine) -> None:
    p = cli.command("ui", cmd_ui, "open the local web dashboard (memories, search, stats, facts, trust, sync)",
                    description="Serve a dashboard on http://127.0.0.1:PORT and open it in the default browser. "
                                "Sync from the page: serve with live approval, or join with a PIN. The CLI, syncs "
                                "and agents keep working on the same data dir meanwhile.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")


def cmd_ui(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.commands.chat import chat_endpoint
    from imprint.service import protocol as p
    from imprint.service.client import ServiceClient
    from imprint.sync.network import default_relay

    if not 0 < args.port < 65536:
        raise ConfigError("--port must be between 1 and 65535")
    url = f"http://{HOST}:{args.port}/"

    def ready(event: Event) -> None:
        if not isinstance(event, UiReady):
            return
        note(f"imprint: dashboard on {url} (Ctrl-C to stop)")
        out.event(UiReady(url=url))
        if not args.no_browser:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                note("imprint: no browser to open; visit the address above")

    with ServiceClient(settings) as service:
        # Ctrl-C closes the dashboard (the service lives on) and exits 130, as every command.
        service.call(p.Dashboard(port=args.port, default_relay=default_relay(), chat=chat_endpoint()), Any, on_event=ready, on_note=lambda text: note(f"imprint: {text}"))
    return 0
