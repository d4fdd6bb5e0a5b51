"""Benchmark: a full sync of N memories + N facts through a local relay.

Run by hand (not a test):

    python bench/bench_sync.py            # N = 2000 and 20000
    python bench/bench_sync.py --n 2000   # one size

For each N: a provider data dir holds N memories (embedded there by the
model: genuine vectors) and N facts; two empty consumers sync from it in
turn, one running the same model (the provider's vectors travel, a checked
sample is embedded) and one with `--reembed` (everything embedded where it
arrives, as between peers with different models). `imprint relay`, `imprint
serve` and `imprint join` run as real processes on 127.0.0.1. Prints, per
leg, end-to-end memories/s (join start → both exited) and peak RSS (sampled
every 50 ms); the Embedder's own texts/s on the same texts in this run; and
the issue's ratios: same-model / re-embedding (target >= 5) and
re-embedding / embedder (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

WORDS = (
    "deploy cluster database replica schema migration token cache queue worker agent memory embedding vector "
    "relay session review release branch merge config secret rotate backup restore latency budget owner "
    "incident runbook alert metric dashboard service api client server network storage index search"
).split()


def text(i: int, rng: random.Random) -> str:
    """A memory of 8 to 60 words (about 10 to 75 tokens): real notes vary in length."""
    return f"Note {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) + "."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRss(threading.Thread):
    """Samples a process's RSS (children included) until it exits."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(proc.pid)
        self.peak = 0

    def run(self) -> None:
        while True:
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            time.sleep(0.05)  # sampling interval, not synchronisation


def imprint(*args: str, data_dir: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "imprint"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd + list(args)


def seed(data_dir: Path, n: int, rng: random.Random) -> list[str]:
    texts = [text(i, rng) for i in range(n)]
    src = data_dir.parent / f"{data_dir.name}-seed.jsonl"
    with src.open("w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"content": t, "project": "bench", "source": f"bench/{i // 100}.md", "chunk_index": i % 100}) + "\n")
    subprocess.run(imprint("import", str(src), data_dir=data_dir), check=True, stdout=subprocess.DEVNULL)
    from imprint.actors.fact_store import FactStore
    from imprint.config import Settings
    from imprint.messages.records import FactRecord
    from imprint.messages.store import StoreFacts

    settings = Settings(data_dir=data_dir)
    store = FactStore.start(path=settings.facts_path)
    try:
        facts = tuple(
            FactRecord(subject=f"service-{i % 500}", predicate="depends_on", object=f"lib-{i}", valid_from=1.7e9 + i)
            for i in range(n)
        )
        store.ask(StoreFacts(records=facts), timeout=300)
    finally:
        store.stop()
    return texts


def embedder_rate(texts: list[str]) -> tuple[float, str]:
    """The Embedder's own texts/s on these texts, as imprint runs it (its batch size and
    the precision it picks on this CPU), and that precision."""
    from imprint.actors.embedder import (
        encode,
        load_model,
        precision_setting,
        resolve_precision,
    )

    model = load_model("all-MiniLM-L6-v2")
    precision = resolve_precision(precision_setting())
    sample = texts[: min(len(texts), 2000)]
    encode(model, sample[:64], precision)  # warm
    start = time.perf_counter()
    encode(model, sample, precision)
    return len(sample) / (time.perf_counter() - start), precision


def start_relay(port: int) -> tuple[subprocess.Popen, PeakRss]:
    relay = subprocess.Popen(imprint("relay", "--host", "127.0.0.1", "--port", str(port)), stderr=subprocess.PIPE, text=True)
    rss = PeakRss(relay)
    rss.start()
    relay.stderr.readline()  # "relay listening on …"
    return relay, rss


def sync(a: Path, b: Path, port: int, tmp: Path, *join_args: str) -> dict:
    """One full sync A → B through the relay on `port`: seconds, peak RSS, what B says."""
    serve = subprocess.Popen(
        imprint("serve", "--relay", f"ws://127.0.0.1:{port}", "--json", data_dir=a),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp / "serve.err").open("w"), text=True,
    )
    serve_rss = PeakRss(serve)
    serve_rss.start()
    room = next(e for e in map(json.loads, serve.stdout) if e["event"] == "room")
    serve.stdin.write("y\n")
    serve.stdin.flush()
    start = time.perf_counter()
    join = subprocess.Popen(
        imprint("join", f"ws://127.0.0.1:{port}/{room['room']}", "--pin", room["pin"], "--json", *join_args,
                data_dir=b),
        stdout=subprocess.PIPE, stderr=(tmp / "join.err").open("w"), text=True,
    )
    join_rss = PeakRss(join)
    join_rss.start()
    out, _ = join.communicate(timeout=3600)
    serve.wait(timeout=120)
    elapsed = time.perf_counter() - start
    events = [json.loads(line) for line in out.splitlines()]
    stats = [e for e in events if e["event"] == "stats"]
    errors = {}
    for side in ("serve", "join"):
        lines = [line for line in (tmp / f"{side}.err").read_text().splitlines() if "error" in line.lower()]
        if lines:
            errors[side] = lines[-1][-300:]
    for t in (serve_rss, join_rss):
        t.join(timeout=5)
    return {
        "join_exit": join.returncode,
        "serve_exit": serve.returncode,
        "sync_s": round(elapsed, 1),
        "peak_rss_mb": {"provider": round(serve_rss.peak / 2**20), "consumer": round(join_rss.peak / 2**20)},
        "consumer_received": stats[0]["received"] if stats else None,
        "vectors_reused": stats[0].get("vectors_reused", 0) if stats else None,
        "notices": [e["message"] for e in events if e["event"] == "notice"],
        "errors": errors,
    }


def run(n: int) -> dict:
    """Seed A with N memories (embedded there) and N facts, then a full sync to an empty
    same-model B (A's vectors travel, B checks a sample) and to an empty C that
    re-embeds everything (`--reembed`, as a peer with another model would)."""
    rng = random.Random(n)
    with tempfile.TemporaryDirectory(prefix="imprint-bench-") as tmp:
        work = Path(tmp)
        a = work / "provider"
        t0 = time.perf_counter()
        texts = seed(a, n, rng)
        seed_s = time.perf_counter() - t0
        port = free_port()
        relay, relay_rss = start_relay(port)
        legs = {"same_model": sync(a, work / "same", port, work),
                "reembed": sync(a, work / "reembed", port, work, "--reembed")}
        relay.terminate()
        relay.wait(timeout=30)
        relay_rss.join(timeout=5)
        rate, precision = embedder_rate(texts)
        for leg in legs.values():
            leg["memories_per_s"] = round(n / leg["sync_s"], 1)
        same, again = legs["same_model"]["memories_per_s"], legs["reembed"]["memories_per_s"]
        return {
            "n": n,
            "seed_s": round(seed_s, 1),
            **legs,
            "relay_peak_rss_mb": round(relay_rss.peak / 2**20),
            "embedder_texts_per_s": round(rate, 1),
            "embedder_precision": precision,
            "same/reembed": round(same / again, 2),
            "reembed/embedder": round(again / rate, 2),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="records per dataset (repeatable; default 2000 and 20000)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for n in args.n or [2000, 20000]:
        print(json.dumps(run(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
