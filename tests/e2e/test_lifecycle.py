"""End to end, as a person at the terminal meets it: waiting for a room nobody
serves, and stopping a sync half way with Ctrl-C or SIGTERM.

Real CLI processes through a relay on 127.0.0.1 (helpers shared with
test_e2e_sync). The interrupted syncs move 1,200 memories, enough that the
consumer is still storing when the signal comes, whatever the machine.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    WAIT,
    Cli,
    RecordingRelay,
    Spawn,
    clone,
    export,
    run,
    start_join,
    start_serve,
    stats,
    whole_batches,
    write_jsonl,
)

pytestmark = pytest.mark.e2e

MANY = 1200
BATCH = 100
WORDS = ("harbour lantern ledger quarry heron copper kettle standup deploy vault garden tide staircase "
         "migration replica budget incident runbook owner release branch review cache token").split()


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A data dir with MANY memories; and its memory ids in the order a pull streams them."""
    root = tmp_path_factory.mktemp("many")
    rng = random.Random(7)
    rows = [{"content": f"note {i}: " + " ".join(rng.choice(WORDS) for _ in range(30)), "project": "many",
             "timestamp": 1_700_000_000.0 + i} for i in range(MANY)]
    data = root / "data"
    run(data, "import", str(write_jsonl(root / "many.jsonl", rows)), timeout=300)
    ids = [json.loads(line)["id"] for line in run(data, "export").splitlines()]
    assert len(ids) == MANY
    return data, ids


def health(relay: RecordingRelay) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}/health", timeout=10) as response:
        return json.loads(response.read())


def stderr_lines(cli: Cli) -> list[str]:
    return [line.rstrip("\n") for line in cli.stderr_lines if line.strip()]


@pytest.mark.timeout(120)
def test_join_to_a_room_nobody_serves_says_so_then_gives_up(spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    started = time.monotonic()
    join = spawn(tmp_path / "b", "join", f"127.0.0.1:{relay.port}/nobodyhere", "--pin", "Ab3xY9Kq", "--timeout", "4")
    line = join.wait_stderr(r"waiting for room nobodyhere on ws://127\.0\.0\.1:\d+ to be served")
    said_at = time.monotonic() - started
    assert join.wait() == 1, join.describe()
    # Said early (within 2 s of connecting: the model load comes before), gave up after --timeout.
    assert said_at < 30, said_at
    last = stderr_lines(join)[-1]
    assert last.startswith("imprint: error: ") and "nobody served room nobodyhere" in last, join.describe()
    assert "Traceback" not in join.stderr
    assert line is not None
    # The relay let the room go when the joining side left.
    assert health(relay)["rooms"] == 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("victim", "sig", "code"), [("join", signal.SIGINT, 130), ("join", signal.SIGTERM, 143),
                                                      ("serve", signal.SIGTERM, 143)])
def test_stopping_either_side_mid_sync_is_prompt_keeps_whole_batches_and_tells_the_other(
    spawn: Spawn, relay: RecordingRelay, many: tuple[Path, list[str]], tmp_path: Path, victim: str, sig: int, code: int
) -> None:
    provider_dir = clone(many[0], tmp_path / "a")
    consumer_dir = tmp_path / "b"
    serve, room = start_serve(spawn, provider_dir, relay.url, "--batch-size", str(BATCH))
    # --reembed: the consumer embeds what arrives (same model, it would take the provider's vectors and
    # be done in a moment), so there is a "mid sync" to stop it in.
    join = start_join(spawn, consumer_dir, room, "--batch-size", str(BATCH), "--reembed")
    serve.next_event("approval_required")
    serve.answer("y")
    # Half way: the consumer has stored a batch and is embedding the next ones.
    join.next_event("progress", where=lambda e: e["direction"] == "store" and e["dataset"] == "memories" and e["done"] > 0)
    stopped, other = (join, serve) if victim == "join" else (serve, join)
    signalled = time.monotonic()
    stopped.proc.send_signal(sig)
    assert stopped.wait(timeout=30) == code, stopped.describe()
    took = time.monotonic() - signalled
    assert took < 3.0, f"{victim} took {took:.1f}s to stop"
    lines = stderr_lines(stopped)
    assert lines[-1] == ("imprint: interrupted" if code == 130 else "imprint: stopped (SIGTERM)"), stopped.describe()
    assert "Traceback" not in stopped.stderr and "still running" not in stopped.stderr, stopped.describe()

    assert other.wait() != 0, other.describe()
    reason = other.error()
    assert "the other machine stopped the sync" in reason or "peer disconnected" in reason, other.describe()

    # Only whole batches, and nothing received is lost: the data dir's service stores what the
    # spool kept, in the background (status only reads, and says what waits).
    status = json.loads(run(consumer_dir, "status", "--json"))
    assert status["memories"] < MANY, "the consumer was meant to be stopped before it had stored everything"
    assert status["memories"] % BATCH == 0  # stored batch by batch
    kept = status["memories"] + status["waiting_in_spool"]
    deadline = time.monotonic() + WAIT
    while status["waiting_in_spool"] and time.monotonic() < deadline:
        time.sleep(0.2)  # polling a figure only a status can read; bounded by WAIT
        status = json.loads(run(consumer_dir, "status", "--json"))
    assert status["waiting_in_spool"] == 0, status
    first = run(consumer_dir, "export")
    received = {json.loads(line)["id"] for line in first.splitlines()}
    assert whole_batches(received, many[1], set(), BATCH, MANY // BATCH), len(received)
    assert len(received) >= kept

    # Running it again completes it.
    serve, room = start_serve(spawn, provider_dir, relay.url, "--batch-size", str(BATCH))
    join = start_join(spawn, consumer_dir, room, "--batch-size", str(BATCH))
    serve.next_event("approval_required")
    serve.answer("y")
    assert join.wait() == 0, join.describe()
    assert serve.wait() == 0, serve.describe()
    a, b = export(provider_dir, consumer_dir)
    assert a == b and len(a.memory_ids) == MANY
    # Compared first: the rerun moved only what the consumer still lacked.
    assert stats(join)["received"]["memories"] == {"inserted": MANY - len(received), "skipped": 0, "rejected": 0, "updated": 0}


@pytest.mark.timeout(120)
def test_ctrl_c_stops_serve_even_when_its_parent_had_sigint_ignored(relay: RecordingRelay, tmp_path: Path) -> None:
    """A process started while its parent ignores SIGINT (C's system() does that while its child runs;
    a shell does it for background jobs) inherits the ignore, and Python then never raises
    KeyboardInterrupt: imprint sets Ctrl-C back, so what it started always stops."""
    import subprocess

    from tests.conftest import cli_env
    from tests.e2e.support import IMPRINT

    proc = subprocess.Popen([*IMPRINT, "--data-dir", str(tmp_path / "a"), "serve", "--relay", relay.url, "--json"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "room", first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr is not None and proc.stderr.read().strip().endswith("imprint: interrupted")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
