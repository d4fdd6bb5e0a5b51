"""A full disk is one clear line, never a crash: a peer fills a data dir on a small tmpfs,
the sync stops with "disk nearly full", and afterwards every read works and nothing of the
user's changed. Real processes, a real relay on 127.0.0.1, a real (small) filesystem."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env, stop_services
from tests.e2e.support import IMPRINT, RecordingRelay, Spawn, export, run, start_join, start_serve, write_jsonl

SIZE_MB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {SIZE_MB} MB tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        stop_services(mount / "data")
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(600)
def test_a_peer_filling_the_disk_stops_the_sync_with_one_line_and_breaks_nothing(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path, small_disk: Path) -> None:
    import random

    from imprint.config import Settings
    from imprint.local import LocalActors, given_key
    from imprint.messages.records import MemoryRecord, finalize_memory

    provider, victim = tmp_path / "provider", small_disk / "data"
    # The provider holds ~64 MB of text (whole 1 MB records, as a peer that does not chunk sends them;
    # stored here through the real MemoryStore with vectors supplied, so nothing is embedded);
    # the victim's disk has 48 MB in all.
    big = tuple(finalize_memory(MemoryRecord(content=f"log dump {i}: " + " ".join(
        f"entry-{i}-{j}" for j in range(64_000)), project="logs", timestamp=1_700_000_000.0 + i)) for i in range(64))
    rng = random.Random(3)
    with LocalActors(Settings(data_dir=provider).prepare(), embedder=True) as local:
        local.store_memories(big, given={given_key(r): [rng.uniform(-1, 1) for _ in range(384)] for r in big})
    mine = [{"content": f"my own note {i}: keep the staging cluster warm", "project": "me",
             "timestamp": 1_700_000_000.0 + i} for i in range(20)]
    run(victim, "import", str(write_jsonl(tmp_path / "mine.jsonl", mine)))
    [before] = export(victim)

    serve, room = start_serve(spawn, provider, relay.url)
    join = start_join(spawn, victim, room)
    serve.next_event("approval_required")
    serve.answer("y")
    assert join.wait() != 0
    assert serve.wait() != 0
    lines = [line for line in join.stderr.splitlines() if line.startswith("imprint:")]
    assert any("disk nearly full" in line and "MB free" in line for line in lines), join.describe()
    assert "Bus error" not in join.stderr and "Traceback" not in join.stderr

    # Every read works; the user's own records are all there, unchanged.
    status = json.loads(run(victim, "--json", "status"))
    assert status["memories"] >= len(mine)
    [after] = export(victim)
    mine_before = [r for r in before.memory_records if r["project"] == "me"]
    assert [r for r in after.memory_records if r["project"] == "me"] == mine_before
    hits = run(victim, "search", "staging cluster", "-k", "3")
    assert "my own note" in hits
    # The service survived it (no SIGBUS): it still answers, and says nothing was lost.
    service = subprocess.run([*IMPRINT, "--data-dir", str(victim), "--json", "service", "status"], capture_output=True,
                             text=True, env=cli_env(), timeout=60, check=False)
    assert service.returncode == 0, service.stderr
