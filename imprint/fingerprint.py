"""The model fingerprint: which model made a vector, as a short hash.

Two vectors can be compared only if the same model made them the same way.
The fingerprint hashes every file that decides a vector — weights, configs,
tokenizer, pooling — plus the backend that runs them (how texts are cut,
whether vectors are normalised), so a retrained or re-quantised model, or a
changed backend, gets another fingerprint, while a reinstall of the same files
keeps it. It is recorded with the store and with every vector written.

Hashing ~90 MB of weights takes a fraction of a second; the result is cached
per model directory under ``DATA_DIR/cache/`` and recomputed only when a
file's size or modification time changes. Computing it never imports torch,
so `imprint status` shows it without loading the model.

Equal fingerprints say the same files run the same way; the *canaries* show it:
the vectors of three fixed sentences, computed once per fingerprint (cached
beside it) and sent in the sealed HELLO. Two peers take each other's vectors
only when their fingerprints are equal and their canaries agree (a library
upgrade that changes the maths under the same files shows here, before any
memory moves).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from loguru import logger

from imprint.models import MAX_EMBED_CHARS, resolve_model

#: How the default backend turns text into vectors; part of every fingerprint.
#: Change it whenever what comes out for the same files would change.
BACKEND = f"sentence-transformers/torch/float32/normalized/cut-{MAX_EMBED_CHARS}-chars"
#: Files of a model directory that decide no vector (docs, training notes, VCS files).
_IGNORED = ("readme", ".git", "data_config.json", "train_script", "license")
_CACHE_FILE = "model-fingerprints.json"
_CANARY_FILE = "model-canaries.json"
#: Three fixed sentences (short, long, code-like) whose vectors show that two
#: peers' models agree. Never change them: cached canaries are keyed by fingerprint and
#: library versions, not by the sentences.
CANARIES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Deploy the database migration after the release branch is merged and the replica has caught up; "
    "roll back from the backup if latency goes over budget.",
    "def retry(fn, attempts=3): return next(r for r in (fn() for _ in range(attempts)) if r)",
)
#: Canary vectors this close (cosine, each) are the same model's, as for a sample of memories.
CANARY_MIN_COSINE = 0.999
#: Hex digits kept: 64 bits tell models apart; the full hash adds nothing but width.
LENGTH = 16


def model_dir(name: str) -> Path | None:
    """The local directory of a model name (the bundled default, a path, or the
    Hugging Face cache, offline), or None if it cannot be found without a download."""
    from imprint.errors import ModelError

    try:
        target = Path(resolve_model(name))  # the bundled one, a directory, or the Hugging Face cache
    except ModelError:
        return None
    return target if target.is_dir() else None


def _files(directory: Path) -> list[Path]:
    out = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix().lower()
        if path.is_file() and not any(part.startswith(_IGNORED) for part in rel.split("/")):
            out.append(path)
    return out


def fingerprint_of_dir(directory: Path, *, backend: str = BACKEND, cache_dir: Path | None = None,
                       write_cache: bool = True) -> str:
    """The fingerprint of the model in `directory` run by `backend` (cached in `cache_dir`,
    which is only read when `write_cache` is False)."""
    files = _files(directory)
    stats = {p.relative_to(directory).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    key = f"{directory.resolve()}|{backend}"
    cache = _read_cache(cache_dir)
    hit = cache.get(key)
    if hit and hit.get("files") == stats:
        return hit["fingerprint"]
    outer = hashlib.sha256(backend.encode())
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                inner.update(chunk)
        outer.update(f"\0{path.relative_to(directory).as_posix()}\0".encode() + inner.digest())
    fingerprint = outer.hexdigest()[:LENGTH]
    if write_cache:
        cache[key] = {"files": stats, "fingerprint": fingerprint}
        _write_cache(cache_dir, cache)
    return fingerprint


def model_fingerprint(name: str, *, cache_dir: Path | None = None, backend: str = BACKEND,
                      write_cache: bool = True) -> str:
    """The fingerprint of model `name`; for a model whose files cannot be found,
    a hash of its name (weaker: it cannot see a change of weights)."""
    directory = model_dir(name)
    if directory is None:
        return "name-" + hashlib.sha256(f"{name}|{backend}".encode()).hexdigest()[: LENGTH - 5]
    return fingerprint_of_dir(directory, backend=backend, cache_dir=cache_dir, write_cache=write_cache)


def _read_cache(cache_dir: Path | None, name: str = _CACHE_FILE) -> dict:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache_dir: Path | None, cache: dict, name: str = _CACHE_FILE) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{name}.{os.getpid()}"
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_dir / name)
    except OSError as exc:  # a read-only data dir: the fingerprint is just not cached
        logger.debug("model fingerprint not cached: {}", exc)


def _runtime() -> str:
    """The libraries that run a model, with versions: an upgrade may change the maths
    under the same files, so cached canaries are keyed by them too."""
    from importlib import metadata

    out = []
    for name in ("torch", "transformers", "sentence-transformers"):
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=-")
    return ",".join(out)


#: Canaries of the bundled model as this release's libraries compute them (keyed as the cache
#: is: by fingerprint and library versions), so a new machine's first sync need not load the
#: model to show them. Remade by ``python -m imprint.fingerprint``; tests/test_fingerprint.py
#: checks them against the model.
PACKAGED_CANARIES = Path(__file__).with_name("canaries.json")


def canary_key(fingerprint: str) -> str:
    return f"{fingerprint}|{_runtime()}"


def cached_canaries(fingerprint: str, cache_dir: Path | None, *, packaged: bool = True) -> bytes:
    """The canary vectors cached for `fingerprint` run by the installed libraries
    (little-endian float32, one after another), else (with `packaged`) those packaged
    for the same, or b"" when none are."""
    import base64
    import binascii

    key = canary_key(fingerprint)
    found = [_read_cache(cache_dir, _CANARY_FILE).get(key)]
    if packaged:
        found.append(_read_cache(PACKAGED_CANARIES.parent, PACKAGED_CANARIES.name).get(key))
    for value in found:
        if not isinstance(value, str) or not value:
            continue
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
    return b""


def cache_canaries(fingerprint: str, vectors: bytes, cache_dir: Path | None) -> None:
    import base64

    cache = _read_cache(cache_dir, _CANARY_FILE)
    cache[canary_key(fingerprint)] = base64.b64encode(vectors).decode()
    _write_cache(cache_dir, cache, _CANARY_FILE)


def canary_agreement(ours: bytes, theirs: bytes) -> float:
    """The lowest cosine between our canary vectors and a peer's (-1.0 when theirs
    are missing or shaped otherwise: they cannot agree)."""
    import numpy as np

    if not ours or len(theirs) != len(ours) or len(ours) % (4 * len(CANARIES)):
        return -1.0
    a = np.frombuffer(ours, "<f4").reshape(len(CANARIES), -1).astype(np.float64)
    b = np.frombuffer(theirs, "<f4").reshape(len(CANARIES), -1).astype(np.float64)
    if not np.isfinite(b).all():
        return -1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not norms.all():
        return -1.0
    return float(((a * b).sum(axis=1) / norms).min())


def _package_canaries() -> None:
    """Compute the bundled model's canaries with the installed libraries and keep them in the
    package (:data:`PACKAGED_CANARIES`), beside those of other library versions."""
    import base64

    import numpy as np

    from imprint.actors.embedder import (
        encode,
        load_model,
        precision_setting,
        resolve_precision,
    )
    from imprint.config import DEFAULT_MODEL

    fingerprint = model_fingerprint(DEFAULT_MODEL, write_cache=False)
    vectors = encode(load_model(DEFAULT_MODEL), CANARIES, resolve_precision(precision_setting()))
    packaged = _read_cache(PACKAGED_CANARIES.parent, PACKAGED_CANARIES.name)
    packaged[canary_key(fingerprint)] = base64.b64encode(np.asarray(vectors, dtype="<f4").tobytes()).decode()
    PACKAGED_CANARIES.write_text(json.dumps(packaged, indent=1, sort_keys=True) + "\n")
    print(f"{PACKAGED_CANARIES}: {canary_key(fingerprint)}")


if __name__ == "__main__":
    _package_canaries()
