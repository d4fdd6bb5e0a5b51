"""What the benchmarks share: the checkout's root on sys.path, the words their texts
are made of, and how to run the imprint CLI offline against a data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = (
    "deploy cluster database replica schema migration token cache queue worker agent memory embedding vector "
    "relay session review release branch merge config secret rotate backup restore latency budget owner "
    "incident runbook alert metric dashboard service api client server network storage index search"
).split()


def env() -> dict[str, str]:
    """The environment of an imprint child: no IMPRINT_ settings of the caller, nothing downloaded."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("IMPRINT_")}
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    return e


def imprint(data: Path, *args: str) -> list[str]:
    """The command line of `imprint --data-dir DATA ARGS…` in this interpreter."""
    return [sys.executable, "-m", "imprint", "--data-dir", str(data), *args]
