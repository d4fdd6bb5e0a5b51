"""Chunks: a long text as pieces the model reads whole.

all-MiniLM-L6-v2 reads 256 word pieces (two of them its own markers) and
ignores the rest, so a long text embedded whole is invisible to search past
its first screen. A text longer than the window is therefore stored as
several memories — its *chunks* — with one `source` and `chunk_index` 0…n-1
(the record fields SPEC has for this, and Imprint's own clients fill).

:func:`split` is token-aware: it cuts with the model's own tokenizer, so every
chunk fits the window, and where it cuts is chosen by preference: before a
Markdown heading, at a blank line, at a line end, after a sentence, at a
space — never inside a word (unless one "word" is longer than half a window).
Neighbouring chunks overlap by :data:`OVERLAP` tokens, so a sentence cut in
two is whole in one of them. :func:`join` gives the text back from its chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Largest document `add`, `store` and `ingest` take (its chunks are what is stored).
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
#: Tokens the next chunk repeats from the end of the previous one.
OVERLAP = 32
#: Where to cut, best first: (what to look for, where the cut goes relative to it).
BREAKS: tuple[tuple[str, int], ...] = (
    ("\n#", 1), ("\n\n", 1), ("\n", 1), (". ", 1), ("? ", 1), ("! ", 1), ("; ", 1), (", ", 1), (" ", 0), ("\t", 0),
)

Offsets = Sequence[tuple[int, int]]


def split(text: str, offsets: Offsets, max_tokens: int, *, overlap: int = OVERLAP) -> list[str]:
    """`text` as chunks of at most `max_tokens` tokens, given its tokens' character `offsets`
    (the tokenizer's, without special tokens). A text that fits is one chunk, itself."""
    n = len(offsets)
    if n <= max_tokens:
        return [text]
    overlap = max(0, min(overlap, max_tokens // 4))
    chunks: list[str] = []
    first = 0
    while True:
        start = offsets[first][0]
        if n - first <= max_tokens:
            chunks.append(text[start:])
            break
        limit = offsets[first + max_tokens][0]  # the first token that does not fit starts here
        cut = _best_cut(text, offsets[first + max_tokens // 2][0], limit)
        chunks.append(text[start:cut])
        after = _token_at(offsets, cut, first + 1)
        nxt = max(first + 1, after - overlap)
        while nxt < after and not _word_start(text, offsets[nxt][0]):
            nxt += 1  # the overlap starts with a whole word
        first = nxt
    return [c.strip() for c in chunks if c.strip()]


def _best_cut(text: str, lo: int, hi: int) -> int:
    """A character position in (lo, hi] to end a chunk at, by the preference of BREAKS."""
    for mark, shift in BREAKS:
        at = text.rfind(mark, lo, hi)
        if at > lo:
            return min(at + shift, hi)
    return hi  # one word longer than half a window: cut it at a token boundary


def _token_at(offsets: Offsets, position: int, lo: int) -> int:
    """The first token (index >= lo) that starts at or after `position`."""
    hi = len(offsets)
    while lo < hi:
        mid = (lo + hi) // 2
        if offsets[mid][0] < position:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _word_start(text: str, position: int) -> bool:
    return position == 0 or text[position - 1].isspace()


def join(chunks: Sequence[str], *, max_overlap: int = 4000) -> str:
    """A document from its chunks in order, each overlap said once."""
    out = ""
    for chunk in chunks:
        if not out:
            out = chunk
            continue
        shared = _overlap(out, chunk, max_overlap)
        rest = chunk[shared:]
        out += rest if shared else ("\n" + rest)
    return out


def _overlap(left: str, right: str, limit: int) -> int:
    """Length of the longest suffix of `left` (at most `limit`) that is a prefix of `right`."""
    probe = right[:8]
    if not probe:
        return 0
    base = max(0, len(left) - limit)
    at = left.find(probe, base)
    while at >= 0:  # earliest first: the longest overlap
        size = len(left) - at
        if size <= len(right) and right.startswith(left[at:]):
            return size
        at = left.find(probe, at + 1)
    return 0
