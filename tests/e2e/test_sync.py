"""End to end: the real `imprint` CLI in subprocesses, syncing through a relay on 127.0.0.1.

Every CLI process loads the embedding model (~6 s), so the data dirs are seeded
once per module (`templates`) and copied into each test's `tmp_path`, with the
device key removed so each copy is a new device; record counts stay small.

Waits are bounded reads of the processes' `--json` events (one reader thread per
pipe feeds a queue); nothing sleeps to synchronise. Every process a test starts
is killed in teardown if it is still running.

The in-process relay (`relay` fixture) records every frame it forwards and can
tamper with the frames of one room (`relay.tamper[room] = hook`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websocket

from imprint.protocol.channel import ChannelSetup
from tests.e2e.support import (
    BULK_BATCH,
    CONSUMER_USER,
    WAIT,
    ByteGate,
    Export,
    RecordingRelay,
    Spawn,
    approve_and_finish,
    clone,
    export,
    nth_binary_from_provider,
    run,
    run_parallel,
    start_join,
    start_serve,
    stats,
    sync,
    union_size,
    whole_batches,
    write_jsonl,
)

pytestmark = pytest.mark.e2e

# ---------------------------------------------------------------- data


SHARED_MEMORIES = [
    {"content": "e2e shared memory: the kettle in room 4 gets descaled every month", "project": "e2e",
     "source": "shared.md", "timestamp": 1_700_000_000.25},
    {"content": "e2e shared memory: standup moved to 09:45 on Wednesdays", "project": "e2e",
     "source": "shared.md", "timestamp": 1_700_000_100.5, "tags": {"lang": "en", "topics": ["meetings"]}},
]
A_MEMORIES = [
    {"content": f"e2e memory only on A #{i}: the blue heron nests by pier {i}", "project": "e2e-a",
     "source": "a.md", "chunk_index": i, "source_mtime": 1_690_000_000.0 + i}
    for i in range(4)
]
B_MEMORIES = [
    {"content": f"e2e memory only on B #{i}: the copper lantern hangs in hall {i}", "project": "e2e-b",
     "source": "b.md", "chunk_index": i}
    for i in range(3)
]
#: Bulk records for the streaming tests: 40 memories of 500 kB (20 MB), far more than the socket
#: buffers between relay and consumer hold (~7 MB here), so killing the relay really cuts the stream
#: however late the test reacts. One long "word" per record keeps the model cheap: it becomes a
#: single unknown token.
BULK_MEMORIES = [
    {"content": f"e2e bulk memory {i:03d}: the quarry ledger " + "q" * 500_000, "project": "e2e-bulk",
     "source": "bulk.md", "chunk_index": i, "timestamp": 1_650_000_000.0 + i}
    for i in range(40)
]
SHARED_FACT = ("e2e-shared-subject-walrus", "lives_in", "e2e-shared-object-arctic")
A_FACTS = [("e2e-a-subject-otter", "eats", "e2e-a-object-clams"), ("e2e-a-subject-heron", "nests_at", "e2e-a-object-pier")]
B_FACTS = [("e2e-b-subject-lantern", "made_of", "e2e-b-object-copper"), ("e2e-b-subject-hall", "has", "e2e-b-object-lantern")]


@dataclass(frozen=True)
class Templates:
    """Seeded data dirs, never synced themselves, and their exports."""

    a: Path  # shared + A's memories and facts; the shared fact is ended on A
    b: Path  # shared + B's memories and facts
    bulk: Path  # shared + the bulk memories and the shared fact
    exports: dict[str, Export]


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    root = tmp_path_factory.mktemp("templates")
    base = root / "base"
    # The one fact both sides hold: added once, then the data dir is copied.
    run(base, "fact", "add", *SHARED_FACT, "--source", "e2e")
    a, b, bulk = clone(base, root / "a"), clone(base, root / "b"), clone(base, root / "bulk")
    # Fact commands do not open the memory store, so they run next to the imports.
    run_parallel([
        (a, ("import", str(write_jsonl(root / "a.jsonl", SHARED_MEMORIES + A_MEMORIES)))),
        (b, ("import", str(write_jsonl(root / "b.jsonl", SHARED_MEMORIES + B_MEMORIES)))),
        (bulk, ("import", str(write_jsonl(root / "bulk.jsonl", SHARED_MEMORIES + BULK_MEMORIES)))),
        *[(a, ("fact", "add", *fact)) for fact in A_FACTS],
        *[(b, ("fact", "add", *fact)) for fact in B_FACTS],
        # An invalidation on A must reach B (the shared fact is row 1 in both).
        (a, ("fact", "end", "1")),
    ])
    a0, b0, bulk0 = export(a, b, bulk)
    return Templates(a=a, b=b, bulk=bulk, exports={"a": a0, "b": b0, "bulk": bulk0})


class DataDirs:
    """Fresh copies of the templates for one test (the bulk one copied on first use).

    A copy holds exactly its template's data, so `before[name]` is its export before any sync.
    """

    def __init__(self, templates: Templates, root: Path) -> None:
        self.templates = templates
        self.root = root
        self.before = templates.exports
        self.a = clone(templates.a, root / "a")
        self.b = clone(templates.b, root / "b")

    @functools.cached_property
    def bulk(self) -> Path:
        return clone(self.templates.bulk, self.root / "bulk")


@pytest.fixture
def dirs(templates: Templates, tmp_path: Path) -> DataDirs:
    return DataDirs(templates, tmp_path)


# ---------------------------------------------------------------- tests


@pytest.mark.timeout(240)
def test_sync_merges_distinct_and_overlapping_data(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    a0, b0 = dirs.before["a"], dirs.before["b"]
    assert len(a0.memory_ids) == 6 and len(b0.memory_ids) == 5 and len(a0.fact_records) == 3

    serve, join, _ = sync(spawn, dirs.a, dirs.b, relay.url, "y")

    a1, b1 = export(dirs.a, dirs.b)
    assert a1.memories == b1.memories
    assert a1.facts == b1.facts
    assert sorted(a1.memory_ids) == sorted(set(a0.memory_ids) | set(b0.memory_ids))  # the union, no duplicates
    assert len(a1.fact_records) == 5
    # The shared fact was ended on A; the invalidation reached B.
    walrus = [f for f in b1.fact_records if f["subject"] == SHARED_FACT[0]]
    assert len(walrus) == 1 and walrus[0]["ended"] is not None
    # Imported memories keep their original timestamps.
    assert {r["timestamp"] for r in b1.memory_records if r["content"] == SHARED_MEMORIES[0]["content"]} == {1_700_000_000.25}

    # Stats agree with the data: A had 4 + 2 shared memories and 2 + 1 facts, B 3 + 2 and 2 + 1.
    # The two sides compared what they hold first (protocol 2), so the shared memories did
    # not travel; the shared fact differs (ended on A) and did, and B's copy of it, now ended
    # as A's, was not sent back.
    consumer, provider = stats(join), stats(serve)
    assert [e["event"] for e in join.events].count("reconciled") == 1
    assert consumer["received"]["memories"] == {"inserted": 4, "skipped": 0, "rejected": 0, "updated": 0}
    assert consumer["received"]["facts"] == {"inserted": 2, "skipped": 1, "rejected": 0, "ended": 1}
    assert provider["received"]["memories"] == {"inserted": 3, "skipped": 0, "rejected": 0, "updated": 0}
    assert provider["received"]["facts"] == {"inserted": 2, "skipped": 0, "rejected": 0, "ended": 0}
    assert consumer["sent"] == {k: {"sent": v["inserted"] + v["skipped"], **v} for k, v in provider["received"].items()}
    # The provider hears from the consumer's last ack what became of its records.
    assert provider["sent"] == {k: {"sent": v["inserted"] + v["skipped"], **v} for k, v in consumer["received"].items()}
    # Progress reached the announced totals on the consumer's side, received and stored.
    for direction in ("receive", "store"):
        final = {e["dataset"]: e for e in join.events if e["event"] == "progress" and e["direction"] == direction}
        assert (final["memories"]["done"], final["memories"]["total"]) == (4, 4)
        assert (final["facts"]["done"], final["facts"]["total"]) == (3, 3)
    # …and the provider's "sending" bars count what the consumer confirmed.
    sent = {e["dataset"]: e for e in serve.events if e["event"] == "progress" and e["direction"] == "peer_store"}
    assert (sent["memories"]["done"], sent["memories"]["total"]) == (4, 4)
    # "y" accepts once: the device is not remembered.
    assert "auto_accepted" not in {e["event"] for e in serve.events}
    assert not (dirs.a / "trusted_devices.json").exists() or json.loads((dirs.a / "trusted_devices.json").read_text()) == []


@pytest.mark.timeout(240)
def test_relay_sees_no_pin_content_fact_host_or_user(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    serve, join, room = sync(spawn, dirs.a, dirs.b, relay.url, "y")
    # The sync went through (both sides got the other's records)…
    assert stats(join)["received"]["memories"]["inserted"] == len(A_MEMORIES)
    assert stats(serve)["received"]["memories"]["inserted"] == len(B_MEMORIES)
    peer = next(e for e in serve.events if e["event"] == "approval_required")
    assert peer["user"] == CONSUMER_USER  # what the consumer sent, as the provider shows it

    # …yet the relay saw none of it.

    frames = [frame for _, frame in relay.room_frames(room["room"])]
    binary = [f for f in frames if isinstance(f, bytes)]
    # The recorder saw the whole sync: more binary bytes than all the content that crossed.
    assert len(binary) >= 6
    contents = [m["content"] for m in SHARED_MEMORIES + A_MEMORIES + B_MEMORIES]
    assert sum(map(len, binary)) > sum(len(c) for c in contents)

    secrets = [room["pin"], CONSUMER_USER, *contents]
    secrets += [part for fact in [SHARED_FACT, *A_FACTS, *B_FACTS] for part in (fact[0], fact[2])]
    # Host names may be short ("vm"): look for them as the JSON strings a plaintext HELLO would carry.
    for host in {peer["hostname"], room["hostname"]}:
        secrets.append(host if len(host) >= 8 else json.dumps(host))
    for secret in secrets:
        needle = secret.encode("utf-8")
        for frame in frames:
            if isinstance(frame, str):
                assert secret not in frame, f"{secret!r} crossed the relay in a text frame: {frame[:200]!r}"
            else:
                assert needle not in frame, f"{secret!r} crossed the relay in a binary frame"


@pytest.mark.timeout(300)
def test_trusted_device_resyncs_without_prompt_and_inserts_nothing(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    serve, join, _ = sync(spawn, dirs.a, dirs.b, relay.url, "t")
    peer = next(e for e in serve.events if e["event"] == "approval_required")
    trusted = json.loads((dirs.a / "trusted_devices.json").read_text())
    assert [d["fingerprint"] for d in trusted] == [peer["fingerprint"]]

    serve, join, _ = sync(spawn, dirs.a, dirs.b, relay.url, None)
    auto = serve.next_event("auto_accepted", timeout=1)
    assert auto["fingerprint"] == peer["fingerprint"]
    assert "approval_required" not in {e["event"] for e in serve.events}
    consumer, provider = stats(join), stats(serve)
    for side in (consumer["received"], provider["received"], consumer["sent"]):
        assert side["memories"]["inserted"] == 0 and side["facts"]["inserted"] == 0, (consumer, provider)
    union = union_size(dirs.before["a"], dirs.before["b"])
    # Both hold the same: comparing says so, and no record crosses either way.
    [reconciled] = [e for e in join.events if e["event"] == "reconciled"]
    assert reconciled["send"] == reconciled["receive"] == {"memories": 0, "facts": 0, "forgotten": 0}
    assert reconciled["round_trips"] == 1
    assert consumer["received"]["memories"]["skipped"] == 0
    assert consumer["sent"]["memories"]["sent"] == provider["received"]["memories"]["skipped"] == 0
    a2, b2 = export(dirs.a, dirs.b)
    assert a2 == b2 and len(a2.memory_ids) == union and len(a2.fact_records) == 5


@pytest.mark.timeout(240)
def test_the_verification_code_is_shown_before_the_question_on_both_sides(spawn: Spawn, relay: RecordingRelay,
                                                                         dirs: DataDirs) -> None:
    serve, room = start_serve(spawn, dirs.a, relay.url)
    join = start_join(spawn, dirs.b, room)
    waiting = join.next_event("waiting", where=lambda e: e["for"] == "approval")
    code = re.search(r"Verification code ([0-9a-f-]+):", waiting["message"]).group(1)
    asked = serve.next_event("approval_required")
    assert asked["verification"] == code
    # The terminal prompt: the code with the device, and what to compare, before the question.
    deadline = time.monotonic() + WAIT
    while not any("shows this same code" in line for line in serve.stderr_lines):
        assert serve._stderr.get(timeout=max(0.1, deadline - time.monotonic())) is not None, serve.describe()
    serve.answer("y")
    assert serve.wait() == 0 and join.wait() == 0, (serve.describe(), join.describe())
    prompt = serve.stderr
    assert prompt.index(f"verification code: {code}") < prompt.index("Allow?"), prompt
    assert next(e for e in serve.events if e["event"] == "peer_connected")["verification"] == code


@pytest.mark.timeout(240)
def test_wrong_pin_is_refused_and_burns_the_session(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    serve, room = start_serve(spawn, dirs.a, relay.url)
    pin = room["pin"]
    wrong = ("B" if pin[0] == "A" else "A") + pin[1:]
    join = start_join(spawn, dirs.b, room, pin=wrong)

    assert join.wait() != 0, join.describe()
    assert serve.wait() != 0, serve.describe()
    assert re.search(r"PIN|key confirmation", join.error()), join.describe()
    assert "wrong PIN" in serve.error(), serve.describe()
    assert "approval_required" not in {e["event"] for e in serve.events}
    assert not {"stats", "peer_connected"} & {e["event"] for e in serve.events + join.events}
    assert export(dirs.a, dirs.b) == [dirs.before["a"], dirs.before["b"]]
    # Neither PIN crossed the relay.
    for _, frame in relay.room_frames(room["room"]):
        data = frame.encode() if isinstance(frame, str) else frame
        assert pin.encode() not in data and wrong.encode() not in data


@pytest.mark.timeout(240)
def test_rejection_transfers_nothing(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs, tmp_path: Path) -> None:
    # "n" typed at the prompt, and end of input (Ctrl-D, or a closed pipe): both reject. Run at once.
    pairs = {"n": (dirs.a, dirs.b), "eof": (clone(dirs.templates.a, tmp_path / "a-eof"), clone(dirs.templates.b, tmp_path / "b-eof"))}
    runs = {}
    for how, (provider, consumer) in pairs.items():
        serve, room = start_serve(spawn, provider, relay.url)
        runs[how] = (serve, start_join(spawn, consumer, room))
    for how, (serve, _) in runs.items():
        serve.next_event("approval_required")
        if how == "n":
            serve.answer("n")
        else:
            assert serve.proc.stdin is not None
            serve.proc.stdin.close()

    for how, (serve, join) in runs.items():
        both = f"{how}:\n{serve.describe()}\n{join.describe()}"
        assert serve.wait() != 0, both
        assert join.wait() != 0, both
        assert "reject" in serve.error(), both
        assert "reject" in join.error(), both
        assert not {"stats", "peer_connected"} & {e["event"] for e in serve.events + join.events}, both
    after = export(*pairs["n"], *pairs["eof"])
    assert after == [dirs.before["a"], dirs.before["b"]] * 2
    for provider, _ in pairs.values():
        trust = provider / "trusted_devices.json"
        assert not trust.exists() or json.loads(trust.read_text()) == []


@pytest.mark.timeout(300)
def test_tampered_or_dropped_frame_ends_both_sides_and_stores_nothing_from_it(
    spawn: Spawn, relay: RecordingRelay, dirs: DataDirs, tmp_path: Path
) -> None:
    # The provider's big binary frames are its batches (each bulk memory is 500 KB); the small ones
    # before them answer the HELLO and the reconciliation (how many depends on the data) and announce.
    bad_frame, batches_before = 2, 1
    bulk0, b0 = dirs.before["bulk"], dirs.before["b"]
    consumers = {"flip": dirs.b, "drop": clone(dirs.templates.b, tmp_path / "b-drop")}
    providers = {"flip": dirs.bulk, "drop": clone(dirs.templates.bulk, tmp_path / "bulk-drop")}
    runs = {}
    for action in ("flip", "drop"):  # both at once, each in its own room
        serve, room = start_serve(spawn, providers[action], relay.url, "--batch-size", str(BULK_BATCH))
        relay.tamper[room["room"]] = nth_binary_from_provider(bad_frame, action, min_bytes=100_000)
        runs[action] = (serve, room)
    joins = {action: start_join(spawn, consumers[action], room, "--batch-size", str(BULK_BATCH))
             for action, (_, room) in runs.items()}
    for action, (serve, _) in runs.items():
        serve.next_event("approval_required")
        serve.answer("y")

    for action, (serve, room) in runs.items():
        join = joins[action]
        both = f"{action}:\n{serve.describe()}\n{join.describe()}"
        assert join.wait() != 0, both
        assert serve.wait() != 0, both
        assert re.search(r"tamper|altered|dropped|replayed|reordered|authenticat", join.error(), re.IGNORECASE), both
        # The consumer's channel is dead after the bad frame, so it cannot tell the provider why;
        # the provider sees its peer leave mid-sync.
        assert re.search(r"disconnected|connection|peer", serve.error(), re.IGNORECASE), both
        assert not any(e["event"] == "stats" for e in serve.events + join.events), both

    after = export(providers["flip"], consumers["flip"], providers["drop"], consumers["drop"])
    for action, (provider_after, consumer_after) in zip(("flip", "drop"), (after[:2], after[2:])):
        # The provider got nothing: the consumer never reached its push.
        assert provider_after == bulk0, action
        # The consumer kept at most the whole batch before the bad frame, nothing from it or after it.
        new = set(consumer_after.memory_ids) - set(b0.memory_ids)
        assert whole_batches(new, bulk0.memory_ids, set(b0.memory_ids), BULK_BATCH, batches_before), (action, len(new))
        assert len(consumer_after.memory_ids) == len(set(consumer_after.memory_ids)), action
        assert consumer_after.facts == b0.facts, action


@pytest.mark.timeout(300)
def test_relay_killed_mid_stream_then_rerun_completes(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    bulk0, b0 = dirs.before["bulk"], dirs.before["b"]
    relay_proc = spawn(None, "relay", "--host", "127.0.0.1", "--port", "0")
    url = relay_proc.wait_stderr(r"relay listening on (ws://127\.0\.0\.1:\d+)").group(1)
    # Peers reach the relay through a gate that lets each of them receive 4 MB, then holds
    # the rest: the consumer spools what it receives at once, so without the gate it could
    # have the whole 20 MB before the kill.
    gate = ByteGate(int(url.rsplit(":", 1)[1]), limit=4 << 20)
    try:
        serve, room = start_serve(spawn, dirs.bulk, gate.url, "--batch-size", "2")
        join = start_join(spawn, dirs.b, room, "--batch-size", "2")
        serve.next_event("approval_required")
        serve.answer("y")
        assert gate.held.wait(WAIT), join.describe()
        join.next_event("progress", where=lambda e: e["direction"] == "store" and e["dataset"] == "memories" and e["done"] > 0)
        relay_proc.kill()
        assert join.wait() != 0, join.describe()
        assert serve.wait() != 0, serve.describe()
    finally:
        gate.close()
    for side in (join, serve):
        assert re.search(r"relay|connection", side.error(), re.IGNORECASE), side.describe()
    bulk1, b1 = export(dirs.bulk, dirs.b)
    assert bulk1 == bulk0  # the consumer never got to push
    new = set(b1.memory_ids) - set(b0.memory_ids)
    assert len(new) < len(set(bulk0.memory_ids) - set(b0.memory_ids)), "the stream was not cut"
    # Having compared first, the provider streamed only what B lacked, in its store's order.
    stream = [i for i in bulk0.memory_ids if i not in set(b0.memory_ids)]
    assert whole_batches(new, stream, set(), 2, len(stream))

    sync(spawn, dirs.bulk, dirs.b, relay.url, "y", "--batch-size", "50")
    bulk2, b2 = export(dirs.bulk, dirs.b)
    assert bulk2.memories == b2.memories and bulk2.facts == b2.facts
    assert len(b2.memory_ids) == len(set(b2.memory_ids)) == union_size(bulk0, b0)
    assert len(b2.fact_records) == len({(f["subject"], f["predicate"], f["object"], f["valid_from"]) for f in b2.fact_records}) == 3


@pytest.mark.timeout(300)
def test_a_waiting_serve_outlives_a_relay_restart_and_the_peer_joins_with_the_same_pin(
        spawn: Spawn, tmp_path: Path) -> None:
    """A rolling restart closes a room in which nothing has moved yet with 1012. The serve waiting
    in it opens the room again by itself (the relay restarted on its port, as systemd does), so the
    room and PIN the user passed on still work; a join that had spoken would be told to rerun."""
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def start_relay() -> Any:
        relay = spawn(None, "relay", "--host", "127.0.0.1", "--port", str(port))
        relay.wait_stderr(r"relay listening on ws://127\.0\.0\.1:")
        return relay

    a, b = tmp_path / "a", tmp_path / "b"
    records = [{"content": f"restart memory {n}: the room outlived its relay", "project": "restart"} for n in range(4)]
    run(a, "import", str(write_jsonl(tmp_path / "a.jsonl", records)))
    first = start_relay()
    serve, room = start_serve(spawn, a, f"ws://127.0.0.1:{port}", "--yes")
    first.proc.send_signal(signal.SIGTERM)  # nothing under way: the waiting room closes, the relay exits
    assert first.wait() == 0, first.describe()
    assert serve.proc.poll() is None, serve.describe()
    start_relay()  # the same port, as a restart
    approve_and_finish(serve, start_join(spawn, b, room, "--yes"), b, {r["content"] for r in records})


# ---------------------------------------------------------------- plaintext interop


def spec_memory(content: str, *, project: str, source: str, timestamp: float) -> dict[str, Any]:
    """A memory record exactly as the original sends it (SPEC "Records"), with its SPEC id."""
    key = f"{project}:{source}:{content.strip()[:200]}"
    return {
        "id": hashlib.sha256(key.encode("utf-8")).hexdigest()[:16],
        "content": content,
        "project": project,
        "type": "note",
        "tags": {"lang": "en", "layer": "", "kind": "", "domain": ["e2e"], "topics": []},
        "source": source,
        "chunk_index": 0,
        "source_mtime": 1_600_000_000.0,
        "timestamp": timestamp,
        "vector": [0.25, -0.5, 0.125],  # the original may send one; we must ignore it
    }


ORIGINAL_MEMORIES = [
    spec_memory("e2e original peer memory: the lighthouse keeper logs fog at dawn", project="orig", source="o.md",
                timestamp=1_710_000_000.0),
    spec_memory("e2e original peer memory: tide tables live in the top drawer", project="orig", source="o.md",
                timestamp=1_710_000_001.0),
]
ORIGINAL_FACT = {"subject": "e2e-orig-subject-lighthouse", "predicate": "stands_on", "object": "e2e-orig-object-cliff",
                 "valid_from": 1_710_000_002.5, "ended": None, "source": "orig"}


def ws_json(ws: websocket.WebSocket) -> dict[str, Any]:
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got opcode {opcode}"
    return json.loads(data.decode("utf-8"))


def original_hello(pin: str) -> dict[str, Any]:
    return {"method": "HELLO", "hostname": "original-host", "user": "original-user", "os": "Linux",
            "fingerprint": "0badc0de", "pin": pin}


@pytest.mark.timeout(240)
def test_plaintext_serve_interoperates_with_a_spec_consumer(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    a0 = dirs.before["a"]
    serve, room = start_serve(spawn, dirs.a, relay.url, "--plaintext")
    assert room["mode"] == "plaintext"
    ws = websocket.create_connection(f"{relay.url}/{room['room']}?role=consumer", timeout=WAIT)
    try:
        ws.send(json.dumps(original_hello(room["pin"])))
        asked = serve.next_event("approval_required")
        assert (asked["hostname"], asked["user"], asked["fingerprint"]) == ("original-host", "original-user", "0badc0de")
        serve.answer("y")
        assert ws_json(ws) == {"status": 200, "body": "ok"}

        ws.send(json.dumps({"method": "GET", "path": "/sync/pull", "body": {"batch_size": 500}}))
        meta = ws_json(ws)
        assert meta == {"kind": "meta", "datasets": {"memories": 6, "facts": 3}}
        pulled: dict[str, list[dict[str, Any]]] = {"memories": [], "facts": []}
        seqs: dict[str, list[int]] = {"memories": [], "facts": []}
        while (frame := ws_json(ws))["kind"] == "batch":
            pulled[frame["dataset"]] += frame["records"]
            seqs[frame["dataset"]].append(frame["seq"])
        assert frame == {"kind": "done"}
        assert seqs == {"memories": [1], "facts": [1]}

        ws.send(json.dumps({"method": "POST", "path": "/sync/push", "body": {"batch_size": 500}}))
        ws.send(json.dumps({"kind": "meta", "datasets": {"memories": 2, "facts": 1}, "vectors": True}))
        ws.send(json.dumps({"kind": "batch", "dataset": "memories", "seq": 1, "records": ORIGINAL_MEMORIES}))
        ws.send(json.dumps({"kind": "batch", "dataset": "facts", "seq": 1, "records": [ORIGINAL_FACT]}))
        ws.send(json.dumps({"kind": "done"}))
        assert ws_json(ws) == {"status": 200, "body": {"memories": {"inserted": 2, "skipped": 0},
                                                       "facts": {"inserted": 1, "skipped": 0}}}
    finally:
        ws.close()
    assert serve.wait() == 0, serve.describe()

    # What the SPEC peer received is exactly the provider's data.
    assert pulled["memories"] == a0.memory_records
    assert pulled["facts"] == a0.fact_records
    a1 = export(dirs.a)[0]
    by_id = {r["id"]: r for r in a1.memory_records}
    for sent in ORIGINAL_MEMORIES:
        stored = by_id[sent["id"]]  # same SPEC id on both implementations
        assert stored == {k: v for k, v in sent.items() if k != "vector"}
    assert ORIGINAL_FACT in a1.fact_records
    # Positive control for the recording relay: in plaintext the PIN and the data are visible.
    text = "".join(f for _, f in relay.room_frames(room["room"]) if isinstance(f, str))
    assert room["pin"] in text and ORIGINAL_MEMORIES[0]["content"] in text


@pytest.mark.timeout(240)
def test_plaintext_join_interoperates_with_a_spec_provider(spawn: Spawn, relay: RecordingRelay, dirs: DataDirs) -> None:
    b0 = dirs.before["b"]
    room_id, pin = "e2eoriginalroom", "Orig1234"
    provider = websocket.create_connection(f"{relay.url}/{room_id}?role=provider", timeout=WAIT)
    try:
        join = spawn(dirs.b, "join", f"127.0.0.1:{relay.port}/{room_id}", "--pin", pin, "--plaintext", "--json")
        hello = ws_json(provider)
        assert hello["method"] == "HELLO" and hello["pin"] == pin
        assert set(hello) == {"method", "hostname", "user", "os", "fingerprint", "pin"}  # exactly SPEC's HELLO
        provider.send(json.dumps({"status": 200, "body": "ok"}))
        assert ws_json(provider) == {"method": "GET", "path": "/sync/pull", "body": {"batch_size": 500}}
        provider.send(json.dumps({"kind": "meta", "datasets": {"memories": 2, "facts": 1}, "vectors": True}))
        provider.send(json.dumps({"kind": "batch", "dataset": "memories", "seq": 1, "records": ORIGINAL_MEMORIES}))
        provider.send(json.dumps({"kind": "batch", "dataset": "facts", "seq": 1, "records": [ORIGINAL_FACT]}))
        provider.send(json.dumps({"kind": "done"}))
        assert ws_json(provider) == {"method": "POST", "path": "/sync/push", "body": {"batch_size": 500}}
        meta = ws_json(provider)
        # What the provider just sent is not echoed back: B's own 5 memories and 3 facts.
        assert meta == {"kind": "meta", "datasets": {"memories": 5, "facts": 3}}
        pushed: list[dict[str, Any]] = []
        while (frame := ws_json(provider))["kind"] == "batch":
            pushed += frame["records"] if frame["dataset"] == "memories" else []
        assert frame == {"kind": "done"}
        provider.send(json.dumps({"status": 200, "body": {"memories": {"inserted": 5, "skipped": 2},
                                                          "facts": {"inserted": 3, "skipped": 1}}}))
        assert join.wait() == 0, join.describe()
    finally:
        provider.close()
    result = stats(join)
    assert result["received"]["memories"] == {"inserted": 2, "skipped": 0, "rejected": 0, "updated": 0}
    assert result["sent"]["memories"] == {"sent": 5, "inserted": 5, "skipped": 2, "rejected": 0, "updated": 0}
    b1 = export(dirs.b)[0]
    assert {r["id"] for r in ORIGINAL_MEMORIES} <= set(b1.memory_ids)
    assert ORIGINAL_FACT in b1.fact_records
    assert set(b1.memory_ids) == set(b0.memory_ids) | {r["id"] for r in ORIGINAL_MEMORIES}
    assert {r["id"] for r in pushed} == set(b0.memory_ids)
    assert "WARNING" in join.stderr and "--plaintext" in join.stderr


@pytest.mark.timeout(240)
def test_modes_refuse_each_other_clearly(spawn: Spawn, relay: RecordingRelay, tmp_path: Path) -> None:
    encrypted, room_e = start_serve(spawn, tmp_path / "enc", relay.url)
    plaintext, room_p = start_serve(spawn, tmp_path / "plain", relay.url, "--plaintext")

    # A default (encrypted) provider refuses the original's plaintext HELLO, naming --plaintext.
    ws = websocket.create_connection(f"{relay.url}/{room_e['room']}?role=consumer", timeout=WAIT)
    try:
        ws.send(json.dumps(original_hello(room_e["pin"])))
        refusal = ws_json(ws)
    finally:
        ws.close()
    assert refusal["status"] == 400 and "--plaintext" in refusal["body"], refusal
    assert encrypted.wait() != 0, encrypted.describe()
    assert "--plaintext" in encrypted.error(), encrypted.describe()

    # A --plaintext provider answers our encrypted handshake with SPEC's 400.
    ws = websocket.create_connection(f"{relay.url}/{room_p['room']}?role=consumer", timeout=WAIT)
    try:
        ws.send(ChannelSetup(pin=room_p["pin"], room=room_p["room"], role="consumer").start().decode())
        refusal = ws_json(ws)
    finally:
        ws.close()
    assert refusal["status"] == 400 and "--plaintext" in refusal["body"], refusal
    assert plaintext.wait() != 0, plaintext.describe()
    assert "--plaintext" in plaintext.error(), plaintext.describe()
    for cli in (encrypted, plaintext):
        assert not {"approval_required", "peer_connected", "stats"} & {e["event"] for e in cli.events}


@pytest.mark.timeout(240)
def test_demo_ends_with_identical_exports(spawn: Spawn, tmp_path: Path) -> None:
    demo = spawn(tmp_path, "demo", "--json")
    assert demo.wait() == 0, demo.describe()
    result = demo.events[-1]
    assert result["event"] == "demo" and result["identical"] is True, demo.describe()
    assert (result["memories"], result["facts"]) == (8, 3)
    # The data dir's memory was empty: it now holds the demo's memories, for the dashboard and the chat.
    assert "the demo's 8 memories are now in it" in demo.stderr
    kept = [json.loads(line) for line in run(tmp_path, "export").splitlines()]
    assert len(kept) == 8 and {m["project"] for m in kept} == {"demo"}
    # The numbers a person reads are right: one memory and one fact were on both machines.
    provider, consumer = (next(e for e in demo.events if e["event"] == "stats" and e["role"] == role)
                          for role in ("provider", "consumer"))
    assert consumer["received"]["memories"] == {"inserted": 4, "skipped": 1, "rejected": 0, "updated": 1}
    # The shared fact is the same record on both (compared first, it did not travel); the shared
    # memory was added at different times on each: only the earlier copy travelled, and replaced B's.
    assert consumer["received"]["facts"] == {"inserted": 1, "skipped": 0, "rejected": 0, "ended": 0}
    # What B had just received from A is not counted as "already there" on A.
    assert provider["received"]["memories"] == {"inserted": 3, "skipped": 0, "rejected": 0, "updated": 0}
    assert provider["sent"]["memories"] == {"sent": 5, "inserted": 4, "skipped": 1, "rejected": 0, "updated": 1}
    # The compare line says what will move, and it moves: "to send 3" on B, not the 4 that differ
    # (B's older copy of the shared memory loses to A's and travels nowhere).
    moved = sorted([provider["sent"]["memories"]["sent"], consumer["sent"]["memories"]["sent"]])
    reconciled = [e for e in demo.events if e["event"] == "reconciled"]
    assert sorted(r["send"]["memories"] for r in reconciled) == moved == [3, 5]
    assert sorted(r["receive"]["memories"] for r in reconciled) == moved
    assert sorted(r["send"]["facts"] for r in reconciled) == [provider["sent"]["facts"]["sent"],
                                                              consumer["sent"]["facts"]["sent"]]
