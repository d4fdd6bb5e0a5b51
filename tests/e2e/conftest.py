"""Fixtures of the end-to-end tests: `spawn` runs the CLI, `relay` records and tampers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.e2e.support import Cli, RecordingRelay, Spawn


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """`spawn(data_dir, *args, env=None)` starts `imprint [--data-dir D] ARGS`; teardown kills leftovers."""
    started: list[Cli] = []

    def start(data_dir: Path | None, *args: str, env: dict[str, str] | None = None) -> Cli:
        prefix = ["--data-dir", str(data_dir)] if data_dir is not None else []
        cli = Cli([*prefix, *args], env=env or cli_env())
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.kill()



@pytest.fixture
def relay() -> Iterator[RecordingRelay]:
    r = RecordingRelay()
    try:
        yield r
    finally:
        r.server.stop()


