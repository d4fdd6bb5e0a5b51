"""Imprint's own sync clients as peers, in the plaintext mode.

The fakes here speak exactly what Imprint's Python dashboard module
(`imprint/sync_ws.py`) sends, with the same library (websockets' asyncio
client) and its defaults: a keepalive ping every 20 s, the connection dropped
(1011) when no pong comes within 20 s; batches of 500 records, each memory
with a 768-float vector; the push answered with the stats as a JSON *string*;
no cap on frame size. Our side runs as the real CLI through our relay on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from imprint.messages.records import memory_id
from tests.e2e.support import (
    WAIT,
    RecordingRelay,
    Spawn,
    export,
    run,
    stats,
)

pytestmark = pytest.mark.e2e

BATCH = 500  # Imprint's clients always send 500 a batch
WORDS = ("harbour lantern ledger quarry heron copper kettle standup deploy vault garden tide staircase "
         "migration replica budget incident runbook owner release branch review cache token").split()


def original_memory(i: int, rng: random.Random, *, pad: int = 0) -> dict[str, Any]:
    """A memory record as Imprint's Python client streams it: payload fields plus its vector."""
    content = f"imprint peer memory {i}: " + " ".join(rng.choice(WORDS) for _ in range(25))
    if pad:
        content += " " + "p" * pad
    return {"id": memory_id("peer", "peer.md", content), "content": content, "project": "peer", "type": "note",
            "tags": {"lang": "en", "layer": "", "kind": "", "domain": [], "topics": []}, "source": "peer.md",
            "chunk_index": 0, "source_mtime": 0, "timestamp": 1_700_000_000.0 + i,
            "vector": [rng.uniform(-0.2, 0.2) for _ in range(768)]}  # ~15 KB of JSON


def original_fact(i: int, **changes: Any) -> dict[str, Any]:
    return {"subject": f"peer-subject-{i}", "predicate": "knows", "object": f"peer-object-{i}",
            "valid_from": 1_700_000_000.0 + i, "ended": None, "source": "", **changes}


def stream_lines(memories: list[dict[str, Any]], facts: list[dict[str, Any]]) -> list[str]:
    """meta, 500-record batches, done: `stream_export_lines` of Imprint's Python module."""
    lines = [json.dumps({"kind": "meta", "datasets": {"memories": len(memories), "facts": len(facts)}, "vectors": True},
                        separators=(",", ":"))]
    for dataset, records in (("memories", memories), ("facts", facts)):
        for seq, start in enumerate(range(0, len(records), BATCH), start=1):
            lines.append(json.dumps({"kind": "batch", "dataset": dataset, "seq": seq,
                                     "records": records[start:start + BATCH]}, separators=(",", ":")))
    lines.append(json.dumps({"kind": "done"}))
    return lines


async def read_stream(ws: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if frame.get("kind") in ("done", "error"):
            return frames


def hello(pin: str) -> str:
    return json.dumps({"method": "HELLO", "hostname": "imprint-py-host", "user": "imprint-user", "os": "linux",
                       "fingerprint": "0badc0de", "pin": pin})


#: How long the test's client waits for the push's answer. Imprint's own waits 300 s; ours
#: waits far less than our embedder needs to store 6,000 memories here, so the answer
#: must come once the push is safe, not once it is stored.
ACK_WAIT = 20.0


@pytest.mark.timeout(450)
def test_a_6000_memory_push_from_imprints_python_client_is_answered_before_it_is_stored(
        spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    """Our serve stores while the client's keepalive keeps asking: it must keep reading,
    answer the push within the client's wait, and store everything after the client left."""
    rng = random.Random(3)
    outcome: dict[str, Any] = {}
    # 12 batches of ~7.5 MB: more than the relay's and our reader's buffers hold, so a side
    # that embeds before it reads on stalls the relay's reading of the client (19 s here).
    memories = [original_memory(i, rng) for i in range(6000)]
    lines = stream_lines(memories, [original_fact(i) for i in range(3)])
    assert len(lines) == 1 + 12 + 1 + 1 and all(len(line) > 7_000_000 for line in lines[1:13])
    serve = spawn(tmp_path / "ours", "serve", "--relay", relay.url, "--plaintext", "--json")
    room = serve.next_event("room")

    def stored_so_far() -> int:
        done = [e["done"] for e in list(serve.events) if e.get("event") == "progress"
                and e.get("direction") == "store" and e.get("dataset") == "memories"]
        return max(done, default=0)

    async def client() -> dict[str, Any]:
        # websockets' defaults, as Imprint's client uses them: ping every 20 s, 20 s to answer.
        async with ws_connect(f"{relay.url}/{room['room']}?role=consumer", max_size=None) as ws:
            await ws.send(hello(room["pin"]))
            answer = json.loads(await asyncio.wait_for(ws.recv(), timeout=WAIT))
            assert answer == {"status": 200, "body": "ok"}
            await ws.send(json.dumps({"method": "GET", "path": "/sync/pull", "body": {"batch_size": BATCH}}))
            pulled = await read_stream(ws)
            assert pulled[0] == {"kind": "meta", "datasets": {"memories": 0, "facts": 0}}
            await ws.send(json.dumps({"method": "POST", "path": "/sync/push", "body": {"batch_size": BATCH}}))
            for line in lines:
                await ws.send(line)
            # Everything is written; our side is now embedding 6,000 texts. Its relay must still
            # read us, or this ping (and the keepalive's) waits behind unread batches.
            started = time.monotonic()
            await asyncio.wait_for(await ws.ping(), timeout=60)
            outcome["pong_after"] = time.monotonic() - started
            ack = json.loads(await asyncio.wait_for(ws.recv(), timeout=ACK_WAIT))
            outcome["stored_at_ack"] = stored_so_far()
            return ack  # and hang up, as Imprint's client does

    def run_client() -> None:
        try:
            outcome["ack"] = asyncio.run(client())
        except BaseException as exc:  # reported below, on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    serve.next_event("approval_required")
    serve.answer("y")
    thread.join(timeout=400)
    assert "error" not in outcome, f"{outcome.get('error')!r}\n{serve.describe()}"
    ack = outcome["ack"]
    assert outcome["pong_after"] < 2.0, f"the relay answered a ping after {outcome['pong_after']:.1f}s"

    assert ack["status"] == 200, ack
    # what can be told by id before storing: all new here
    assert ack["body"] == {"memories": {"inserted": 6000, "skipped": 0}, "facts": {"inserted": 3, "skipped": 0}}
    assert outcome["stored_at_ack"] < 6000, "the answer waited for the storing"
    assert serve.wait(timeout=300) == 0, serve.describe()  # the client left: the normal end
    assert stats(serve)["received"]["memories"]["inserted"] == 6000
    assert any("still being stored" in e.get("message", "") for e in serve.events if e["event"] == "notice")
    ours = export(tmp_path / "ours")[0]
    assert set(ours.memory_ids) == {m["id"] for m in memories}
    # Vectors are not kept from a peer in this mode: ours are made by our own model.
    assert all("vector" not in r for r in ours.memory_records)


@pytest.mark.timeout(300)
def test_join_takes_imprints_python_provider_big_frames_refused_records_and_string_stats(
    spawn: Spawn, relay: RecordingRelay, tmp_path: Path
) -> None:
    rng = random.Random(5)
    # 500 long memories with vectors in one batch: a frame of more than 50 MB, past our 32 MiB sealed cap.
    memories = [original_memory(i, rng, pad=100_000) for i in range(BATCH)]
    refused_memories = [dict(memories[0], content="   \n "), dict(memories[1], content="x" * (1024 * 1024 + 10))]
    facts = [original_fact(0), original_fact(1, object=""), original_fact(2, ended=1_700_000_500.0)]
    lines = stream_lines(memories[2:] + refused_memories, facts)
    assert len(lines[1]) > 50 * 2**20
    run(tmp_path / "ours", "add", "our own memory, to push back", "--project", "ours")
    room_id, pin = "imprintpythonprovider", "Prov1234"

    async def provider() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with ws_connect(f"{relay.url}/{room_id}?role=provider", max_size=None) as ws:
            join = spawn(tmp_path / "ours", "join", f"127.0.0.1:{relay.port}/{room_id}", "--pin", pin, "--plaintext",
                         "--json")
            got = json.loads(await asyncio.wait_for(ws.recv(), timeout=WAIT))
            assert got["method"] == "HELLO" and got["pin"] == pin
            await ws.send(json.dumps({"status": 200, "body": "ok"}))
            assert json.loads(await ws.recv())["path"] == "/sync/pull"
            for line in lines:
                await ws.send(line)
            push = json.loads(await asyncio.wait_for(ws.recv(), timeout=300))
            assert push == {"method": "POST", "path": "/sync/push", "body": {"batch_size": BATCH}}
            pushed = await read_stream(ws)
            body = {"memories": {"inserted": 1, "skipped": 0}, "facts": {"inserted": 0, "skipped": 0}}
            # Imprint's Python provider sends the stats as a JSON string.
            await ws.send(json.dumps({"status": 200, "body": json.dumps(body)}))
            return pushed, {"join": join}

    pushed, procs = asyncio.run(provider())
    join = procs["join"]
    assert join.wait() == 0, join.describe()
    result = stats(join)
    assert result["received"]["memories"] == {"inserted": BATCH - 2, "skipped": 0, "rejected": 2, "updated": 0}
    assert result["received"]["facts"] == {"inserted": 2, "skipped": 0, "rejected": 1, "ended": 0}
    assert result["sent"]["memories"] == {"sent": 1, "inserted": 1, "skipped": 0, "rejected": 0, "updated": 0}
    # Only our own memory went back; nothing of what the provider sent was echoed.
    assert [r["content"] for f in pushed if f.get("kind") == "batch" for r in f["records"]] == [
        "our own memory, to push back"]
    ours = export(tmp_path / "ours")[0]
    assert len(ours.memory_ids) == BATCH - 2 + 1
