"""`export --vectors` and `import` of records that carry their vector and model
fingerprint: restore and move a store without re-embedding, never mixing models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from imprint.fingerprint import model_fingerprint
from imprint.messages.records import vector_from_field, vector_to_text

pytestmark = pytest.mark.timeout(300)

Run = Callable[..., Any]
FP = model_fingerprint("all-MiniLM-L6-v2")


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return result


def test_vectors_round_trip_exactly_and_are_stored_as_they_come(imprint_cli: Run, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    texts = ["The lighthouse keeper repainted the spiral staircase red.", "Invoices are due on the first Monday."]
    source = "\n".join(json.dumps({"content": t, "project": "p", "timestamp": 1_700_000_000.0 + i})
                       for i, t in enumerate(texts))
    ok(imprint_cli(src, "import", "-", input=source))
    exported = ok(imprint_cli(src, "export", "--vectors")).stdout
    rows = lines_of(exported)
    assert [r["vector_model"] for r in rows] == [FP, FP]
    assert all(len(vector_from_field(r["vector"], 384)) == 384 for r in rows)

    # A planted vector with the right fingerprint is stored exactly as given: nothing is re-embedded.
    planted = [1.0] + [0.0] * 383
    rows[0]["vector"] = vector_to_text(planted)
    restored = ok(imprint_cli(dst, "--json", "import", "-", input="\n".join(json.dumps(r) for r in rows)))
    assert json.loads(restored.stdout) == {"inserted": 2, "updated": 0, "skipped": 0, "rejected": 0, "vectors_reused": 2}
    again = {r["id"]: r for r in lines_of(ok(imprint_cli(dst, "export", "--vectors")).stdout)}
    assert vector_from_field(again[rows[0]["id"]]["vector"], 384) == planted
    assert again[rows[1]["id"]]["vector"] == rows[1]["vector"]  # bit for bit
    # the records themselves are what was exported
    strip = lambda r: {k: v for k, v in r.items() if k not in ("vector", "vector_model")}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, again.values()))) == sorted(map(json.dumps, map(strip, rows)))


def test_vectors_of_another_model_are_refused_unless_reembed(imprint_cli: Run, tmp_path: Path) -> None:
    line = {"content": "A memory embedded elsewhere.", "vector": vector_to_text([0.5] * 384),
            "vector_model": "0123456789abcdef"}
    refused = imprint_cli(tmp_path, "import", "-", input=json.dumps(line))
    assert refused.returncode == 1
    assert "another model (fingerprint 0123456789abcdef" in refused.stderr and "--reembed" in refused.stderr
    assert refused.stderr.count("\n") <= 2 and "Traceback" not in refused.stderr
    assert json.loads(ok(imprint_cli(tmp_path, "--json", "status")).stdout)["memories"] == 0  # nothing stored

    done = ok(imprint_cli(tmp_path, "--json", "import", "--reembed", "-", input=json.dumps(line)))
    assert json.loads(done.stdout)["inserted"] == 1 and json.loads(done.stdout)["vectors_reused"] == 0
    [stored] = lines_of(ok(imprint_cli(tmp_path, "export", "--vectors")).stdout)
    assert stored["vector_model"] == FP and stored["vector"] != line["vector"]  # embedded here, by this model


def test_bad_vectors_are_named_and_skipped_and_bare_vectors_are_embedded(imprint_cli: Run, tmp_path: Path) -> None:
    rows = [
        {"content": "short vector", "vector": vector_to_text([0.1] * 10), "vector_model": FP},
        {"content": "not base64", "vector": "%%%", "vector_model": FP},
        {"content": "all zeros", "vector": [0.0] * 384, "vector_model": FP},
        {"content": "a list of numbers is fine", "vector": [0.05] * 384, "vector_model": FP},
        {"content": "a vector without a fingerprint is embedded again", "vector": [0.05] * 384},
    ]
    result = imprint_cli(tmp_path, "--json", "import", "-", input="\n".join(json.dumps(r) for r in rows))
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"inserted": 2, "updated": 0, "skipped": 0, "rejected": 3, "vectors_reused": 1}
    assert "line 1: rejected: `vector` has 10 dimensions" in result.stderr
    assert "line 2: rejected: `vector` is neither" in result.stderr
    assert "line 3: rejected: `vector` holds a non-finite number or only zeros" in result.stderr
    stored = {r["content"]: r for r in lines_of(ok(imprint_cli(tmp_path, "export", "--vectors")).stdout)}
    assert set(stored) == {"a list of numbers is fine", "a vector without a fingerprint is embedded again"}
    assert stored["a vector without a fingerprint is embedded again"]["vector"] != vector_to_text([0.05] * 384)


def test_facts_have_no_vectors(imprint_cli: Run, tmp_path: Path) -> None:
    result = imprint_cli(tmp_path, "export", "--dataset", "facts", "--vectors")
    assert result.returncode != 0 and "memories only" in result.stderr
