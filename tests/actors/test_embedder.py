"""Embedder alone, through `ask`, with the real bundled model."""

from __future__ import annotations

import math
from typing import Any

import pykka
import pytest

from imprint.actors.embedder import Embedder
from imprint.errors import ModelError
from imprint.fingerprint import CANARIES, canary_agreement, model_fingerprint
from imprint.messages.store import (
    Canaries,
    DescribeCanaries,
    DescribeModel,
    Embeddings,
    EmbedTexts,
    ModelInfo,
    Ping,
)

pytestmark = pytest.mark.timeout(240)


def embed(embedder: pykka.ActorRef[Any], *texts: str) -> list[list[float]]:
    reply = embedder.ask(EmbedTexts(texts=texts), timeout=60)
    assert isinstance(reply, Embeddings)
    return reply.vectors


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def test_similar_sentences_score_higher_than_unrelated(embedder: pykka.ActorRef[Any]) -> None:
    anchor, paraphrase, unrelated = embed(
        embedder,
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Quarterly tax filings are due at the end of March.",
    )
    assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.2


def test_vectors_have_the_model_dimension_are_normalized_and_in_order(embedder: pykka.ActorRef[Any]) -> None:
    info = embedder.ask(DescribeModel(), timeout=10)
    assert info == ModelInfo(name="all-MiniLM-L6-v2", dimension=384, fingerprint=model_fingerprint("all-MiniLM-L6-v2"))
    assert len(info.fingerprint) == 16 and not info.fingerprint.startswith("name-")  # hashed from the bundled files
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(70)]  # more than one encode batch
    vectors = embed(embedder, *texts)
    assert len(vectors) == len(texts)
    assert {len(v) for v in vectors} == {384}
    for v in vectors:
        assert math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4)
    # order is kept: embedding one text alone gives the vector at its position
    [alone] = embed(embedder, texts[41])
    assert cosine(alone, vectors[41]) > 0.9999
    assert cosine(alone, vectors[40]) < 0.9999


def test_canaries_are_the_model_vectors_of_the_fixed_sentences_and_are_cached(
        embedder: pykka.ActorRef[Any], start_actor: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import json

    import numpy as np

    from imprint import fingerprint

    expected = np.asarray(embed(embedder, *CANARIES), dtype="<f4").tobytes()
    monkeypatch.setattr(fingerprint, "PACKAGED_CANARIES", tmp_path / "none-packaged.json")
    first = start_actor(Embedder, model_name="all-MiniLM-L6-v2", cache_dir=tmp_path / "a")
    canaries = first.ask(DescribeCanaries(), timeout=120)
    assert isinstance(canaries, Canaries) and len(canaries.vectors) == 4 * 384 * len(CANARIES)
    assert canary_agreement(canaries.vectors, expected) > 0.9999
    assert first.proxy().model_loaded.get(timeout=10) is True  # nothing cached or packaged: computed
    # Another embedder on the same cache answers from it: no model loaded (an unchanged re-sync needs none).
    second = start_actor(Embedder, model_name="all-MiniLM-L6-v2", cache_dir=tmp_path / "a")
    assert second.ask(DescribeCanaries(), timeout=30).vectors == canaries.vectors
    assert second.proxy().model_loaded.get(timeout=10) is False

    # Packaged with imprint (the bundled model's, for these library versions): a new data dir shows
    # them without loading the model, as a new machine's first sync does.
    packaged = tmp_path / "canaries.json"
    key = fingerprint.canary_key(model_fingerprint("all-MiniLM-L6-v2", write_cache=False))
    packaged.write_text(json.dumps({key: base64.b64encode(b"\x01" * len(expected)).decode()}))
    monkeypatch.setattr(fingerprint, "PACKAGED_CANARIES", packaged)
    fresh = start_actor(Embedder, model_name="all-MiniLM-L6-v2", cache_dir=tmp_path / "b")
    assert fresh.ask(DescribeCanaries(), timeout=30).vectors == b"\x01" * len(expected)
    assert fresh.proxy().model_loaded.get(timeout=10) is False
    # An embedder that loads its model anyway (to embed memories) computes and caches its own,
    # which then stand instead of the packaged ones.
    embed(fresh, "a memory")
    later = start_actor(Embedder, model_name="all-MiniLM-L6-v2", cache_dir=tmp_path / "b")
    assert canary_agreement(later.ask(DescribeCanaries(), timeout=30).vectors, expected) > 0.9999
    assert later.proxy().model_loaded.get(timeout=10) is False


def test_empty_input_gives_no_vectors(embedder: pykka.ActorRef[Any]) -> None:
    assert embed(embedder) == []


def test_unknown_model_surfaces_as_model_error_through_ping(start_actor) -> None:
    ref = start_actor(Embedder, model_name="no-such-org/does-not-exist-model")
    with pytest.raises(ModelError, match="does-not-exist-model"):
        ref.ask(Ping(), timeout=120)
    # the actor stays alive and keeps answering with the same error, not a dead ref
    with pytest.raises(ModelError, match="does-not-exist-model"):
        ref.ask(EmbedTexts(texts=("hello",)), timeout=10)


def test_bfloat16_vectors_agree_with_float32_far_inside_the_peers_check() -> None:
    """bfloat16 matrix products keep the float32 fingerprint: their vectors must stay well
    within the 0.999 cosine by which peers check each other's vectors."""
    from imprint.actors.embedder import encode, load_model

    model = load_model("all-MiniLM-L6-v2")
    texts = [*CANARIES, "short", "a longer note about deploying the replica after the migration " * 6]
    exact, fast = encode(model, texts, "float32"), encode(model, texts, "bfloat16")
    assert exact != fast  # bfloat16 really ran
    assert min(cosine(a, b) for a, b in zip(exact, fast)) > 0.9999


def test_an_unknown_precision_setting_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from imprint.actors.embedder import precision_setting
    from imprint.errors import ConfigError

    monkeypatch.setenv("IMPRINT_EMBED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="fp8.*auto, float32, bfloat16"):
        precision_setting()
    monkeypatch.setenv("IMPRINT_EMBED_PRECISION", " Float32 ")
    assert precision_setting() == "float32"


def test_the_traced_query_encoder_gives_the_models_own_vectors_for_any_length_and_batch(start_actor) -> None:
    """Searches embed through a TorchScript trace of the model (no GIL held through the model):
    the trace was recorded on one short example, so other lengths, a batch with padding and a
    text past the model's window must still give the eager float32 pass's vectors."""
    from imprint.actors.embedder import GetQueryEncoder, encode, load_model
    from imprint.config import DEFAULT_MODEL

    embedder = start_actor(Embedder, model_name=DEFAULT_MODEL)
    assert embedder.ask(GetQueryEncoder(), timeout=60) is None  # nothing before the model loads
    embed(embedder, "load it")
    lane = embedder.ask(GetQueryEncoder(), timeout=60)
    assert lane is not None
    model = load_model(DEFAULT_MODEL)  # the eager reference, loaded apart
    texts = ("hi", "where does the deploy script keep its credentials",
             "a longer note about deploying the replica after the migration " * 40)
    for text in texts:
        (mine,) = lane.encode((text,))
        (eager,) = encode(model, [text], "float32")
        assert cosine(mine, eager) > 0.99999, text[:40]
        assert abs(math.hypot(*mine) - 1.0) < 1e-5
    together = lane.encode(texts)  # padded to the longest: pooling must ignore the padding
    for text, vector in zip(texts, together):
        assert cosine(vector, encode(model, [text], "float32")[0]) > 0.99999


def test_a_model_of_another_layout_gets_no_query_encoder() -> None:
    from imprint.actors.embedder import QueryEncoder, load_model

    model = load_model("all-MiniLM-L6-v2")
    pooling = model[1]
    if isinstance(getattr(pooling, "pooling_mode", None), str):
        pooling.pooling_mode = "cls"
    else:
        pooling.pooling_mode_mean_tokens, pooling.pooling_mode_cls_token = False, True
    assert QueryEncoder.of(model) is None
