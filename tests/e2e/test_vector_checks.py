"""A peer's vectors are used at once and checked in full in the background: one planted
vector is replaced, its peer is distrusted, and until checked no vector
of it leaves the machine. Real processes, a real relay on 127.0.0.1, the real model."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, stop_services
from tests.e2e.support import (
    CONSUMER_USER,
    IMPRINT,
    RecordingRelay,
    Spawn,
    run,
    start_serve,
    stats,
    sync,
    write_jsonl,
)
from tests.e2e.test_sync_v2 import cosine, vectors_of

N = 300
QUERY = "how do we deploy?"


def imprint(data: Path, *args: str, **env: str) -> str:
    done = subprocess.run([*IMPRINT, "--data-dir", str(data), *args], capture_output=True, text=True,
                          env=cli_env(**env), timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def status(data: Path) -> dict:
    return json.loads(imprint(data, "--json", "status"))


@pytest.mark.timeout(900)
def test_a_planted_vector_is_replaced_in_the_background_and_never_forwarded(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    good, liar, scratch = tmp_path / "good", tmp_path / "liar", tmp_path / "scratch"
    rows = [{"content": f"inventory note {i}: shelf {i % 37} holds {i % 11} boxes of part {i}", "project": "inv",
             "timestamp": 1_700_000_000.0 + i} for i in range(N)]
    run(good, "import", str(write_jsonl(tmp_path / "rows.jsonl", rows)))
    honest = vectors_of(good)
    run(scratch, "add", QUERY)
    [query_line] = run(scratch, "export", "--vectors").splitlines()
    query_vector = json.loads(query_line)["vector"]

    # The liar: the same model's vectors for all, but one memory carries the query's vector.
    lines = [json.loads(line) for line in run(good, "export", "--vectors").splitlines()]
    planted = lines[N // 2]
    planted["vector"] = query_vector
    run(liar, "import", str(write_jsonl(tmp_path / "poisoned.jsonl", lines)))

    # The victim takes the liar's vectors at once; its background check waits (a busy service, say).
    victim = tmp_path / "victim"
    serve, room = start_serve(spawn, liar, relay.url)
    join = spawn(victim, "join", room["target"], "--pin", room["pin"], "--json",
                 env=cli_env(IMPRINT_VERIFY_IDLE="3600", USER=CONSUMER_USER))
    serve.next_event("approval_required")
    serve.answer("y")
    assert join.wait() == 0 and serve.wait() == 0, join.describe()
    waiting = status(victim)["vectors_unchecked"]
    assert waiting == stats(join)["vectors_reused"] == N  # nothing was embedded on the way in

    # Not checked yet: none of those vectors leaves the victim (a third machine embeds them itself).
    third = tmp_path / "third"
    serve, join, _ = sync(spawn, victim, third, relay.url, "y")
    assert stats(join)["received"]["memories"]["inserted"] == N and stats(join)["vectors_reused"] <= N - waiting
    assert cosine(vectors_of(third)[planted["id"]], honest[planted["id"]]) > 0.999
    exported = [json.loads(line) for line in run(victim, "export", "--vectors").splitlines()]
    assert sum("vector" in r for r in exported) == N - waiting  # an export carries only checked vectors

    # Quiet: the service checks them all, replaces the planted one and distrusts its sender.
    stop_services(victim)
    imprint(victim, "fact", "list", IMPRINT_VERIFY_IDLE="0")  # starts the service, impatient this time
    deadline = time.monotonic() + 300
    while (now := status(victim))["vectors_unchecked"] and time.monotonic() < deadline:
        time.sleep(0.5)  # the check runs in the service; its only outward sign is this count
    assert now["vectors_unchecked"] == 0, now
    liar_id = status(liar)["device_id"]
    assert now["vectors_distrusted_from"] == [liar_id]
    fixed = vectors_of(victim)
    assert cosine(fixed[planted["id"]], honest[planted["id"]]) > 0.999
    assert all(cosine(fixed[k], v) > 0.999 for k, v in honest.items())
    top = run(victim, "--json", "search", QUERY, "-k", "1")
    assert json.loads(top.splitlines()[0])["score"] < 0.9  # the planted memory no longer answers it
    log = (victim / "logs" / "service.err").read_text()
    assert f"device {liar_id} sent 1 vector(s) that differ" in log
