"""`imprint service`: the resident process that owns a data dir's store and model.

Nobody has to run it: the first command that needs the store starts it, and it
exits by itself after IMPRINT_SERVICE_IDLE seconds (default 600) without a
client. `status` shows it, `stop` stops it, `run` is what the commands start.
"""

from __future__ import annotations

import argparse
import time

from imprint.commands import CommandLine
from imprint.commands.render import Output
from imprint.config import Settings


def register(cli: CommandLine) -> None:
    actions = cli.group("service", "the background service that keeps the store and the model (status, stop)",
                        usage_error="service needs an action: status, stop or run (see 'imprint service --help')")
    cli.action(actions, "status", cmd_service_status, "is the service running: pid, uptime, memory, model, clients, syncs")
    p = cli.action(actions, "stop", cmd_service_stop,
                   "stop the service now (syncs and dashboards it runs stop too; the next command starts it again)")
    p.add_argument("--if-idle", action="store_true", help="only if no other client (sync, dashboard, agent) uses it")
    p = cli.action(actions, "run", cmd_service_run,
                   "run the service in the foreground (commands start it by themselves; for systemd or debugging)",
                   description="Serve the data dir's store and model on DATA_DIR/imprint.sock (0600) until idle for "
                               "IMPRINT_SERVICE_IDLE seconds (default 600), 'imprint service stop', or SIGTERM. "
                               "Exits 0 at once if a service already runs for this data dir.")
    p.add_argument("--idle", type=float, default=None, metavar="SECONDS",
                   help="exit after this long without a client (default: IMPRINT_SERVICE_IDLE, else 600)")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):,.0f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def cmd_service_status(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.service import protocol as p
    from imprint.service.client import ServiceClient

    client = ServiceClient(settings, start=False)
    try:
        client.open()
    except p.ServiceError:
        out.result({"running": False, "data_dir": str(settings.data_dir)},
                   f"not running for {settings.data_dir} (the next command that needs the store starts it)")
        return 0
    with client:
        info = client.call(p.ServiceStatus(), p.ServiceInfo)
    if out.json_mode:
        import msgspec

        out.result({"running": True, **msgspec.to_builtins(info)})
        return 0
    rows = {
        "running": f"yes, pid {info.pid} (protocol {info.protocol})",
        "socket": info.socket,
        "uptime": _duration(info.uptime),
        "memory": _mib(info.rss_bytes),
        "model loaded": ", ".join(info.models_loaded) or "no (loads with the first text to embed)",
        "chat model": "loaded" if info.chat_model_loaded else "not loaded (loads with the first question)",
        "workspaces open": ", ".join(info.workspaces) or "none",
        "clients": str(max(0, info.clients - 1)) + " (besides this command)",
        "syncs running": str(info.syncs),
        "dashboards": str(info.dashboards),
        "exits when idle": f"after {_duration(info.idle_exit)} without a client",
    }
    names = {"Search": "search", "StoreDocuments": "add/ingest", "Remember": "import", "Get": "get",
             "Forget": "forget", "FactAdd": "fact add", "FactList": "fact list", "MemoryPageOf": "export page"}
    shown = [f"{names[k]} {n:,}x p50 {p50:g} ms p99 {p99:g} ms" for k, (n, p50, p99) in info.latency_ms.items()
             if k in names]
    if shown:
        rows["requests"] = "; ".join(shown)
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        out.line(f"{key:<{width}}  {value}")
    return 0


def cmd_service_stop(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.service import protocol as p
    from imprint.service.client import ServiceClient
    from imprint.service.paths import connect, socket_path

    client = ServiceClient(settings, start=False)
    try:
        client.open()
    except p.ServiceError:
        out.result({"stopped": False, "running": False}, "no service runs for this data dir")
        return 0
    with client:
        pid = client.welcome.pid if client.welcome else 0
        stopping = client.call(p.StopService(if_idle=args.if_idle), bool)
    if not stopping:
        out.result({"stopped": False, "running": True}, "the service is in use (a sync, the dashboard or an agent); "
                                                         "not stopped")
        return 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connect(socket_path(settings.data_dir), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    out.result({"stopped": True, "pid": pid}, f"stopped the imprint service (pid {pid})")
    return 0


def cmd_service_run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.service.server import run_service

    return run_service(settings.data_dir, idle=args.idle)
