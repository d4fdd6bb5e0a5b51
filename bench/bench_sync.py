"""Benchmark: a first sync to an empty machine through a local relay, same model and not.

Run by hand (not a test):

    python bench/bench_sync.py                       # N = 100000 same-model, and 20000 short notes
    python bench/bench_sync.py --n 20000 --runs 1    # one size, one run

A provider data dir holds N memories with genuine vectors (embedded by imprint
itself from generated notes) and N/10 facts. It is made once with the product
and kept outside the repository (``--fixtures``, default
``~/.cache/imprint-bench``), so a run spends its time on the sync. Each run
syncs it to a new, empty data dir (`imprint relay`, `imprint serve` and
`imprint join` as real processes on 127.0.0.1, no service running before:
what a new machine's first sync pays), stopping both machines' services after.

Prints, per leg, the wall time from starting `join` until both `serve` and
`join` have exited (median of ``--runs``), what moved and at what MB/s, the
peak RSS of each side's service, and in the same run the relay's own
forwarding rate between two websocket clients (1 MiB frames). Targets (issue
"A same-model first sync at the speed of the store"): 100k same-model in
<= 20 s; sync MB/s >= 0.05 of the relay's; 20k short notes same-model >= 5x
the re-embedding leg; the receiver's peak RSS <= 1.5 GB at 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
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
MIB = 1024 * 1024


def note(i: int, rng: random.Random, *, short: bool) -> str:
    """A note of 8 to 60 words (~10 to 75 tokens), or of ~15 tokens when `short`."""
    words = 10 if short else rng.randint(8, 60)
    return f"Note {i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("IMPRINT_")}
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return out


def imprint(data_dir: Path | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "imprint"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd + list(args)


class PeakRss(threading.Thread):
    """Samples the RSS of the imprint service of a data dir (once it runs) until told to stop."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(daemon=True)
        self.data_dir = data_dir
        self.peak = 0
        self.done = threading.Event()

    def _service(self) -> psutil.Process | None:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "service" in cmd and "run" in cmd and str(self.data_dir) in cmd:
                return proc
        return None

    def run(self) -> None:
        proc = None
        while not self.done.is_set():
            try:
                proc = proc or self._service()
                if proc is not None:
                    self.peak = max(self.peak, proc.memory_info().rss)
            except psutil.Error:
                proc = None
            self.done.wait(0.05)  # the sampling interval, not synchronisation


def stop_service(data_dir: Path) -> None:
    subprocess.run(imprint(data_dir, "service", "stop"), env=env(), capture_output=True, timeout=120)


def fixture(root: Path, n: int, *, short: bool) -> Path:
    """The provider's data dir: made once with the product (`imprint import` embeds every note)."""
    kind = "short" if short else "notes"
    data = root / f"provider-{kind}-{n}"
    if (data / "ready").exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    rng = random.Random(n)
    rows = data.parent / f"{data.name}.jsonl"
    with rows.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"content": note(i, rng, short=short), "project": "bench",
                                 "source": f"bench/{i // 100}.md", "chunk_index": i % 100,
                                 "timestamp": 1.7e9 + i}) + "\n")
    print(f"making the fixture {data} ({n:,} memories, embedded here; once)…", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(imprint(data, "import", str(rows)), check=True, env=env(), stdout=subprocess.DEVNULL)
    _seed_facts(data, max(1, n // 10))  # through the CLI, one at a time, they would take minutes
    stop_service(data)
    rows.unlink()
    (data / "ready").write_text(f"{time.perf_counter() - started:.0f} s to make\n")
    return data


def _seed_facts(data: Path, count: int) -> None:
    from imprint.actors.fact_store import FactStore
    from imprint.config import Settings
    from imprint.messages.records import FactRecord
    from imprint.messages.store import StoreFacts

    stop_service(data)  # the fact store is the service's while it runs
    store = FactStore.start(path=Settings(data_dir=data).facts_path)
    try:
        records = tuple(FactRecord(subject=f"service-{i % 500}", predicate="depends_on", object=f"lib-{i}",
                                   valid_from=1.7e9 + i) for i in range(count))
        store.ask(StoreFacts(records=records), timeout=600)
    finally:
        store.stop()


def start_relay(port: int) -> subprocess.Popen:
    relay = subprocess.Popen(imprint(None, "relay", "--host", "127.0.0.1", "--port", str(port)),
                             stderr=subprocess.PIPE, text=True, env=env())
    relay.stderr.readline()  # "relay listening on …"
    return relay


def relay_rate(port: int, *, frames: int = 512, size: int = MIB) -> float:
    """MB/s the relay forwards from one websocket client to another (binary frames of `size`),
    both clients in this process on websockets' asyncio implementation (C-accelerated masking)."""
    import asyncio

    from websockets.asyncio.client import connect

    async def run() -> float:
        room = f"bench{random.randrange(10**9)}"
        url = f"ws://127.0.0.1:{port}/{room}"
        async with connect(f"{url}?role=provider", max_size=None) as provider, \
                connect(f"{url}?role=consumer", max_size=None) as consumer:
            payload = os.urandom(size)

            async def send() -> None:
                for _ in range(frames):
                    await provider.send(payload)

            async def receive() -> int:
                got = 0
                while got < frames * size:
                    got += len(await consumer.recv())
                return got

            started = time.perf_counter()
            _, got = await asyncio.gather(send(), receive())
            return got / MIB / (time.perf_counter() - started)

    return asyncio.run(run())


def loopback_bytes() -> int:
    """Bytes sent on the loopback interface so far (every hop through the relay counts twice)."""
    return psutil.net_io_counters(pernic=True)["lo"].bytes_sent


def sync(provider: Path, port: int, work: Path, *join_args: str) -> dict:
    """One first sync from `provider` to a new empty data dir: wall seconds, RSS, what moved."""
    consumer = Path(tempfile.mkdtemp(prefix="consumer-", dir=work))
    rss = {"provider": PeakRss(provider), "consumer": PeakRss(consumer)}
    for sampler in rss.values():
        sampler.start()
    serve = subprocess.Popen(imprint(provider, "serve", "--relay", f"ws://127.0.0.1:{port}", "--json"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(work / "serve.err").open("w"),
                             text=True, env=env())
    room = next(e for e in map(json.loads, serve.stdout) if e["event"] == "room")
    serve.stdin.write("y\n")
    serve.stdin.flush()
    before = loopback_bytes()
    started = time.perf_counter()
    join = subprocess.Popen(imprint(consumer, "join", room["target"], "--pin", room["pin"], "--json", *join_args),
                            stdout=subprocess.PIPE, stderr=(work / "join.err").open("w"), text=True, env=env())
    out, _ = join.communicate(timeout=3600)
    serve.communicate(timeout=600)
    elapsed = time.perf_counter() - started
    relayed = (loopback_bytes() - before) / 2  # peer → relay, relay → peer
    for sampler in rss.values():
        sampler.done.set()
        sampler.join(timeout=5)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    [stats] = [e for e in events if e["event"] == "stats"] or [None]
    moved = sum(p["done"] for p in events if p["event"] == "progress" and p["direction"] == "receive"
                and p["done"] == p["total"])
    stop_service(consumer)
    stop_service(provider)
    size = sum(f.stat().st_size for f in consumer.rglob("*") if f.is_file())
    shutil.rmtree(consumer, ignore_errors=True)
    if join.returncode or serve.returncode or stats is None:
        raise SystemExit(f"sync failed (join {join.returncode}, serve {serve.returncode}): "
                         f"{(work / 'join.err').read_text()[-800:]}")
    return {"s": elapsed, "received": stats["received"], "vectors_reused": stats.get("vectors_reused", 0),
            "records": moved, "relayed_mb": round(relayed / MIB, 1), "consumer_mb_on_disk": round(size / MIB, 1),
            "peak_rss_mb": {k: round(v.peak / MIB) for k, v in rss.items()}}


def legs(provider: Path, port: int, work: Path, runs: int, names: list[str]) -> dict[str, dict]:
    """`runs` of each leg, interleaved (same-model, re-embed, same-model…): medians."""
    args = {"same_model": (), "reembed": ("--reembed",)}
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            results[name].append(sync(provider, port, work, *args[name]))
    out = {}
    for name, runs_ in results.items():
        times = sorted(r["s"] for r in runs_)
        median = statistics.median(times)
        chosen = min(runs_, key=lambda r: abs(r["s"] - median))
        out[name] = {**chosen, "s": round(median, 1), "all_s": [round(t, 1) for t in times],
                     "sync_mb_s": round(chosen["relayed_mb"] / median, 2)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="memories of the same-model leg (default 100000)")
    parser.add_argument("--short-n", type=int, default=20_000,
                        help="short notes of the same-model vs re-embedding legs (default 20000; 0: skip)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each leg; medians are printed (default 3)")
    parser.add_argument("--fixtures", type=Path, default=Path.home() / ".cache" / "imprint-bench",
                        help="where the provider data dirs are made once and kept (outside the repository)")
    args = parser.parse_args()
    args.fixtures.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imprint-bench-sync-"))
    port = free_port()
    relay = start_relay(port)
    try:
        report: dict = {"relay_mb_s": [round(relay_rate(port), 1) for _ in range(3)]}
        relay_mb_s = statistics.median(report["relay_mb_s"])
        if args.n:
            provider = fixture(args.fixtures, args.n, short=False)
            big = legs(provider, port, work, args.runs, ["same_model"])["same_model"]
            report[f"same_model_{args.n}"] = big
            report["sync_mb_s/relay_mb_s"] = round(big["sync_mb_s"] / relay_mb_s, 3)
        if args.short_n:
            provider = fixture(args.fixtures, args.short_n, short=True)
            short = legs(provider, port, work, args.runs, ["same_model", "reembed"])
            report[f"short_{args.short_n}"] = short
            report["short: reembed_s/same_model_s"] = round(short["reembed"]["s"] / short["same_model"]["s"], 2)
        print(json.dumps(report, indent=1), flush=True)
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
