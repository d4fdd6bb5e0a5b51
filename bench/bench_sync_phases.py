"""Benchmark: sync protocol 2 phase by phase, bytes counted at the relay.

Run by hand (not a test):

    python bench/bench_sync_phases.py --n 20000            # the four phases
    python bench/bench_sync_phases.py --unchanged 10000 --unchanged 100000

Phases at N (memories and facts each; A holds them, B starts empty):

1. full sync A→B (B embeds what it receives);
2. the same sync again, nothing changed;
3. 0.5 % changed on each side (adds, forgets, fact ends), then a sync;
4. a fresh empty C syncs from A, is killed once half of what it received is
   stored, and runs again.

`--vectors N`: A imports N memory texts (embedding them: genuine vectors),
then a full sync to an empty same-model B (A's vectors travel; B embeds a
checked sample) and to an empty C with `--reembed` (C embeds everything);
memories/s of each and the embedder's own texts/s on the same texts.

Phases 1-4 seed A with random vectors under the real model's fingerprint, so
B's sample check refuses them there and B embeds everything (a `notice`).

`--unchanged N`: A and B get the same N memories and facts directly (no sync
first), then three syncs (medians printed): how an unchanged re-sync grows
with the store.

Per phase: bytes each way through the relay (an in-process relay on
127.0.0.1 with a frame hook), the reconciliation round trips (the joining
side's `reconciled` event), wall time from starting `join` to both exits,
and the sync's own time from the handshake (`peer_connected`) to the end.
Stores are filled with vectors supplied (`import` of `export --vectors`
lines), so seeding costs no embedding.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import WORDS, env, imprint  # noqa: E402  (bench/ is on sys.path)

from imprint.fingerprint import model_fingerprint  # noqa: E402
from imprint.messages.records import vector_to_text  # noqa: E402
from imprint.relay.server import RelayServer  # noqa: E402


def run(data: Path, *args: str) -> str:
    done = subprocess.run(imprint(data, *args), env=env(), capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"imprint {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def memory_lines(start: int, n: int, tag: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    fp = model_fingerprint("all-MiniLM-L6-v2")
    vectors = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [json.dumps({"content": f"{tag} note {start + i}: " + " ".join(rng.choice(WORDS) for _ in range(28)) + ".",
                        "project": "bench", "timestamp": 1_700_000_000.0 + start + i,
                        "vector": vector_to_text(vectors[i].tolist()), "vector_model": fp}) for i in range(n)]


def add_memories(data: Path, lines: list[str], work: Path) -> None:
    path = work / f"seed-{data.name}-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run(data, "import", str(path))


def add_facts(data: Path, start: int, n: int) -> None:
    from imprint.actors.fact_store import FactStore
    from imprint.config import Settings
    from imprint.messages.records import FactRecord
    from imprint.messages.store import StoreFacts

    store = FactStore.start(path=Settings(data_dir=data).prepare().facts_path)
    try:
        facts = tuple(FactRecord(subject=f"service-{i % 500}", predicate="depends_on", object=f"lib-{i}",
                                 valid_from=1.7e9 + i) for i in range(start, start + n))
        store.ask(StoreFacts(records=facts), timeout=600)
    finally:
        store.stop()


def end_facts(data: Path, count: int, seed: int) -> None:
    from imprint.actors.fact_store import FactStore
    from imprint.config import Settings
    from imprint.messages.store import EndFact, ListFacts

    store = FactStore.start(path=Settings(data_dir=data).facts_path)
    try:
        open_facts = store.ask(ListFacts(limit=10_000_000), timeout=600)
        for f in random.Random(seed).sample(list(open_facts), count):
            store.ask(EndFact(fact=f.key, ended=time.time()), timeout=60)
    finally:
        store.stop()


class Relay:
    """An in-process relay on 127.0.0.1 that counts bytes per room and sender."""

    def __init__(self) -> None:
        self.bytes: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.server = RelayServer(host="127.0.0.1", port=0, frame_hook=self._hook)
        self.url = f"ws://127.0.0.1:{self.server.start_in_thread()}"

    def _hook(self, room: str, role: str, frame: str | bytes) -> list[str | bytes]:
        with self.lock:
            self.bytes[(room, role)] += len(frame)
        return [frame]


def sync(relay: Relay, provider: Path, consumer: Path, *, kill_at_half: bool = False, join_args: tuple = ()) -> dict:
    serve = subprocess.Popen(imprint(provider, "serve", "--relay", relay.url, "--json"), env=env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    room = next(e for e in map(json.loads, serve.stdout) if e["event"] == "room")
    serve.stdin.write("y\n")
    serve.stdin.flush()
    start = time.perf_counter()
    join = subprocess.Popen(imprint(consumer, "join", f"{relay.url}/{room['room']}", "--pin", room["pin"], "--json",
                                    *join_args),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    connected = None
    events = []
    for line in join.stdout:
        event = json.loads(line)
        events.append(event)
        if event["event"] == "peer_connected":
            connected = time.perf_counter()
        if (kill_at_half and event["event"] == "progress" and event["direction"] == "store"
                and event["dataset"] == "memories" and event["done"] >= event["total"] / 2):
            join.kill()
            break
    join.wait(600)
    serve.wait(600)
    end = time.perf_counter()
    reconciled = next((e for e in events if e["event"] == "reconciled"), {})
    return {
        "bytes_to_consumer": relay.bytes[(room["room"], "provider")],
        "bytes_to_provider": relay.bytes[(room["room"], "consumer")],
        "round_trips": reconciled.get("round_trips"),
        "to_send": reconciled.get("send"), "to_receive": reconciled.get("receive"),
        "wall_s": round(end - start, 2),
        "sync_s": round(end - connected, 2) if connected else None,
        "exit": (serve.returncode, join.returncode),
        "vectors_reused": next((e.get("vectors_reused", 0) for e in events if e["event"] == "stats"), None),
        "notices": [e["message"] for e in events if e["event"] == "notice"],
    }


def total(phase: dict) -> int:
    return phase["bytes_to_consumer"] + phase["bytes_to_provider"]


def phases(n: int, work: Path, *, interrupt: bool = True) -> dict:
    relay = Relay()
    a, b, c = work / "a", work / "b", work / "c"
    add_memories(a, memory_lines(0, n, "a", 1), work)
    add_facts(a, 0, n)
    out = {"full": sync(relay, a, b)}
    out["unchanged"] = sync(relay, a, b)
    k = max(1, n // 200)  # 0.5 %
    for side, seed in ((a, 2), (b, 3)):
        add_memories(side, memory_lines(10 * n + seed * k, k, side.name, seed), work)
        ids = [json.loads(line)["id"] for line in run(side, "export").splitlines()]
        run(side, "forget", "--yes", *random.Random(seed).sample(ids, k // 2))
        end_facts(side, k // 2, seed)
    out["changed_0.5%"] = sync(relay, a, b)
    full = total(out["full"])
    out["ratios"] = {
        "unchanged/full": round(total(out["unchanged"]) / full, 5),
        "changed/full": round(total(out["changed_0.5%"]) / full, 5),
    }
    if interrupt:
        out["interrupted"] = sync(relay, a, c, kill_at_half=True)
        out["rerun"] = sync(relay, a, c)
        out["ratios"].update({
            "rerun/interrupted": round(total(out["rerun"]) / max(1, total(out["interrupted"])), 3),
            "rerun/full": round(total(out["rerun"]) / full, 3),
        })
    out["identical_after"] = run(a, "export") == run(b, "export")
    return out


def embedder_rate(texts: list[str]) -> float:
    """The embedder's own texts/s on these texts (the model imprint loads, in this process)."""
    from imprint.actors.embedder import load_model

    model = load_model("all-MiniLM-L6-v2")
    model.encode(texts[:64])  # warm
    start = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - start)


def vectors(n: int, work: Path) -> dict:
    """A full sync of N memories to a same-model peer (vectors travel, a sample is checked)
    and to one forced to re-embed (--reembed), from a store embedded by the model itself."""
    relay = Relay()
    a, same, again = work / "va", work / "vsame", work / "vreembed"
    lines = [json.dumps({k: v for k, v in json.loads(line).items() if k not in ("vector", "vector_model")})
             for line in memory_lines(0, n, "v", 9)]
    start = time.perf_counter()
    add_memories(a, lines, work)  # embedded here, by the model: genuine vectors
    seeded = time.perf_counter() - start
    out = {"seed_import_s": round(seeded, 1)}
    for name, target, extra in (("same_model", same, ()), ("reembed", again, ("--reembed",))):
        phase = sync(relay, a, target, join_args=extra)
        phase["memories_per_s"] = round(n / phase["sync_s"], 1) if phase["sync_s"] else None
        out[name] = phase
    texts = [json.loads(line)["content"] for line in lines[:2000]]
    out["embedder_texts_per_s"] = round(embedder_rate(texts), 1)
    same_rate, reembed_rate = out["same_model"]["memories_per_s"], out["reembed"]["memories_per_s"]
    out["ratios"] = {"same/reembed": round(same_rate / reembed_rate, 2) if same_rate and reembed_rate else None,
                     "reembed/embedder": round(reembed_rate / out["embedder_texts_per_s"], 2) if reembed_rate else None}
    out["identical_after"] = run(a, "export") == run(same, "export") == run(again, "export")
    return out


def unchanged(n: int, work: Path) -> dict:
    relay = Relay()
    a, b = work / f"ua{n}", work / f"ub{n}"
    lines = memory_lines(0, n, "u", 7)
    for side in (a, b):
        add_memories(side, lines, work)
        add_facts(side, 0, n)
    runs = [sync(relay, a, b) for _ in range(3)]
    out = runs[0]
    for figure in ("wall_s", "sync_s"):  # medians of three runs
        out[figure] = sorted(r[figure] for r in runs)[1]
        out[figure + "_runs"] = [r[figure] for r in runs]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", default=[], help="records per dataset for the phases")
    parser.add_argument("--unchanged", type=int, action="append", default=[], help="N for the unchanged re-sync only")
    parser.add_argument("--no-interrupt", action="store_true", help="skip phase 4 (the interrupted sync and its rerun)")
    parser.add_argument("--vectors", type=int, action="append", default=[],
                        help="N for a full sync to a same-model peer vs one forced to re-embed")
    args = parser.parse_args()
    for n in args.vectors:
        with tempfile.TemporaryDirectory(prefix="imprint-bench-vectors-") as tmp:
            print(json.dumps({"n": n, "vectors": vectors(n, Path(tmp))}), flush=True)
    if args.vectors and not args.n and not args.unchanged:
        return 0
    if not args.n and not args.unchanged:
        args.n, args.unchanged = [20_000], [10_000, 100_000]
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="imprint-bench-phases-") as tmp:
            print(json.dumps({"n": n, **phases(n, Path(tmp), interrupt=not args.no_interrupt)}), flush=True)
    for n in args.unchanged:
        with tempfile.TemporaryDirectory(prefix="imprint-bench-unchanged-") as tmp:
            print(json.dumps({"n": n, "unchanged": unchanged(n, Path(tmp))}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
