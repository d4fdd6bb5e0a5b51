"""Benchmark: embedding backends for the bundled model, speed and quality, in one run.

Run by hand (not a test); the ONNX legs need `onnxruntime` (not a dependency of
imprint: `pip install onnxruntime` into the environment that runs this, or they
are skipped):

    python bench/bench_embed.py [--texts 1000] [--store 5000] [--queries 100] [--runs 5]

Backends, all from the bundled all-MiniLM-L6-v2 weights, nothing downloaded:

- ``torch-fp32-b64``: what imprint ran before (sentence-transformers, float32,
  64 texts a forward pass): the baseline every ratio is against;
- ``torch-fp32-b16``: the same, 16 texts a pass (less padding);
- ``torch-bf16-b32`` / ``imprint``: matrix products in bfloat16 under torch's
  autocast, the rest float32; ``imprint`` is `imprint.actors.embedder.encode`
  itself, with its batch size and the precision it picks on this CPU;
- ``onnx-fp32``: the transformer exported with torch.onnx to a temporary
  directory, run by onnxruntime, mean pooling and normalising in numpy;
- ``onnx-int8``: that export with dynamic int8 quantisation (per channel).

Two corpora: ``words`` (random sentences from 40 words: near-ties everywhere,
the hardest case for top-10 overlap) and ``varied`` (paragraphs of the Python
standard library's docstrings: real, varied technical English, as developer
notes are). Speed: texts/s embedding the same N texts, median of `--runs`
paired runs (each backend once per round, in turn). Quality, against the
float32 vectors: mean and min cosine over the N texts, and the overlap of the
top-10 results of Q queries over an S-memory store (both embedded by the
backend under test). The issue's bar: mean cosine >= 0.98 and top-10 overlap
>= 90 %, at >= 2x the baseline's texts/s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import WORDS  # noqa: E402  (bench/ is on sys.path)

from imprint.actors.embedder import load_model  # noqa: E402


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"note {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) + "." for i in range(n)]


def docstrings() -> list[str]:
    """Paragraphs (40-600 characters) of the standard library's docstrings, shuffled with a fixed seed."""
    import importlib
    import inspect
    import pkgutil
    import sys
    import warnings

    warnings.filterwarnings("ignore")
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip"}
    names = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in skip:
            continue
        names.add(name)
        try:
            module = importlib.import_module(name)
        except BaseException:
            continue
        for sub in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
            if not any(p.startswith("_") or p in skip or p == "tests" for p in sub.name.split(".")):
                names.add(sub.name)
    paragraphs = []
    for name in sorted(names):
        try:
            module = importlib.import_module(name)
        except BaseException:
            continue
        objects = [module]
        for attr in dir(module):
            if not attr.startswith("_"):
                value = getattr(module, attr, None)
                objects.append(value)
                if inspect.isclass(value):
                    objects += [getattr(value, b, None) for b in vars(value) if not b.startswith("_")]
        for obj in objects:
            try:
                doc = inspect.getdoc(obj) if obj is not None else None
            except Exception:
                doc = None
            for p in (doc or "").split("\n\n"):
                p = " ".join(p.split())
                if 40 <= len(p) <= 600 and not p.startswith((">>>", "..", "|")):
                    paragraphs.append(p)
    paragraphs = list(dict.fromkeys(paragraphs))
    random.Random(0).shuffle(paragraphs)
    return paragraphs


class TorchBackend:
    def __init__(self, model, name: str, batch: int, bf16: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.model, self.name, self.batch, self.bf16 = model, name, batch, bf16

    def embed(self, batch: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.encode(batch, batch_size=self.batch, convert_to_tensor=True, show_progress_bar=False)
        return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


class ImprintBackend:
    """What the Embedder runs: `imprint.actors.embedder.encode`, its batch size and precision."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        from imprint.actors.embedder import (
            ENCODE_BATCH,
            precision_setting,
            resolve_precision,
        )

        self.model, self.precision = model, resolve_precision(precision_setting())
        self.name = f"imprint ({self.precision}, b{ENCODE_BATCH})"

    def embed(self, batch: list[str]) -> np.ndarray:
        from imprint.actors.embedder import encode

        return np.asarray(encode(self.model, batch, self.precision), dtype=np.float32)


class OnnxBackend:
    def __init__(self, name: str, path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.name = name
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, batch: list[str], size: int = 64) -> np.ndarray:
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out = np.zeros((len(batch), 384), dtype=np.float32)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            enc = self.tokenizer([batch[i] for i in chunk], padding=True, truncation=True, max_length=256,
                                 return_tensors="np")
            feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
            hidden = self.session.run(None, feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[chunk] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def export(model, folder: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Hidden(torch.nn.Module):
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    transformer = Hidden(model[0].auto_model.eval())
    sample = model.tokenizer(["a sample sentence to trace"], return_tensors="pt")
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"hidden": {0: "batch", 1: "sequence"}}
    with torch.no_grad():
        torch.onnx.export(transformer, tuple(sample[n] for n in names), str(fp32), input_names=names,
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return fp32, int8


def top10(store: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    scores = queries @ store.T
    return [set(np.argsort(-row)[:10].tolist()) for row in scores]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--store", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--corpus", choices=("varied", "words"), action="append")
    args = parser.parse_args()

    model = load_model("all-MiniLM-L6-v2")
    backends = [TorchBackend(model, "torch-fp32-b64", 64), TorchBackend(model, "torch-fp32-b16", 16),
                TorchBackend(model, "torch-bf16-b32", 32, bf16=True), ImprintBackend(model)]
    with tempfile.TemporaryDirectory(prefix="imprint-bench-embed-") as tmp:
        try:
            fp32, int8 = export(model, Path(tmp))
            backends += [OnnxBackend("onnx-fp32", fp32, model.tokenizer), OnnxBackend("onnx-int8", int8, model.tokenizer)]
        except ImportError as exc:
            print(json.dumps({"onnx": f"skipped: {exc}"}), flush=True)
        for corpus in args.corpus or ["varied", "words"]:
            if corpus == "varied":
                pool = docstrings()
                need = args.texts + args.store + args.queries
                if len(pool) < need:
                    raise SystemExit(f"only {len(pool)} docstring paragraphs here, {need} needed")
                sample, store_texts = pool[:args.texts], pool[args.texts:args.texts + args.store]
                query_texts = [p.split(". ")[0] for p in pool[args.texts + args.store:need]]
            else:
                sample, store_texts, query_texts = texts(args.texts, 1), texts(args.store, 2), texts(args.queries, 3)
            for b in backends:
                b.embed(sample[:64])  # warm
            times: dict[str, list[float]] = {b.name: [] for b in backends}
            for _ in range(args.runs):  # paired: every backend once per round
                for b in backends:
                    start = time.perf_counter()
                    b.embed(sample)
                    times[b.name].append(time.perf_counter() - start)
            reference = backends[0].embed(sample)
            ref_top = top10(backends[0].embed(store_texts), backends[0].embed(query_texts))
            base = len(sample) / statistics.median(times[backends[0].name])
            for b in backends:
                speed = len(sample) / statistics.median(times[b.name])
                cosines = (b.embed(sample) * reference).sum(1)
                tops = top10(b.embed(store_texts), b.embed(query_texts))
                overlap = statistics.mean(len(a & r) / 10 for a, r in zip(tops, ref_top))
                print(json.dumps({"corpus": corpus, "backend": b.name, "texts_per_s": round(speed, 1),
                                  "vs_baseline": round(speed / base, 2), "mean_cosine": round(float(cosines.mean()), 6),
                                  "min_cosine": round(float(cosines.min()), 6), "top10_overlap": round(overlap, 3)}),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
