"""The commands of `imprint`, one module per group: memories (add, import,
export, search, status), facts, sync (serve, join, sync, relay, demo), trust
and ui; `render` prints what they say. Each module registers its commands
with :class:`CommandLine`; `imprint.main` builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from imprint.errors import ConfigError

if TYPE_CHECKING:
    from imprint.commands.render import Output
    from imprint.config import Settings

Handler = Callable[[argparse.Namespace, "Settings", "Output"], int]


@dataclass
class CommandLine:
    """Where command modules add their subcommands.

    Attributes:
        sub: the top-level subparsers.
        common: the parent parser carrying the global options, so they are
            accepted after the subcommand too.
    """

    sub: Any
    common: argparse.ArgumentParser

    def command(self, name: str, handler: Handler, help_: str, **kw: Any) -> argparse.ArgumentParser:
        """A command; `description` defaults to the help line."""
        p = self.sub.add_parser(name, parents=[self.common], help=help_, description=kw.pop("description", help_), **kw)
        p.set_defaults(handler=handler)
        return p

    def group(self, name: str, help_: str, *, usage_error: str) -> Any:
        """A command with actions (`fact add`…); alone it is a usage error saying which actions exist."""

        def usage(args: argparse.Namespace, settings: Settings, out: Output) -> int:
            raise ConfigError(usage_error)

        parent = self.command(name, usage, help_)
        return parent.add_subparsers(dest=f"{name}_command", metavar="ACTION")

    def action(self, actions: Any, name: str, handler: Handler, help_: str, **kw: Any) -> argparse.ArgumentParser:
        p = actions.add_parser(name, parents=[self.common], help=help_, description=kw.pop("description", help_), **kw)
        p.set_defaults(handler=handler)
        return p


def size_type(text: str) -> int:
    """An argparse type for sizes: `2G`, `500M`, `1048576` (see imprint.spool.parse_size)."""
    from imprint.spool import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
