"""`imprint ingest`: a tree of files as chunked memories; binaries, big and ignored files skipped
and counted; an unchanged file costs no embedding; a changed file leaves exactly its new chunks,
here and, after a sync, on the other machine. Real processes, a real relay on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.support import RecordingRelay, Spawn, export, run, sync
from tests.agents.test_mcp import RUNBOOK_TAIL, runbook


def chunks_of(data: Path, source: str) -> list[dict]:
    return [json.loads(line) for line in run(data, "--json", "show", source).splitlines()]


@pytest.mark.timeout(600)
def test_ingest_skips_what_it_should_replaces_what_changed_and_the_other_machine_follows(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    tree, a, b = tmp_path / "notes", tmp_path / "a", tmp_path / "b"
    (tree / "runbooks").mkdir(parents=True)
    (tree / "runbooks" / "db.md").write_text(runbook())
    (tree / "todo.txt").write_text("buy milk\nrenew the TLS certificate of the relay before Friday\n")
    (tree / "tool.py").write_text("def deploy():\n    '''Deploy from the bastion only.'''\n")
    (tree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)) * 4)
    (tree / "big.log").write_text("noise " * 600_000)
    (tree / "scratch").mkdir()
    (tree / "scratch" / "tmp.md").write_text("ignored scratch notes")
    (tree / ".gitignore").write_text("scratch/\n")
    subprocess.run(["git", "init", "-q", str(tree)], check=True)

    first = json.loads(run(a, "--json", "ingest", str(tree)))
    assert first["files"] == 3 and first["skipped"] == {"binary": 1, "too large": 1}
    assert first["new"] == first["chunks"] and first["chunks"] >= 5
    db = chunks_of(a, "runbooks/db.md")
    assert [c["chunk_index"] for c in db] == list(range(len(db))) and {c["project"] for c in db} == {"notes"}
    assert run(a, "show", "runbooks/db.md").rstrip("\n") == runbook().rstrip("\n")  # whole again, in order
    hits = [json.loads(line) for line in run(a, "--json", "search", "the replica lags in the cut-over", "-k", "1")
            .splitlines()]
    assert hits[0]["source"] == "runbooks/db.md" and "warm standby" in hits[0]["content"]

    again = json.loads(run(a, "--json", "ingest", str(tree)))
    assert (again["new"], again["updated"], again["forgotten"], again["unchanged"]) == (0, 0, 0, 3)

    sync(spawn, a, b, relay.url, "y")
    assert len(chunks_of(b, "runbooks/db.md")) == len(db)

    # The runbook changes (a step goes, the end is rewritten): its chunks are exactly the new
    # text's, on A, then on B.
    changed = runbook().replace(RUNBOOK_TAIL, "Roll back with ops/rollback.sh and tell #incidents.")
    changed = changed.replace("## Step 3\n", "## Step 3 (skip on Sundays)\n")
    (tree / "runbooks" / "db.md").write_text(changed)
    third = json.loads(run(a, "--json", "ingest", str(tree)))
    assert third["new"] + third["updated"] >= 1 and third["unchanged"] == 2
    assert [c["chunk_index"] for c in chunks_of(a, "runbooks/db.md")] == list(range(len(chunks_of(a, "runbooks/db.md"))))
    assert run(a, "show", "runbooks/db.md").rstrip("\n") == changed.rstrip("\n")
    sync(spawn, a, b, relay.url, "y")
    assert run(b, "show", "runbooks/db.md").rstrip("\n") == changed.rstrip("\n")
    ea, eb = export(a, b)
    assert ea == eb and not any("warm standby" in r["content"] for r in eb.memory_records)
