"""`imprint reembed`: a store whose vectors come from another model is refused by search
(which names the way out) until reembed converts it; nothing else about it changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from imprint.fingerprint import model_fingerprint
from imprint.messages.records import vector_from_field
from tests.conftest import stop_services

pytestmark = pytest.mark.timeout(300)

Run = Callable[..., Any]
FP = model_fingerprint("all-MiniLM-L6-v2")
OTHER = "00000000000000ff"


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return result


def shard(data: Path) -> Path:
    [path] = (data / "workspaces").glob("*/memories")
    return path


def pretend_another_model_made_it(data: Path) -> None:
    """What switching models looks like to a store: its vectors are another fingerprint's."""
    stop_services(data)  # the store is changed behind imprint's back: closed first, as after a reboot
    meta_file = shard(data) / "imprint-store.json"
    meta = json.loads(meta_file.read_text())
    meta.update(model=OTHER, model_name="some-other-model")
    meta_file.write_text(json.dumps(meta))


def test_a_store_of_another_model_is_refused_then_reembedded(imprint_cli: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    texts = ["The ferry leaves at six.", "Backups rotate weekly, kept for a month.", "The wiki moved to docs/."]
    ok(imprint_cli(data, "import", "-", input="\n".join(
        json.dumps({"content": t, "project": "p", "timestamp": 1_700_000_000.0 + i}) for i, t in enumerate(texts))))
    before = ok(imprint_cli(data, "export")).stdout
    ok(imprint_cli(data, "forget", json.loads(before.splitlines()[0])["id"], "--yes"))
    before = ok(imprint_cli(data, "export")).stdout
    pretend_another_model_made_it(data)

    refused = imprint_cli(data, "search", "ferry")
    assert refused.returncode != 0 and "imprint reembed" in refused.stderr and len(refused.stderr.splitlines()) == 1

    done = ok(imprint_cli(data, "--json", "reembed"))
    assert json.loads(done.stdout) == {"reembedded": 2, "model": FP}
    assert ok(imprint_cli(data, "export")).stdout == before  # same records; the forgotten one stays forgotten
    rows = [json.loads(line) for line in ok(imprint_cli(data, "export", "--vectors")).stdout.splitlines()]
    assert {r["vector_model"] for r in rows} == {FP} and all(len(vector_from_field(r["vector"], 384)) == 384 for r in rows)
    kept = json.loads(before.splitlines()[-1])["content"]
    assert kept in ok(imprint_cli(data, "search", kept, "-k", "1")).stdout  # this model's vectors now
    again = ok(imprint_cli(data, "reembed"))
    assert "nothing to do" in again.stdout
    assert not list(shard(data).parent.glob("memories.*"))  # no staging or old shard left behind


def test_a_swap_cut_in_half_is_undone_on_the_next_open(imprint_cli: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint_cli(data, "add", "kept through a crash", "--project", "p"))
    path = shard(data)
    stop_services(data)  # the crash took the service with it
    shutil.move(path, path.with_name("memories.previous"))  # the crash: renamed away, the new one not yet in
    assert "kept through a crash" in ok(imprint_cli(data, "export")).stdout
    assert path.exists() and not path.with_name("memories.previous").exists()


def test_nothing_to_reembed_on_an_empty_data_dir(imprint_cli: Run, tmp_path: Path) -> None:
    assert "nothing to re-embed" in ok(imprint_cli(tmp_path / "empty", "reembed")).stdout
