"""Trust commands: trust list, trust remove."""

from __future__ import annotations

import argparse
import time

from imprint.commands import CommandLine
from imprint.commands.render import Output
from imprint.config import Settings
from imprint.errors import ConfigError
from imprint.text import clip
from imprint.trust import TrustList


def register(cli: CommandLine) -> None:
    actions = cli.group("trust", "list or remove trusted devices",
                        usage_error="trust needs an action: list or remove (see 'imprint trust --help')")
    cli.action(actions, "list", cmd_trust_list, "show trusted devices")
    p = cli.action(actions, "remove", cmd_trust_remove, "forget a trusted device")
    p.add_argument("fingerprint", metavar="FP", help="the device's 8-hex id")


def cmd_trust_list(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    devices = TrustList(settings.trust_path).load()
    if not devices:
        out.line("no trusted devices")
    for d in devices:
        try:
            added = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.added)) if d.added else "?"
        except (OverflowError, ValueError, OSError):
            added = "?"  # a hand-edited file
        out.result({"fingerprint": d.fingerprint, "hostname": d.hostname, "added": d.added, "public_key": d.public_key},
                   f"{clip(d.fingerprint, 16)}  {clip(d.hostname, 64):<24} added {added}"
                   f"{'' if d.public_key else '  (no key: plaintext peer)'}")
    return 0


def cmd_trust_remove(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    if not TrustList(settings.trust_path).remove(args.fingerprint.lower()):
        raise ConfigError(f"{args.fingerprint} is not on the trust list (see 'imprint trust list')")
    out.result({"removed": args.fingerprint.lower()}, f"removed {args.fingerprint.lower()}")
    return 0


