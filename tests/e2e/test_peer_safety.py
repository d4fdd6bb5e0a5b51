"""A peer cannot wipe your memory in one sync: a big forget asks first (and without a
terminal to ask on, forgets nothing), what a peer made you forget waits in the trash,
and restoring it wins everywhere at the next sync. Real processes, a real relay on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.e2e.support import (
    IMPRINT,
    RecordingRelay,
    Spawn,
    export,
    run,
    stats,
    sync,
    write_jsonl,
)

N = 150


@pytest.mark.timeout(600)
def test_a_wiped_peer_asks_first_goes_to_the_trash_and_is_restored_everywhere(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [{"content": f"runbook step {i}: restart shard {i} after draining it", "project": "ops",
             "timestamp": 1_700_000_000.0 + i} for i in range(N)]
    run(a, "import", str(write_jsonl(tmp_path / "a.jsonl", rows)))
    sync(spawn, a, b, relay.url, "y")
    assert len(export(b)[0].memory_ids) == N

    # B's user (or whoever holds B) forgets everything; B then syncs with A.
    run(b, "forget", "--project", "ops", "--yes")
    serve, join, _ = sync(spawn, b, a, relay.url, "y")
    kept = stats(join)
    assert (kept["forgotten"], kept["forgets_kept"]) == (0, N)  # no terminal to ask on: nothing forgotten
    assert any(e["event"] == "forget_confirm_required" and e["count"] == N for e in join.events)
    assert len(export(a)[0].memory_ids) == N

    # Said yes to (--yes): forgotten here, kept in the trash, marked with B's fingerprint.
    serve, join, _ = sync(spawn, b, a, relay.url, "y", "--yes")
    assert stats(join)["forgotten"] == N
    assert export(a)[0].memory_ids == []
    b_fingerprint = json.loads(run(b, "--json", "status"))["device_id"]
    trash = [json.loads(line) for line in run(a, "--json", "trash").splitlines()]
    assert len(trash) == N and {t["peer"] for t in trash} == {b_fingerprint}
    assert {t["record"]["content"] for t in trash} == {r["content"] for r in rows}
    assert len(run(a, "--json", "trash", "--peer", b_fingerprint[:8]).splitlines()) == N
    assert run(a, "--json", "trash", "--peer", "ffff" if not b_fingerprint.startswith("ffff") else "eeee") == ""

    # Restored: newer copies, which win here and, at the next sync, on B too.
    restored = json.loads(run(a, "--json", "trash", "restore", "--peer", b_fingerprint))
    assert restored == {"memories": N, "facts": 0}
    assert run(a, "--json", "trash") == ""
    gone = subprocess.run([*IMPRINT, "--data-dir", str(a), "trash", "restore", "m1"], capture_output=True, text=True,
                          env=cli_env(), timeout=60, check=False)
    assert gone.returncode == 1 and "nothing in the trash is m1" in gone.stderr
    assert len(export(a)[0].memory_ids) == N
    sync(spawn, a, b, relay.url, "y")
    ea, eb = export(a, b)
    assert ea == eb and {r["content"] for r in ea.memory_records} == {r["content"] for r in rows}


@pytest.mark.timeout(600)
def test_fact_list_in_a_loop_during_a_20000_fact_sync_does_not_break_it(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    import subprocess
    import threading

    from imprint.actors.base import ask
    from imprint.config import Settings
    from imprint.local import LocalActors
    from imprint.messages.records import FactRecord
    from imprint.messages.store import StoreFacts
    from tests.conftest import cli_env
    from tests.e2e.support import IMPRINT, start_join, start_serve

    provider, consumer = tmp_path / "p", tmp_path / "c"
    with LocalActors(Settings(data_dir=provider).prepare(), memories=False) as local:  # the real FactStore
        ask(local["fact_store"], StoreFacts(records=tuple(
            FactRecord(subject=f"service-{i}", predicate="owned_by", object=f"team-{i % 97}", valid_from=1e9 + i)
            for i in range(20_000))), timeout=120)
    run(consumer, "fact", "add", "me", "uses", "imprint")

    serve, room = start_serve(spawn, provider, relay.url)
    join = start_join(spawn, consumer, room)
    serve.next_event("approval_required")
    serve.answer("y")
    listed: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            done = subprocess.run([*IMPRINT, "--data-dir", str(consumer), "fact", "list"], capture_output=True,
                                  env=cli_env(), timeout=60, check=False, stdin=subprocess.DEVNULL)
            listed.append(done.returncode)

    looper = threading.Thread(target=loop, daemon=True)
    looper.start()
    try:
        assert join.wait(timeout=300) == 0, join.describe()
        assert serve.wait() == 0, serve.describe()
    finally:
        stop.set()
        looper.join(timeout=90)
    assert listed and set(listed) == {0}  # every `fact list` during the sync answered
    assert stats(join)["received"]["facts"]["inserted"] == 20_000
    assert len(export(consumer)[0].fact_records) == 20_001
