"""Benchmark: the resident service at 100,000 memories.

Run by hand (not a test):

    python bench/bench_service.py                # N = 100,000, a 20,000-memory sync, 60 s of load
    python bench/bench_service.py --n 10000 --sync 2000 --load 20   # a quick look

A data dir A is filled through `imprint import` with vectors supplied (as
bench_store.py does: nothing embedded). Then, same machine, same run:

- cold start to first answer: no service running, `imprint search` (starts the
  service, loads the model, searches);
- `imprint search` and `imprint add` (one short memory), each a fresh process
  against the warm service, 20 times: median and worst wall time, and the
  client's peak RSS (the service is not the client's child);
- the service's RSS with the model loaded and the store open;
- a 20,000-memory same-model sync into A alone (B, a copy of A as another
  device plus 20,000 memories of its own with this model's vectors, serves; A
  joins: only those 20,000 move), then a second one from C (made the same way)
  while 8 clients issue search and add (3 to 1, 2 requests a second each) for
  at least 60 s on their own connections to A's service and the dashboard is
  open (its stats polled every 2 s): per-request p50/p99 (round trip on the
  socket: the time in the service plus a Unix-socket hop), errors, and the
  loaded sync's time over the sync alone.

Targets: median <= 0.5 s, worst <= 1 s, client RSS <= 80 MB; 0 errors, search
p99 <= 100 ms at 100k, loaded sync <= 1.5x the sync alone; service RSS <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_store import free_port, timed, write_file  # noqa: E402  (bench/ is on sys.path)
from common import WORDS, env, imprint  # noqa: E402

from imprint.config import Settings  # noqa: E402
from imprint.relay.server import RelayServer  # noqa: E402
from imprint.service import protocol as p  # noqa: E402
from imprint.service.client import ServiceClient  # noqa: E402


def service_info(data: Path) -> dict:
    out = subprocess.run(imprint(data, "--json", "service", "status"), env=env(), capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def rss_split(pid: int) -> tuple[float, float]:
    """The service's resident memory in MB: its own (anonymous: heap, the model) and mapped files
    (the store's vectors and payloads, page cache the kernel can take back), from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kb = {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssFile", "RssShmem") if k in fields}
    return kb.get("RssAnon", 0) / 1024, (kb.get("RssFile", 0) + kb.get("RssShmem", 0)) / 1024


def import_file(data: Path, path: Path, n: int) -> float:
    wall, _, out = timed(imprint(data, "--json", "import", str(path)))
    assert json.loads(out)["vectors_reused"] == n, out
    return wall


def sync(provider: Path, consumer: Path, port: int) -> float:
    """One same-model sync: `provider` serves, `consumer` joins; wall seconds from join to its exit."""
    serve = subprocess.Popen(imprint(provider, "--json", "serve", "--relay", f"ws://127.0.0.1:{port}"), env=env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert serve.stdout is not None and serve.stdin is not None
    room = None
    for line in serve.stdout:
        event = json.loads(line)
        if event.get("event") == "room":
            room = event
            break
    if room is None:
        raise SystemExit(f"serve printed no room: {serve.stderr.read() if serve.stderr else ''}")
    serve.stdin.write("y\n")
    serve.stdin.flush()
    start = time.perf_counter()
    join = subprocess.run(imprint(consumer, "--json", "join", room["target"], "--pin", room["pin"]), env=env(),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    serve.communicate(timeout=120)
    if join.returncode != 0:
        raise SystemExit(f"join failed: {join.stderr[-2000:]}")
    stats = [json.loads(line) for line in join.stdout.splitlines() if '"stats"' in line]
    print(f"  sync: {took:.1f} s, {stats[-1]['received']['memories'] if stats else '?'}", file=sys.stderr)
    return took


class Load:
    """`clients` threads, each with its own connection to the service, issuing search and add (3 to 1)
    at `rate` requests a second each (0: as fast as answers come) until stopped."""

    def __init__(self, data: Path, clients: int, *, rate: float) -> None:
        self.settings = Settings(data_dir=data)
        self.clients = clients
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.times: dict[str, list[float]] = {"search": [], "add": []}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        from imprint.messages.records import MemoryRecord, finalize_memory
        from imprint.messages.store import SearchHit, StoreResult

        rng = random.Random(index)
        with ServiceClient(self.settings) as client:
            n = 0
            next_at = time.monotonic() + rng.random() * self.period
            while not self.stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += self.period
                n += 1
                kind = "add" if n % 4 == 0 else "search"
                text = " ".join(rng.choice(WORDS) for _ in range(8))
                start = time.perf_counter()
                try:
                    if kind == "search":
                        client.call(p.Search(query=text, k=5), tuple[SearchHit, ...])
                    else:
                        record = finalize_memory(MemoryRecord(content=f"load {index}-{n}: {text}", project="load"))
                        client.call(p.Remember(records=(record,)), StoreResult)
                except Exception as exc:  # every error counts
                    with self._lock:
                        self.errors.append(f"{kind}: {exc}")
                    continue
                with self._lock:
                    self.times[kind].append(time.perf_counter() - start)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def plain_file(path: Path, n: int, *, tag: str, seed: int) -> None:
    """`n` new short memories without vectors (the import embeds them: real vectors of the model)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            text = f"{tag} {i}: " + " ".join(rng.choice(WORDS) for _ in range(12)) + "."
            fh.write(json.dumps({"content": text, "project": tag, "timestamp": 1_750_000_000.0 + i}) + "\n")


def with_vectors(work: Path, n: int, *, tag: str, seed: int) -> Path:
    """A file of `n` new memories carrying this model's own vectors (embedded once, in a scratch data dir)."""
    scratch, plain, out = work / f"scratch-{tag}", work / f"{tag}.plain.jsonl", work / f"{tag}.jsonl"
    plain_file(plain, n, tag=tag, seed=seed)
    t = time.perf_counter()
    timed(imprint(scratch, "import", str(plain)))
    with out.open("w") as fh:
        subprocess.run(imprint(scratch, "export", "--vectors"), env=env(), stdout=fh, check=True)
    subprocess.run(imprint(scratch, "service", "stop"), env=env(), capture_output=True, check=True)
    shutil.rmtree(scratch)
    plain.unlink()
    print(f"  {n:,} memories for {tag} embedded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return out


def peer_of(a: Path, dest: Path, extra: Path, n: int) -> None:
    """A copy of A's data dir as another device, plus `n` memories of its own: a sync with A moves just those."""
    subprocess.run(imprint(a, "service", "stop"), env=env(), capture_output=True, check=True)
    shutil.copytree(a, dest, ignore=shutil.ignore_patterns("imprint.sock", "service.lock", "device_key",
                                                           "device_id.txt", "trusted_devices.json", "spool.db*"))
    import_file(dest, extra, n)


class Poller(threading.Thread):
    """The dashboard, open: its stats fetched every 2 s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.times: list[float] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/stats", timeout=60).read()
                self.times.append(time.perf_counter() - t)
            except OSError:
                self.errors += 1
            self.stop.wait(2)


def run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    a, b, c = work / "a", work / "b", work / "c"
    figures: dict[str, float] = {}
    path = work / "a.jsonl"
    t = time.perf_counter()
    write_file(path, args.n, seed=11)
    wall = import_file(a, path, args.n)
    path.unlink()
    print(f"  a: {args.n:,} memories written and imported in {time.perf_counter() - t:.1f} s (import {wall:.1f} s)",
          file=sys.stderr)
    extra_b = with_vectors(work, args.sync, tag="sync-b", seed=12)
    extra_c = with_vectors(work, args.sync, tag="sync-c", seed=13)
    peer_of(a, b, extra_b, args.sync)

    query = "which database migration broke the replica"
    figures["cold_start_first_answer_s"], _, _ = timed(imprint(a, "search", query))
    searches = [timed(imprint(a, "search", query)) for _ in range(20)]
    adds = [timed(imprint(a, "add", f"a short memory number {i} about the {random.choice(WORDS)}")) for i in range(20)]
    for name, runs in (("search", searches), ("add", adds)):
        walls = [r[0] for r in runs]
        figures[f"{name}_median_s"] = statistics.median(walls)
        figures[f"{name}_worst_s"] = max(walls)
        figures[f"{name}_client_rss_mb"] = max(r[1] for r in runs)
    info = service_info(a)
    figures["service_rss_mb"] = info["rss_bytes"] / 2**20
    figures["service_rss_anon_mb"], figures["service_rss_files_mb"] = rss_split(info["pid"])

    relay = RelayServer(host="127.0.0.1", port=0)
    port = relay.start_in_thread()
    ui_port = free_port()
    ui = None
    try:
        figures["sync_alone_s"] = sync(b, a, port)
        peer_of(a, c, extra_c, args.sync)
        ui = subprocess.Popen(imprint(a, "ui", "--no-browser", "--port", str(ui_port)), env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/status", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not come up") from None
                time.sleep(0.1)
        # The copy to C stopped the service and the dashboard started it again: load its model with a
        # search through the dashboard, which the service's request times (the figures below) leave out.
        urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/search?q=warm+up", timeout=120).read()
        poller = Poller(ui_port)
        poller.start()
        with Load(a, args.clients, rate=args.rate) as load:
            started = time.monotonic()
            figures["sync_loaded_s"] = sync(c, a, port)
            load.stop.wait(max(0.0, args.load - (time.monotonic() - started)))
        loaded_for = time.monotonic() - started
        poller.stop.set()
        poller.join(timeout=70)
        figures["sync_loaded_over_alone"] = figures["sync_loaded_s"] / figures["sync_alone_s"]
        figures["load_seconds"] = loaded_for
        for kind, values in load.times.items():
            figures[f"load_{kind}_requests"] = len(values)
            figures[f"load_{kind}_p50_ms"] = pct(values, 0.5) * 1000
            figures[f"load_{kind}_p99_ms"] = pct(values, 0.99) * 1000
        figures["load_errors"] = len(load.errors) + poller.errors
        figures["dashboard_stats_p50_ms"] = pct(poller.times, 0.5) * 1000
        if load.errors:
            print("  errors:", load.errors[:5], file=sys.stderr)
        after = service_info(a)
        figures["service_rss_after_load_mb"] = after["rss_bytes"] / 2**20
        figures["service_rss_anon_after_load_mb"], figures["service_rss_files_after_load_mb"] = rss_split(after["pid"])
        for kind, (count, p50, p99) in after.get("latency_ms", {}).items():
            if kind in ("Search", "Remember"):
                figures[f"in_service_{kind.lower()}_p50_ms"] = p50  # since the service started: the loaded phase
                figures[f"in_service_{kind.lower()}_p99_ms"] = p99
    finally:
        if ui is not None:
            ui.terminate()
            ui.wait(30)
        relay.stop()
        for data in (a, b, c):
            subprocess.run(imprint(data, "service", "stop"), env=env(), capture_output=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="memories in the store (default 100,000)")
    parser.add_argument("--sync", type=int, default=20_000, help="memories a sync brings (default 20,000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients under load (default 8)")
    parser.add_argument("--load", type=float, default=60.0, help="seconds of load at least (default 60)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="requests a second per client (default 2: an agent or a person at work; 0: flat out)")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imprint-bench-service-"))
    try:
        figures = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"n": args.n, "sync": args.sync, **{k: round(v, 3) for k, v in figures.items()}}))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:>12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
