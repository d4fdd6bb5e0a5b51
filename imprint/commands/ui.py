"""`imprint ui`: serve the dashboard on 127.0.0.1 and open it in a browser."""

from __future__ import annotations

import argparse
import socket
import threading
import webbrowser

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import ConfigError, ImprintError
from imprint.messages.events import UiReady

DEFAULT_PORT = 8765
HOST = "127.0.0.1"


def register(cli: CommandLine) -> None:
    p = cli.command("ui", cmd_ui, "open the local web dashboard (memories, search, stats, facts, trust, sync)",
                    description="Serve a dashboard on http://127.0.0.1:PORT and open it in the default browser. "
                                "Sync from the page: serve with live approval, or join with a PIN.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _bind(port: int) -> socket.socket:
    """Bind the dashboard's port before anything else starts, so a busy port is one clear line."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ImprintError(
            f"cannot serve the dashboard on {HOST}:{port}: {exc.strerror or exc} "
            "(is another 'imprint ui' running? pick another --port)"
        ) from None
    return sock


def cmd_ui(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    import uvicorn

    from imprint.actors.embedder import WarmUp
    from imprint.local import LocalActors
    from imprint.ui.app import create_app

    if not 0 < args.port < 65536:
        raise ConfigError("--port must be between 1 and 65535")
    url = f"http://{HOST}:{args.port}/"
    sock = _bind(args.port)
    try:
        note("imprint: starting the dashboard…")
        # Opened here, not in the app's startup: a data dir held by another
        # process is then one line from the CLI, not a server traceback.
        with LocalActors(settings, embedder=True) as local:
            local["embedder"].tell(WarmUp())  # in the background: the first search then need not wait
            app = create_app(settings, local=local)
            config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3)
            server = uvicorn.Server(config)

            def announce() -> None:
                while not server.started and not server.should_exit:
                    ready.wait(0.2)
                if not server.started:
                    return
                note(f"imprint: dashboard on {url} (Ctrl-C to stop)")
                out.event(UiReady(url=url))
                if not args.no_browser:
                    try:
                        webbrowser.open(url)
                    except webbrowser.Error:
                        note("imprint: no browser to open; visit the address above")

            ready = threading.Event()
            opener = threading.Thread(target=announce, name="ui-announce", daemon=True)
            opener.start()
            try:
                server.run(sockets=[sock])
            finally:
                ready.set()
                opener.join(timeout=5)
    finally:
        sock.close()
    return 0
