"""Benchmark: embedding backends for the bundled model, speed and quality, in one run.

Run by hand (not a test); the ONNX legs need `onnxruntime` (not a dependency of
imprint: `pip install onnxruntime` into the environment that runs this):

    python bench/bench_embed.py [--texts 2000] [--store 5000] [--queries 100] [--runs 3]

Backends, all from the bundled all-MiniLM-L6-v2 weights, nothing downloaded:

- ``torch``: what imprint runs today (sentence-transformers, fp32, CPU);
- ``onnx-fp32``: the same transformer exported once with torch.onnx to a
  temporary directory, run by onnxruntime, mean pooling and normalising in numpy;
- ``onnx-int8``: that export with dynamic int8 quantisation (per channel).

The ONNX legs sort texts by length into batches (less padding). Speed:
texts/s embedding the same N texts (~50 tokens), median of `--runs`.
Quality, against torch's vectors: mean and min cosine over the N texts, and
the overlap of the top-10 results of Q queries over an S-memory store
(both embedded by the backend under test). The issue's bar: mean cosine
>= 0.98 and top-10 overlap >= 90 %, at >= 2x torch's texts/s.
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


class TorchBackend:
    name = "torch"

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model = model

    def embed(self, batch: list[str]) -> np.ndarray:
        return self.model.encode(batch, batch_size=64, normalize_embeddings=True, show_progress_bar=False)


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


def rate(backend, batch: list[str], runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.embed(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def top10(store: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    scores = queries @ store.T
    return [set(np.argsort(-row)[:10].tolist()) for row in scores]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--store", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    model = load_model("all-MiniLM-L6-v2")
    backends = [TorchBackend(model)]
    with tempfile.TemporaryDirectory(prefix="imprint-bench-embed-") as tmp:
        try:
            fp32, int8 = export(model, Path(tmp))
            backends += [OnnxBackend("onnx-fp32", fp32, model.tokenizer), OnnxBackend("onnx-int8", int8, model.tokenizer)]
        except ImportError as exc:
            print(json.dumps({"onnx": f"skipped: {exc}"}), flush=True)
        sample, store_texts, query_texts = texts(args.texts, 1), texts(args.store, 2), texts(args.queries, 3)
        for b in backends:
            b.embed(sample[:64])  # warm
        reference = backends[0].embed(sample)
        ref_store, ref_queries = backends[0].embed(store_texts), backends[0].embed(query_texts)
        ref_top = top10(ref_store, ref_queries)
        torch_rate = None
        for b in backends:
            speed = rate(b, sample, args.runs)
            torch_rate = torch_rate or speed
            vectors = b.embed(sample)
            cosines = (vectors * reference).sum(1)
            tops = top10(b.embed(store_texts), b.embed(query_texts))
            overlap = statistics.mean(len(a & r) / 10 for a, r in zip(tops, ref_top))
            print(json.dumps({"backend": b.name, "texts_per_s": round(speed, 1), "vs_torch": round(speed / torch_rate, 2),
                              "mean_cosine": round(float(cosines.mean()), 5), "min_cosine": round(float(cosines.min()), 5),
                              "top10_overlap": round(overlap, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
