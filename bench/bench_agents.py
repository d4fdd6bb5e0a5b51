"""Benchmark: agents on the memory (the MCP server), and documents as chunks.

Run by hand (not a test), each part alone (they are CPU-bound, 2 cores):

    python bench/bench_agents.py latency          # N = 100,000 memories
    python bench/bench_agents.py latency --n 10000
    python bench/bench_agents.py recall
    python bench/bench_agents.py ingest           # a 10 MB tree

- latency: a data dir filled through `imprint import` with vectors supplied
  (nothing embedded); `imprint mcp` started over stdio by the SDK's own client;
  after a warm-up, 30 `search` calls and 30 `store` calls of one short new
  memory, each timed at the client (a tool call's whole round trip: client →
  stdio → MCP process → service socket → service → back). Targets: search
  median <= 100 ms, store median <= 150 ms.
- recall: the Python standard library's own help texts (`pydoc_data.topics`,
  79 topics). Stored twice, in-process with the real model: each topic as one
  memory (what storing a long text did before chunks) and as chunks
  (`Core.store_documents`). 50 sentences from past the first 1,500 characters
  of the long topics, each searched with its first three words dropped: recall@5
  of the right topic (the first five distinct topics among the best 25 hits: a
  topic's chunks count once), whole vs chunks. Target >= 0.9 with chunks.
- ingest: `imprint ingest` of a 10 MB tree of Markdown and code (the standard
  library's own .py files and this repository's .md files, copied): its chunks
  a second, against the embedder's own texts a second on the same chunks (the
  Embedder actor alone, same batches). Target >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from bench_store import timed, write_file  # noqa: E402  (bench/ is on sys.path)
from common import env, imprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- latency


def latency(args: argparse.Namespace, work: Path) -> dict[str, float]:
    import anyio
    from mcp import Client, StdioServerParameters

    data = work / "data"
    path = work / "store.jsonl"
    write_file(path, args.n)
    wall, _, _ = timed(imprint(data, "import", str(path)))
    print(f"  {args.n:,} memories imported in {wall:.1f} s", file=sys.stderr)
    params = StdioServerParameters(command=sys.executable, args=["-m", "imprint", "--data-dir", str(data), "mcp"],
                                   env=env())
    searches: list[float] = []
    stores: list[float] = []
    words = ["deploy", "replica", "billing", "shelf", "lighthouse", "kernel", "invoice", "cluster", "review"]

    async def main() -> None:
        async with Client(params) as client:
            for i in range(5):  # warm: the model loaded, the store's pages in memory
                await client.call_tool("search", {"query": f"warm up {i}", "limit": 5})
                await client.call_tool("store", {"content": f"warm-up note {i} {time.time()}"})
            rng = random.Random(7)
            for i in range(30):
                query = " ".join(rng.choice(words) for _ in range(4))
                t = time.perf_counter()
                result = await client.call_tool("search", {"query": query, "limit": 5})
                searches.append(time.perf_counter() - t)
                assert not result.is_error
                t = time.perf_counter()
                result = await client.call_tool("store", {"content": f"bench note {i}: {query} at {time.time()}",
                                                          "project": "bench"})
                stores.append(time.perf_counter() - t)
                assert not result.is_error and "stored" in result.content[0].text

    anyio.run(main)
    subprocess.run(imprint(data, "service", "stop"), env=env(), capture_output=True, check=False)
    return {"memories": args.n, "search_median_ms": statistics.median(searches) * 1000,
            "search_p90_ms": pct(searches, 0.9) * 1000, "store_median_ms": statistics.median(stores) * 1000,
            "store_p90_ms": pct(stores, 0.9) * 1000}


# ---------------------------------------------------------------- recall


def _queries(topics: dict[str, str], n: int = 50, seed: int = 3) -> list[tuple[str, str]]:
    """(query, topic): sentences past the first 1,500 characters of long topics, first three words dropped."""
    rng = random.Random(seed)
    candidates = []
    for name, text in topics.items():
        if len(text) <= 1500:
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", text[1500:]):
            words = sentence.split()
            if 10 <= len(words) <= 40 and not any(w.startswith((">>>", "...")) for w in words[:3]):
                candidates.append((" ".join(words[3:]), name))
    rng.shuffle(candidates)
    chosen: list[tuple[str, str]] = []
    per_topic: dict[str, int] = {}
    for query, name in candidates:  # spread over topics: at most 3 a topic
        if per_topic.get(name, 0) < 3:
            chosen.append((query, name))
            per_topic[name] = per_topic.get(name, 0) + 1
        if len(chosen) == n:
            break
    return chosen


def recall(args: argparse.Namespace, work: Path) -> dict[str, float]:
    from pydoc_data.topics import topics

    from imprint.config import Settings
    from imprint.core import Core
    from imprint.messages.records import MemoryRecord, finalize_memory
    from imprint.messages.store import Document, MemoryFilter

    long_ = {k: v for k, v in topics.items() if len(v) > 1500}
    queries = _queries(topics)
    print(f"  {len(topics)} topics ({sum(map(len, topics.values())) / 1024:.0f} KB), {len(long_)} over 1,500 "
          f"characters; {len(queries)} queries from {len({t for _, t in queries})} topics", file=sys.stderr)
    out: dict[str, float] = {"topics": len(topics), "queries": len(queries)}
    for how in ("whole", "chunks"):
        settings = Settings(data_dir=work / how).prepare()
        core = Core(settings).start()
        try:
            t = time.perf_counter()
            if how == "whole":
                core.remember(tuple(finalize_memory(MemoryRecord(content=text, project="pydoc", source=name))
                                    for name, text in topics.items()))
            else:
                core.store_documents(tuple(Document(content=text, project="pydoc", source=name)
                                           for name, text in topics.items()))
            stored = time.perf_counter() - t
            found = 0
            for query, topic in queries:
                hits = core.search(query, k=25, where=MemoryFilter(project="pydoc"))
                ranked = list(dict.fromkeys(h.record.source for h in hits))  # topics, best first
                found += topic in ranked[:5]
            out[f"{how}_memories"] = core.count()
            out[f"{how}_store_s"] = stored
            out[f"{how}_recall_at_5"] = found / len(queries)
        finally:
            core.close()
    return out


# ---------------------------------------------------------------- ingest


def make_tree(dest: Path, megabytes: float) -> int:
    """Copy the standard library's .py files and this repository's .md files into `dest` up to `megabytes`."""
    import sysconfig

    budget = int(megabytes * 1024**2)
    used = 0
    sources = sorted(ROOT.rglob("*.md")) + sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    for path in sources:
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        size = path.stat().st_size
        if size > 200_000 or used + size > budget:
            continue
        target = dest / f"{used:09d}-{path.name}"
        shutil.copyfile(path, target)
        used += size
        if used >= budget * 0.99:
            break
    return used


def ingest(args: argparse.Namespace, work: Path) -> dict[str, float]:
    import pykka

    from imprint.actors.base import ask
    from imprint.actors.embedder import Embedder
    from imprint.config import DEFAULT_MODEL
    from imprint.messages.store import EmbedTexts, Ping

    tree, data = work / "tree", work / "data"
    tree.mkdir()
    size = make_tree(tree, args.mb)
    subprocess.run(imprint(data, "status"), env=env(), capture_output=True, check=True)
    subprocess.run(imprint(data, "search", "warm the model up"), env=env(), capture_output=True, check=True)
    wall, _, text = timed(imprint(data, "--json", "ingest", str(tree)))
    result = json.loads(text)
    chunks = result["chunks"]
    texts = [json.loads(line)["content"] for line in subprocess.run(
        imprint(data, "export"), env=env(), capture_output=True, text=True, check=True).stdout.splitlines()]
    subprocess.run(imprint(data, "service", "stop"), env=env(), capture_output=True, check=False)
    embedder = Embedder.start(model_name=DEFAULT_MODEL)
    try:
        ask(embedder, Ping(), timeout=120)
        ask(embedder, EmbedTexts(texts=("warm up",)), timeout=120)
        texts.sort(key=len)  # as the store path does: chunks of one length together
        t = time.perf_counter()
        for start in range(0, len(texts), 64):
            ask(embedder, EmbedTexts(texts=tuple(texts[start:start + 64])), timeout=600)
        embed_wall = time.perf_counter() - t
    finally:
        pykka.ActorRegistry.stop_all()
    return {"tree_mb": size / 1024**2, "files": result["files"], "chunks": chunks, "ingest_s": wall,
            "ingest_chunks_per_s": chunks / wall, "embedder_texts_per_s": len(texts) / embed_wall,
            "ratio": (chunks / wall) / (len(texts) / embed_wall)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("latency", "recall", "ingest"))
    parser.add_argument("--n", type=int, default=100_000, help="memories in the store (latency)")
    parser.add_argument("--mb", type=float, default=10.0, help="size of the tree (ingest)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imprint-bench-agents-"))
    try:
        figures = {"latency": latency, "recall": recall, "ingest": ingest}[args.part](args, work)
    finally:
        for lock in work.rglob("service.lock"):
            subprocess.run(imprint(lock.parent, "service", "stop"), env=env(), capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    for key, value in figures.items():
        print(f"{key:>24}: {value:,.3f}" if isinstance(value, float) else f"{key:>24}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
