"""Benchmark: the reconciliation machine alone, bytes and round trips per case.

Run by hand (not a test):

    python bench/bench_reconcile.py

Two Reconcilers talk directly (no sockets). Per case it prints the round
trips, the bytes of the packed wire form (what crosses inside the seal) and,
for comparison, of the same messages as MessagePack, and bytes per
difference. The "phase" case has the shape of bench_sync_phases.py's 0.5 %
change at N = 20,000: 20k memory items (25 bytes) and 20k fact items, each
side adding 100 memories, forgetting 50 and ending 50 facts.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imprint.protocol.items import FACT, FORGOTTEN_MEMORY, MEMORY, item  # noqa: E402
from imprint.protocol.reconcile import Reconciler, pack  # noqa: E402


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mem(i: int) -> bytes:
    return item(MEMORY, h(f"m{i}"), 1.7e9 + i, h(f"c{i}"))


def fact(i: int, end: float = 0.0) -> bytes:
    return item(FACT, h(f"f{i}"), end)


def phase_sets(n: int) -> tuple[set[bytes], set[bytes]]:
    base = {mem(i) for i in range(n)} | {fact(i) for i in range(n)}
    sides = []
    for seed in (2, 3):
        side = set(base) | {mem(10 * n + seed * 1000 + j) for j in range(100)}
        rng = random.Random(seed)
        for i in rng.sample(range(n), 50):
            side.discard(mem(i))
            side.add(item(FORGOTTEN_MEMORY, h(f"m{i}"), 1.8e9))
        for i in rng.sample(range(n), 50):
            side.discard(fact(i))
            side.add(fact(i, 1.8e9))
        sides.append(side)
    return sides[0], sides[1]


def differing(n: int, d: int) -> tuple[set[bytes], set[bytes]]:
    base = {mem(i) for i in range(n)}
    gone = set(random.Random(1).sample(sorted(base), d // 2))
    return base, (base - gone) | {mem(n + i) for i in range(d - d // 2)}


def converse(a_items: set[bytes], b_items: set[bytes]) -> dict:
    started = time.perf_counter()
    a, b = Reconciler(a_items, initiator=True), Reconciler(b_items, initiator=False)
    msgpack = msgspec.msgpack.Encoder()
    packed = generic = trips = 0
    message = a.initiate()
    while message is not None:
        trips += 1
        packed += len(pack(message))
        generic += len(msgpack.encode(message))
        answer = b.receive(message)
        packed += len(pack(answer))
        generic += len(msgpack.encode(answer))
        message = a.receive(answer)
    d = len(a.have) + len(a.need)
    assert sorted(a.have) == sorted(a_items - b_items) and sorted(a.need) == sorted(b_items - a_items)
    return {"differences": d, "round_trips": trips, "packed_bytes": packed, "msgpack_bytes": generic,
            "packed_per_difference": round(packed / max(d, 1)), "seconds": round(time.perf_counter() - started, 2)}


def main() -> int:
    cases = {
        "phase 0.5% of 20k+20k": phase_sets(20_000),
        "8k, 120 differ": differing(8_000, 120),
        "40k, 600 differ": differing(40_000, 600),
        "100k, 1 differs": differing(100_000, 1),
    }
    for name, (a, b) in cases.items():
        print(f"{name:24s} {converse(a, b)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
