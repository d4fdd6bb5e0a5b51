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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from loguru import logger

from imprint.actors.embedder import MAX_EMBED_CHARS, resolve_model

#: How the default backend turns text into vectors; part of every fingerprint.
#: Change it whenever what comes out for the same files would change.
BACKEND = f"sentence-transformers/torch/float32/normalized/cut-{MAX_EMBED_CHARS}-chars"
#: Files of a model directory that decide no vector (docs, training notes, VCS files).
_IGNORED = ("readme", ".git", "data_config.json", "train_script", "license")
_CACHE_FILE = "model-fingerprints.json"
#: Hex digits kept: 64 bits tell models apart; the full hash adds nothing but width.
LENGTH = 16


def model_dir(name: str) -> Path | None:
    """The local directory of a model name (the bundled default, a path, or the
    Hugging Face cache, offline), or None if it cannot be found without a download."""
    target = Path(resolve_model(name))
    if target.is_dir():
        return target
    try:
        from huggingface_hub import snapshot_download

        for repo in (name, f"sentence-transformers/{name}"):
            try:
                return Path(snapshot_download(repo, local_files_only=True))
            except Exception:
                continue
    except ImportError:
        pass
    return None


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


def _read_cache(cache_dir: Path | None) -> dict:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / _CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache_dir: Path | None, cache: dict) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{_CACHE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_dir / _CACHE_FILE)
    except OSError as exc:  # a read-only data dir: the fingerprint is just not cached
        logger.debug("model fingerprint not cached: {}", exc)
