"""Searches embed their query beside the Embedder, not behind it: a real Core over real
actors and the real model, with the Embedder kept busy by a big job."""

from __future__ import annotations

from pathlib import Path

import pykka
import pytest

from imprint.core import Core
from imprint.messages.store import EmbedTexts
from tests.ui.helpers import machine

pytestmark = pytest.mark.timeout(240)

DEPLOY = "The deploy script is ops/deploy.sh; run it from the repository root"


def test_a_search_answers_while_the_embedder_is_busy_and_finds_the_same_memories(tmp_path: Path) -> None:
    memories = [(DEPLOY, "ops", "note", ""), ("Alice plays the violin on Tuesdays", "music", "note", "")]
    with machine(tmp_path, memories, []) as m:
        core = Core(m.settings, local=m.local)
        first = core.search("how do I deploy", k=2)  # loads the model (and its query encoder) if need be
        assert first[0].record.content == DEPLOY
        assert m.local.reads.recent(60)  # the store says it answered a search: the Storer writes small parts now
        embedder = m.local.group["embedder"]
        # A job of several seconds in the Embedder's mailbox, as a sync's or an import's batches are.
        busy = embedder.ask(EmbedTexts(texts=tuple(f"filler text number {i} about nothing much" for i in range(3000))),
                            block=False)
        again = core.search("how do I deploy", k=2)
        # The search is answered while the job still runs: it never waited in that mailbox.
        with pytest.raises(pykka.Timeout):
            busy.get(timeout=0)
        assert [h.record.id for h in again] == [h.record.id for h in first]
        # The first query went through the Embedder (bfloat16 products where the CPU has them),
        # this one through the float32 trace: the same hits, scores within a hair.
        assert abs(again[0].score - first[0].score) < 5e-3
        busy.get(timeout=180)
