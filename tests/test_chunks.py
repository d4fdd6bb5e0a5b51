"""Chunks: cut with the model's own tokenizer (the real one, through the Embedder), every chunk
fits the window, no cut splits a word, neighbours overlap, and join gives the text back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from imprint.actors.embedder import WINDOW_FLOOR
from imprint.chunks import join, split
from imprint.messages.store import SplitTexts

ROOT = Path(__file__).resolve().parents[1]


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("path", ["README.md", "imprint/protocol/flows.py", "imprint/actors/memory_store.py"])
def test_real_documents_split_into_whole_words_that_fit_and_join_back(embedder: Any, path: str) -> None:
    from transformers import AutoTokenizer

    from imprint.actors.base import ask
    from imprint.config import DEFAULT_MODEL
    from imprint.models import resolve_model

    text = (ROOT / path).read_text()
    [chunks] = ask(embedder, SplitTexts(texts=(text,)), timeout=120).chunks
    assert len(chunks) > 3
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))  # the same files the model reads
    counts = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(counts) <= 254  # the model's 256 word pieces, less its two markers
    words = set(text.split())
    for chunk in chunks:
        first, last = chunk.split()[0], chunk.split()[-1]
        assert first in words and last in words, (first, last)  # never half a word
    assert normal(join(chunks)) == normal(text)
    for left, right in zip(chunks, chunks[1:]):
        assert left.endswith(right[:len(right.split()[0])]) or right.split()[0] in left.split()  # they overlap


def test_a_text_that_fits_is_its_own_single_chunk(embedder: Any) -> None:
    from imprint.actors.base import ask

    text = "short note"
    assert split(text, [(0, 5), (6, 10)], 254) == [text]
    assert WINDOW_FLOOR < 254  # a text this short fits whatever the tokenizer: no tokenizing needed
    assert ask(embedder, SplitTexts(texts=(text, "y" * WINDOW_FLOOR)), timeout=120).chunks == ((text,), ("y" * WINDOW_FLOOR,))


def test_cuts_prefer_headings_then_blank_lines() -> None:
    words = [f"w{i}" for i in range(300)]
    text = " ".join(words[:150]) + "\n\n# Heading\n" + " ".join(words[150:])
    offsets = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    chunks = split(text, offsets, 200, overlap=0)
    assert chunks[1].startswith("# Heading")
