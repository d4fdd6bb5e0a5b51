"""Benchmark: the memory store at 10k and 100k memories.

Run by hand (not a test):

    python bench/bench_store.py                 # N = 10,000 and 100,000
    python bench/bench_store.py --n 10000       # one size

For each N, a data dir is filled through the project's own write path with
the vectors supplied: an `imprint export --vectors`-shaped file of N memories
(random unit vectors, fingerprint of the bundled model) goes through
`imprint import`, which stores the vectors as they are (no embedding). Then,
each as a fresh process, median of 3 with peak RSS (children included,
sampled every 20 ms):

- `imprint status`;
- `imprint search` (the model load is part of it: the same search on an empty
  data dir is timed too), and a process that opens the store and searches
  with a given vector: `imprint search` without the model load;
- `imprint export | wc -l`;
- the dashboard (`imprint ui`): `/api/stats` and the first page of
  `/api/memories`: the first request, then the median of 3 more (counts and
  facets are remembered until the next write);
- the store's size on disk.

Targets at 100k: status and search < 1 s (model load aside), status RSS
< 500 MB, export < 5 s, stats < 200 ms; 10k → 100k growth at most 3× in
time and 2× in memory.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
from common import WORDS, env, imprint  # noqa: E402  (bench/ is on sys.path)

from imprint.fingerprint import model_fingerprint  # noqa: E402
from imprint.messages.records import MemoryRecord, finalize_memory, vector_to_text  # noqa: E402


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                return
            time.sleep(0.02)


def timed(cmd: list[str] | str, *, shell: bool = False) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MB and stdout of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    rss.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    rss.done.set()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{err[-2000:]}")
    return wall, rss.peak / 2**20, out


def median3(cmd: list[str] | str, *, shell: bool = False) -> tuple[float, float, str]:
    runs = [timed(cmd, shell=shell) for _ in range(3)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2]


def write_file(path: Path, n: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    fp = model_fingerprint("all-MiniLM-L6-v2")
    vectors = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with path.open("w") as fh:
        for i in range(n):
            record = finalize_memory(MemoryRecord(
                content=f"Note {i}: " + " ".join(rng.choice(WORDS) for _ in range(28)) + ".",
                project=f"project-{i % 7}", type=("note", "decision", "fact")[i % 3], source=f"notes/{i % 500}.md",
                timestamp=1_700_000_000.0 + i), now=1_700_000_000.0)
            line = {**json.loads(json.dumps(record, default=lambda s: {f: getattr(s, f) for f in s.__struct_fields__})),
                    "vector": vector_to_text(vectors[i].tolist()), "vector_model": fp}
            fh.write(json.dumps(line) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard(data: Path) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen(imprint(data, "ui", "--port", str(port), "--no-browser"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = PeakRss(proc.pid)
    rss.start()
    start = time.perf_counter()
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/api/status", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - start > 120:
                    raise SystemExit("the dashboard did not come up")
                time.sleep(0.1)
        up = time.perf_counter() - start

        def get(path: str) -> float:
            t = time.perf_counter()
            urllib.request.urlopen(base + path, timeout=60).read()
            return time.perf_counter() - t

        stats_first = get("/api/stats")  # counted by the engine
        stats = statistics.median(get("/api/stats") for _ in range(3))  # remembered until the next write
        page_first = get("/api/memories?limit=50")
        page = statistics.median(get("/api/memories?limit=50") for _ in range(3))
        filtered = statistics.median(get("/api/memories?limit=50&project=project-3&offset=500") for _ in range(3))
        return {"ui_up_s": up, "ui_stats_first_ms": stats_first * 1000, "ui_stats_ms": stats * 1000,
                "ui_page_first_ms": page_first * 1000, "ui_page_ms": page * 1000,
                "ui_filtered_page_ms": filtered * 1000, "ui_rss_mb": rss.peak / 2**20}
    finally:
        rss.done.set()
        proc.terminate()
        proc.wait(30)


def du(path: Path) -> tuple[float, float]:
    """MB allocated on disk, and MB of apparent file size (Edge preallocates sparse files)."""
    files = [f.stat() for f in path.rglob("*") if f.is_file()]
    return sum(st.st_blocks * 512 for st in files) / 2**20, sum(st.st_size for st in files) / 2**20


#: A process that opens the store and runs one search with a given vector: `imprint search`
#: without the model (which is loaded the same way whatever the store holds).
SEARCH_NO_MODEL = """
import sys, random
from imprint.actors.base import ask
from imprint.config import Settings
from imprint.local import LocalActors
from imprint.messages.store import SearchMemories
from pathlib import Path
rng = random.Random(1)
vector = [rng.uniform(-1, 1) for _ in range(384)]
with LocalActors(Settings(data_dir=Path(sys.argv[1])), memories=True, facts=False) as local:
    hits = ask(local["memory_store"], SearchMemories(vector=vector, limit=5)).hits
print(len(hits))
"""


def run(n: int, work: Path) -> dict[str, float]:
    data, empty, jsonl = work / f"data{n}", work / "empty", work / f"in{n}.jsonl"
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    write_file(jsonl, n)
    print(f"  N={n:,}: file written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    wall, rss, out = timed(imprint(data, "--json", "import", str(jsonl)))
    assert json.loads(out)["vectors_reused"] == n, out
    print(f"  N={n:,}: imported in {wall:.1f} s ({n / wall:,.0f} memories/s, peak {rss:.0f} MB)", file=sys.stderr)
    figures: dict[str, float] = {"import_s": wall, "import_rss_mb": rss}
    figures["status_s"], figures["status_rss_mb"], out = median3(imprint(data, "--json", "status"))
    assert json.loads(out)["memories"] == n, out
    query = "which database migration broke the replica"
    figures["search_s"], figures["search_rss_mb"], _ = median3(imprint(data, "search", query))
    figures["search_no_model_s"], figures["search_no_model_rss_mb"], out = median3(
        [sys.executable, "-c", SEARCH_NO_MODEL, str(data)])
    assert out.strip() == "5", out
    empty.mkdir(exist_ok=True)
    figures["search_empty_store_s"], _, _ = median3(imprint(empty, "search", query))
    cmd = " ".join(imprint(data, "export")) + " | wc -l"
    figures["export_s"], figures["export_rss_mb"], out = median3(cmd, shell=True)
    assert int(out.strip()) == n, out
    figures.update(dashboard(data))
    figures["disk_mb"], figures["disk_apparent_mb"] = du(data / "workspaces")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="store size (repeatable); default 10000 and 100000")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args()
    sizes = args.n or [10_000, 100_000]
    work = Path(tempfile.mkdtemp(prefix="imprint-bench-store-"))
    results: dict[int, dict[str, float]] = {}
    try:
        for n in sizes:
            results[n] = run(n, work)
            print(json.dumps({"n": n, **{k: round(v, 3) for k, v in results[n].items()}}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    keys = list(next(iter(results.values())))
    print(f"\n{'':24}" + "".join(f"{n:>12,}" for n in sizes) + ("      growth" if len(sizes) > 1 else ""))
    for key in keys:
        row = "".join(f"{results[n][key]:>12.3f}" for n in sizes)
        if len(sizes) > 1 and results[sizes[0]][key] > 0:
            row += f"{results[sizes[-1]][key] / results[sizes[0]][key]:>11.2f}x"
        print(f"{key:24}{row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
