"""The model fingerprint: the same files give the same hash, any changed file or backend another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imprint.fingerprint import (
    BACKEND,
    fingerprint_of_dir,
    model_dir,
    model_fingerprint,
)

pytestmark = pytest.mark.timeout(60)


def small_model(root: Path) -> Path:
    d = root / "model"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"\x01" * 4096)
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "tokenizer.json").write_text('{"vocab": ["a"]}')
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (d / "README.md").write_text("about this model")
    return d


def test_same_files_same_fingerprint_and_a_copy_elsewhere_agrees(tmp_path: Path) -> None:
    d = small_model(tmp_path)
    first = fingerprint_of_dir(d)
    assert len(first) == 16 and int(first, 16) >= 0
    copy = tmp_path / "elsewhere"
    shutil.copytree(d, copy)
    assert fingerprint_of_dir(copy) == first
    # a file that decides no vector does not count
    (copy / "README.md").write_text("rewritten docs")
    assert fingerprint_of_dir(copy) == first


@pytest.mark.parametrize("changed", ["model.safetensors", "config.json", "tokenizer.json", "1_Pooling/config.json"])
def test_any_deciding_file_changes_it(tmp_path: Path, changed: str) -> None:
    d = small_model(tmp_path)
    before = fingerprint_of_dir(d)
    with (d / changed).open("ab") as fh:
        fh.write(b" ")
    assert fingerprint_of_dir(d) != before


def test_the_backend_is_part_of_it(tmp_path: Path) -> None:
    d = small_model(tmp_path)
    assert fingerprint_of_dir(d, backend=BACKEND) != fingerprint_of_dir(d, backend=BACKEND + "/int8")


def test_cached_until_a_file_changes(tmp_path: Path) -> None:
    d, cache = small_model(tmp_path), tmp_path / "cache"
    first = fingerprint_of_dir(d, cache_dir=cache)
    [entry] = json.loads((cache / "model-fingerprints.json").read_text()).values()
    assert entry["fingerprint"] == first
    # The cache is believed while sizes and times match (that is what makes it fast) ...
    data = json.loads((cache / "model-fingerprints.json").read_text())
    for v in data.values():
        v["fingerprint"] = "cafe" * 4
    (cache / "model-fingerprints.json").write_text(json.dumps(data))
    assert fingerprint_of_dir(d, cache_dir=cache) == "cafe" * 4
    # ... and dropped once a file changes.
    (d / "config.json").write_text('{"hidden_size": 16}')
    assert fingerprint_of_dir(d, cache_dir=cache) not in ("cafe" * 4, first)


def test_read_only_use_writes_no_cache(tmp_path: Path) -> None:
    d, cache = small_model(tmp_path), tmp_path / "cache"
    fingerprint_of_dir(d, cache_dir=cache, write_cache=False)
    assert not cache.exists()


def test_the_bundled_model_is_found_offline_and_an_unknown_name_is_marked() -> None:
    assert model_dir("all-MiniLM-L6-v2") is not None
    assert model_fingerprint("no-such-model-anywhere").startswith("name-")


@pytest.mark.timeout(180)
def test_the_packaged_canaries_are_what_the_bundled_model_computes_with_these_libraries() -> None:
    """A new machine's first sync shows these without loading the model: they must be the model's."""
    import base64

    import numpy as np

    from imprint.actors.embedder import (
        encode,
        load_model,
        precision_setting,
        resolve_precision,
    )
    from imprint.config import DEFAULT_MODEL
    from imprint.fingerprint import (
        CANARIES,
        PACKAGED_CANARIES,
        canary_agreement,
        canary_key,
    )

    packaged = json.loads(PACKAGED_CANARIES.read_text())
    key = canary_key(model_fingerprint(DEFAULT_MODEL, write_cache=False))
    assert all(k.startswith(key.split("|")[0] + "|") for k in packaged), "canaries of another model are packaged"
    if key not in packaged:
        pytest.skip(f"no canaries packaged for these library versions ({key}): the first sync loads the model "
                    "for them; `python -m imprint.fingerprint` adds them")
    ours = np.asarray(encode(load_model(DEFAULT_MODEL), CANARIES, resolve_precision(precision_setting())), "<f4")
    assert canary_agreement(ours.tobytes(), base64.b64decode(packaged[key])) > 0.99999
