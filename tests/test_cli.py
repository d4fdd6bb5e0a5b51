"""The `imprint` CLI by subprocess: `python -m imprint --data-dir DIR …`.

Each command that writes or searches memories loads the model (~5 s), so a
300-record corpus is imported once per module and copied for tests that
change it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest

from imprint.fingerprint import model_fingerprint
from tests.conftest import stop_services
from imprint.messages.records import MemoryRecord, memory_id

Run = Callable[..., "subprocess.CompletedProcess[str]"]

pytestmark = pytest.mark.timeout(180)

# ---------------------------------------------------------------- a corpus of 300 records

SUBJECTS = ["The project manager", "Our landlord", "My grandmother", "The new intern", "The football coach", "A local baker",
            "The city council", "The database administrator", "Our neighbour", "The school librarian", "The tax advisor", "The chef"]
ACTIONS = ["scheduled a meeting about", "complained loudly about", "wrote a long report on", "forgot everything about",
           "asked for a budget for", "gave a short talk on", "bought a book about", "posted a photo of", "argued with the team over",
           "made a spreadsheet of", "cancelled the plans for", "was excited about"]
OBJECTS = ["the quarterly sales figures", "the broken heating system", "a sourdough recipe", "the summer holiday",
           "the parking permits", "the server migration", "the chess tournament", "the garden fence", "a new mobile phone",
           "the wedding invitations", "the recycling rules", "the marathon training plan"]
TARGET = {
    "content": "The lighthouse keeper repainted the spiral staircase bright red during the autumn storms.",
    "project": "beta",
    "source": "diary.md",
    "timestamp": 1_650_000_000.0,
}
TARGET_ID = memory_id(TARGET["project"], TARGET["source"], TARGET["content"])
PARAPHRASE = "during last fall's storms the man who tends the lighthouse gave its winding stairs a new coat of red paint"
CORPUS_SIZE = 300


def corpus_rows() -> list[dict[str, Any]]:
    combos = list(itertools.product(SUBJECTS, ACTIONS, OBJECTS))
    random.Random(3).shuffle(combos)
    rows: list[dict[str, Any]] = [
        {
            "content": f"{s} {a} {o}.",
            "project": ("alpha", "beta", "gamma")[i % 3],
            "source": f"notes/{i % 17}.md",
            "chunk_index": i % 5,
            "timestamp": 1_700_000_000.0 + i,
        }
        for i, (s, a, o) in enumerate(combos[: CORPUS_SIZE - 1])
    ]
    rows.insert(CORPUS_SIZE // 2, TARGET)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- helpers


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with a one-line error and no traceback; return that line."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "no error message on stderr"
    assert lines[-1].startswith("imprint: error: "), proc.stderr
    return lines[-1]


def json_objects(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line is one JSON object: nothing else is allowed in --json mode."""
    objects = []
    for line in stdout.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def export_lines(run: Run, data_dir: Path, *extra: str) -> list[str]:
    return ok(run(data_dir, *extra, "export")).stdout.splitlines()


def copy_data_dir(src: Path, dest: Path) -> Path:
    stop_services(src)  # its store closed before it is copied
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("imprint.sock", "service.lock"))
    return dest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, imprint_cli: Run) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """A data dir holding the 300-record corpus: (data_dir, corpus file, the import's process)."""
    base = tmp_path_factory.mktemp("corpus")
    path = write_jsonl(base / "corpus.jsonl", corpus_rows())
    data_dir = base / "data"
    proc = imprint_cli(data_dir, "--json", "import", str(path), timeout=170)
    return data_dir, path, proc


# ---------------------------------------------------------------- import, search, export


def test_done_when_import_search_reimport_export(corpus: tuple[Path, Path, Any], imprint_cli: Run) -> None:
    data_dir, path, first = corpus
    assert json_objects(ok(first).stdout) == [{"inserted": CORPUS_SIZE, "updated": 0, "skipped": 0, "rejected": 0, "vectors_reused": 0}]

    hits = json_objects(ok(imprint_cli(data_dir, "search", PARAPHRASE, "-k", "3", "--json")).stdout)
    assert len(hits) == 3
    assert [set(h) for h in hits] == [{"id", "score", "content", "project", "source", "chunk_index"}] * 3
    assert hits[0] == {**{k: TARGET[k] for k in ("content", "project", "source")}, "id": TARGET_ID, "score": hits[0]["score"],
                       "chunk_index": 0}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]

    again = ok(imprint_cli(data_dir, "import", str(path)))
    assert again.stdout.strip() == f"inserted 0, skipped {CORPUS_SIZE} (already there)"

    lines = export_lines(imprint_cli, data_dir)
    assert len(lines) == CORPUS_SIZE
    expected = {memory_id(r["project"], r["source"], r["content"]) for r in corpus_rows()}
    assert {json.loads(line)["id"] for line in lines} == expected


def test_export_is_stable_spec_shaped_and_keeps_timestamps(corpus: tuple[Path, Path, Any], imprint_cli: Run) -> None:
    data_dir = corpus[0]
    first = ok(imprint_cli(data_dir, "export")).stdout
    second = ok(imprint_cli(data_dir, "export", "--dataset", "memories")).stdout
    assert first == second and first.count("\n") == CORPUS_SIZE
    decoder = msgspec.json.Decoder(MemoryRecord)
    by_id = {}
    for line in first.splitlines():
        obj = json.loads(line)
        assert set(obj) == {"id", "content", "project", "type", "tags", "source", "chunk_index", "source_mtime", "timestamp"}
        by_id[obj["id"]] = decoder.decode(line)
    assert by_id[TARGET_ID].timestamp == TARGET["timestamp"]
    # another workspace is another collection: empty, and opening it read-only creates nothing
    assert ok(imprint_cli(data_dir, "--workspace", "other", "export")).stdout == ""


def test_search_filters_by_project_in_human_output(corpus: tuple[Path, Path, Any], imprint_cli: Run) -> None:
    data_dir = corpus[0]
    proc = ok(imprint_cli(data_dir, "search", PARAPHRASE, "-k", "4", "--project", "gamma"))
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert re.match(r"^\d\.\d{3}  [0-9a-f]{16}  \[gamma\]  ", line), line
    assert TARGET_ID not in proc.stdout


def test_search_arguments_are_checked_before_anything_loads(tmp_path: Path, imprint_cli: Run) -> None:
    assert "query is empty" in one_line_error(imprint_cli(tmp_path, "search", "   "))
    assert "-k must be between" in one_line_error(imprint_cli(tmp_path, "search", "x", "-k", "0"))


def test_add_prints_the_id_then_says_already_there(tmp_path: Path, imprint_cli: Run) -> None:
    text = "Deploys happen on Thursdays after the 2pm freeze."
    args = ("add", text, "--project", "ops", "--source", "wiki/deploy.md", "--tag", "lang=en", "--tag", "topics=deploy", "--tag", "topics=ci")
    expected_id = memory_id("ops", "wiki/deploy.md", text)

    assert ok(imprint_cli(tmp_path, *args)).stdout == expected_id + "\n"
    assert ok(imprint_cli(tmp_path, *args)).stdout == f"{expected_id} (already there)\n"

    [line] = export_lines(imprint_cli, tmp_path)
    record = json.loads(line)
    assert (record["id"], record["content"], record["project"], record["source"]) == (expected_id, text, "ops", "wiki/deploy.md")
    assert record["tags"] == {"lang": "en", "layer": "", "kind": "", "domain": [], "topics": ["deploy", "ci"]}
    assert record["timestamp"] > 0


def test_a_text_edited_past_character_200_is_updated_on_add_and_import(tmp_path: Path, imprint_cli: Run) -> None:
    head = "The deploy checklist, which is long enough that its first two hundred characters never change. " * 3
    first, second = head + "Step 9: page the on-call.", head + "Step 9: page the on-call and the release owner."
    memory = memory_id("ops", "", first)
    assert memory == memory_id("ops", "", second)  # the id sees only the first 200 characters
    ok(imprint_cli(tmp_path, "add", first, "--project", "ops"))
    assert ok(imprint_cli(tmp_path, "add", second, "--project", "ops")).stdout == \
        f"{memory} (updated: a newer text of this memory)\n"
    assert [json.loads(line)["content"] for line in export_lines(imprint_cli, tmp_path)] == [second]

    # An import holding an old text (with its old time) and a newer one of another memory tells what it did.
    later = head.replace("deploy", "rollback") + "v1"
    ok(imprint_cli(tmp_path, "add", later, "--project", "ops"))
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"content": first, "project": "ops", "timestamp": 1.0},
        {"content": later[:-1] + "2", "project": "ops"},
        {"content": "brand new", "project": "ops"},
    ])
    proc = ok(imprint_cli(tmp_path, "import", str(src)))
    assert proc.stdout.strip() == "inserted 1, updated 1 (newer texts of memories held), skipped 1 (already there)"
    contents = sorted(json.loads(line)["content"] for line in export_lines(imprint_cli, tmp_path))
    assert contents == sorted([second, later[:-1] + "2", "brand new"])


def test_add_refuses_a_bad_tag(tmp_path: Path, imprint_cli: Run) -> None:
    assert "bad --tag 'colour=red'" in one_line_error(imprint_cli(tmp_path, "add", "text", "--tag", "colour=red"))


def test_import_refuses_unknown_tag_keys_and_negative_times_like_add(tmp_path: Path, imprint_cli: Run) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"content": "fine", "tags": {"lang": "en", "topics": ["a"]}},
        {"content": "unknown tag key", "tags": {"colour": "red"}},
        {"content": "before 1970", "timestamp": -5.0},
        {"content": "negative mtime", "source_mtime": -1},
    ])
    proc = imprint_cli(tmp_path / "data", "import", str(src))
    assert proc.returncode == 1, proc
    assert "line 2: rejected: unknown tag key 'colour'" in proc.stderr
    assert "line 3: rejected:" in proc.stderr and "$.timestamp" in proc.stderr
    assert "line 4: rejected:" in proc.stderr and "$.source_mtime" in proc.stderr
    assert "inserted 1" in proc.stdout
    assert [json.loads(line)["content"] for line in export_lines(imprint_cli, tmp_path / "data")] == ["fine"]


def test_add_dash_reads_the_text_from_standard_input(tmp_path: Path, imprint_cli: Run) -> None:
    text = "line one\nline two " + "x" * 300_000  # longer than a shell argument may be
    proc = ok(imprint_cli(tmp_path / "data", "add", "-", "--project", "p", "--json", input=text))
    [added] = json_objects(proc.stdout)
    assert added["id"] == memory_id("p", "", text) and added["inserted"] is True
    [record] = [json.loads(line) for line in export_lines(imprint_cli, tmp_path / "data")]
    assert record["content"] == text and record["content"] != "-"
    assert "not UTF-8" in one_line_error(imprint_cli(tmp_path / "data", "add", "-", input=b"\xff\xfe bad"))


def test_import_one_good_two_bad_lines_stores_the_good_one_and_exits_1(tmp_path: Path, imprint_cli: Run) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"content": "the only good line", "project": "p"}\nthis is not json\n{"content": 5}\n')
    proc = imprint_cli(tmp_path / "data", "import", str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    named = re.findall(r"^imprint: line (\d+): rejected", proc.stderr, flags=re.M)
    assert named == ["2", "3"]
    assert proc.stdout.strip() == "inserted 1, skipped 0 (already there), rejected 2 lines"
    [line] = export_lines(imprint_cli, tmp_path / "data")
    assert json.loads(line)["content"] == "the only good line"


def test_import_from_stdin_prints_only_json(tmp_path: Path, imprint_cli: Run) -> None:
    lines = '{"content": "read from standard input"}\n\n{"content": "second piped line", "source": "pipe"}\n'
    proc = ok(imprint_cli(tmp_path, "import", "-", "--json", input=lines))
    assert json_objects(proc.stdout) == [{"inserted": 2, "updated": 0, "skipped": 0, "rejected": 0, "vectors_reused": 0}]
    assert {json.loads(line)["content"] for line in export_lines(imprint_cli, tmp_path)} == {
        "read from standard input",
        "second piped line",
    }


def test_non_utf8_and_oversize_lines_are_named_and_nothing_is_lost(
    corpus: tuple[Path, Path, Any], tmp_path: Path, imprint_cli: Run
) -> None:
    data_dir = copy_data_dir(corpus[0], tmp_path / "data")
    before = export_lines(imprint_cli, data_dir)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"content": "caf\xe9 written in latin-1"}\n'
        b'{"content": "a new line in good UTF-8 \xe2\x9c\x93"}\n'
        b"\xff\xfe\x00garbage\n"
        + json.dumps({"content": "x" * (1024 * 1024 + 1)}).encode()
        + b"\n"
        + (json.dumps(TARGET) + "\n").encode()
    )
    proc = imprint_cli(data_dir, "import", str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    reasons = dict(re.findall(r"^imprint: line (\d+): rejected: (.*)$", proc.stderr, flags=re.M))
    assert set(reasons) == {"1", "3", "4"}
    assert reasons["1"] == reasons["3"] == "not UTF-8 text"
    assert "larger than 1 MiB" in reasons["4"]
    assert proc.stdout.strip() == "inserted 1, skipped 1 (already there), rejected 3 lines"

    after = export_lines(imprint_cli, data_dir)
    assert len(after) == CORPUS_SIZE + 1
    assert set(before) <= set(after)  # every stored record is byte-for-byte unchanged
    assert "a new line in good UTF-8 ✓" in {json.loads(line)["content"] for line in after}


def test_an_interrupted_import_says_what_is_stored_and_the_rerun_skips_it(tmp_path: Path, imprint_cli: Run) -> None:
    import signal
    import time

    from tests.conftest import cli_env

    rows = [{"content": f"note {i}: " + " ".join(f"{w}{(i * 13 + j) % 101}" for j, w in enumerate(OBJECTS)),
             "project": "bulk"} for i in range(800)]
    path = tmp_path / "bulk.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    assert imprint_cli(data, "add", "warm the service up").returncode == 0

    def stored() -> int:
        return json.loads(ok(imprint_cli(data, "--json", "status")).stdout)["memories"] - 1

    importing = subprocess.Popen([sys.executable, "-m", "imprint", "--data-dir", str(data), "import", str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 120
    while stored() == 0:  # a first batch is in: stop it there, as Ctrl-C would
        assert importing.poll() is None and time.monotonic() < deadline, importing.communicate()
        time.sleep(0.2)
    importing.send_signal(signal.SIGINT)
    _, err = importing.communicate(timeout=60)
    assert importing.returncode == 130, err
    said = re.search(r"imprint: stopped at line ([\d,]+): ([\d,]+) new and 0 updated memories are stored; running the "
                     r"same import again skips them", err)
    assert said, err
    told = int(said[2].replace(",", ""))
    held = stored()
    assert 0 < told <= held < len(rows)  # what it says is stored is (at least) what is there

    rerun = json.loads(ok(imprint_cli(data, "--json", "import", str(path), timeout=300)).stdout)
    assert rerun["skipped"] == held and rerun["inserted"] == len(rows) - held
    assert stored() == len(rows)


def test_a_missing_import_file_is_a_one_line_error(tmp_path: Path, imprint_cli: Run) -> None:
    assert "cannot read" in one_line_error(imprint_cli(tmp_path, "import", str(tmp_path / "nope.jsonl")))


# ---------------------------------------------------------------- bad input


def test_empty_content_on_add_is_refused(tmp_path: Path, imprint_cli: Run) -> None:
    for text in ("", "   \n\t"):
        assert "content is empty" in one_line_error(imprint_cli(tmp_path, "add", text))
    assert export_lines(imprint_cli, tmp_path) == []


def test_content_over_8_mib_on_add_is_refused(tmp_path: Path) -> None:
    # Linux caps one argv string at 128 KiB, so the oversize text is built inside the child,
    # which runs the real entry point with it. (Up to 8 MiB a text is stored as its chunks.)
    code = (
        "import sys; from imprint.main import main; "
        f"sys.exit(main(['--data-dir', {str(tmp_path)!r}, 'add', 'x ' * (4 * 1024 * 1024 + 1)]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPRINT_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert "larger than 8 MiB" in one_line_error(proc)
    assert not (tmp_path / "qdrant").exists()  # refused before any store was opened


@pytest.mark.parametrize("where", ["before", "after"])
def test_workspace_with_path_characters_is_refused(tmp_path: Path, imprint_cli: Run, where: str) -> None:
    data_dir = tmp_path / "data"
    args = ("--workspace", "../x", "status") if where == "before" else ("status", "--workspace", "../x")
    line = one_line_error(imprint_cli(data_dir, *args))
    assert "invalid workspace name '../x'" in line
    assert not data_dir.exists() and not (tmp_path / "x").exists()


def test_unwritable_data_dir_is_refused(tmp_path: Path, imprint_cli: Run) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("a regular file cannot hold a data dir")
    unwritable = [a_file / "data"]
    if os.geteuid() != 0:  # root writes through directory permissions
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        unwritable.append(read_only)
    for data_dir in unwritable:
        line = one_line_error(imprint_cli(data_dir, "add", "hello"))
        assert f"data dir {data_dir} is not writable" in line
        # A command that only reads creates nothing, so it says there is nothing there.
        line = one_line_error(imprint_cli(data_dir, "fact", "list"))
        assert f"data dir {data_dir} is not writable" in line or f"no imprint data dir at {data_dir}" in line
    assert a_file.read_text() == "a regular file cannot hold a data dir"


def test_unknown_model_is_a_one_line_error_and_changes_nothing(
    corpus: tuple[Path, Path, Any], tmp_path: Path, imprint_cli: Run
) -> None:
    data_dir = copy_data_dir(corpus[0], tmp_path / "data")
    before = export_lines(imprint_cli, data_dir)
    line = one_line_error(imprint_cli(data_dir, "--model", "does-not-exist", "add", "a brand new memory"))
    assert "'does-not-exist'" in line
    assert export_lines(imprint_cli, data_dir) == before


# ---------------------------------------------------------------- facts


def test_fact_add_list_end_and_export(tmp_path: Path, imprint_cli: Run) -> None:
    [tea] = json_objects(ok(imprint_cli(tmp_path, "--json", "fact", "add", "alice", "likes", "tea", "--source", "chat")).stdout)
    assert set(tea) == {"id", "subject", "predicate", "object", "valid_from", "ended", "source"}
    assert (tea["subject"], tea["predicate"], tea["object"], tea["ended"], tea["source"]) == ("alice", "likes", "tea", None, "chat")
    assert re.fullmatch(r"[0-9a-f]{16}", tea["id"])  # the id every machine gives this fact
    coffee_id = ok(imprint_cli(tmp_path, "fact", "add", "alice", "likes", "coffee")).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8}", coffee_id) and not tea["id"].startswith(coffee_id)
    ok(imprint_cli(tmp_path, "fact", "add", "bob", "works_at", "Acme"))

    listed = ok(imprint_cli(tmp_path, "fact", "list", "--subject", "alice")).stdout.splitlines()
    assert len(listed) == 2 and "alice —likes→ tea" in listed[0] and "alice —likes→ coffee" in listed[1]
    assert listed[0].startswith(tea["id"][:8] + "  ") and listed[1].startswith(coffee_id + "  ")

    # the number older versions printed (tea is row 1) still works this release, with a note
    old = ok(imprint_cli(tmp_path, "fact", "end", "1"))
    assert old.stdout.strip() == f"ended fact {tea['id'][:8]}"
    assert f"this fact's id is {tea['id'][:8]}, the same on every machine" in old.stderr
    open_facts = json_objects(ok(imprint_cli(tmp_path, "--json", "fact", "list", "--predicate", "likes")).stdout)
    assert [f["object"] for f in open_facts] == ["coffee"]
    every = json_objects(ok(imprint_cli(tmp_path, "fact", "list", "--all", "--json")).stdout)
    assert [(f["object"], f["ended"] is not None) for f in every] == [("tea", True), ("coffee", False), ("Acme", False)]
    assert ok(imprint_cli(tmp_path, "fact", "list", "--subject", "nobody")).stdout == "no facts\n"

    assert f"fact {tea['id'][:8]} already ended" in one_line_error(imprint_cli(tmp_path, "fact", "end", tea["id"][:5]))
    failed = imprint_cli(tmp_path, "--json", "fact", "end", "999")
    assert "no fact with id 999" in one_line_error(failed)
    assert json_objects(failed.stdout) == [{"event": "error", "message": "no fact with id 999"}]
    assert "subject is empty" in one_line_error(imprint_cli(tmp_path, "fact", "add", " ", "likes", "x"))
    assert "fact needs an action" in one_line_error(imprint_cli(tmp_path, "fact"))

    exported = ok(imprint_cli(tmp_path, "export", "--dataset", "facts")).stdout
    assert exported == ok(imprint_cli(tmp_path, "export", "--dataset", "facts")).stdout
    records = [json.loads(line) for line in exported.splitlines()]
    assert [(r["subject"], r["object"]) for r in records] == [("alice", "coffee"), ("alice", "tea"), ("bob", "Acme")]
    assert all(set(r) == {"subject", "predicate", "object", "valid_from", "ended", "source"} for r in records)
    assert next(r for r in records if r["object"] == "tea")["ended"] == every[0]["ended"]


# ---------------------------------------------------------------- status


def _tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its content: what a command may not change.
    (Not mtimes: opening a Qdrant Edge shard rewrites its config with the same bytes.)"""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_status_reports_dir_workspace_device_model_and_counts(
    corpus: tuple[Path, Path, Any], tmp_path: Path, imprint_cli: Run
) -> None:
    data_dir = copy_data_dir(corpus[0], tmp_path / "data")
    assert not (data_dir / "device_id.txt").exists()
    ok(imprint_cli(data_dir, "fact", "add", "a", "b", "c"))
    [status] = json_objects(ok(imprint_cli(data_dir, "status", "--json")).stdout)
    service = status.pop("service")  # the fact add above started the data dir's service
    assert service["pid"] > 0 and service["model_loaded"] is False
    assert status == {
        "data_dir": str(data_dir),
        "workspace": "default",
        "workspace_exists": True,
        "device_id": None,  # status creates nothing; the first sync makes the device key
        "model": "all-MiniLM-L6-v2",
        "model_fingerprint": model_fingerprint("all-MiniLM-L6-v2"),
        "store_model_fingerprint": model_fingerprint("all-MiniLM-L6-v2"),
        "dimension": 384,
        "memory_store": str(data_dir / "workspaces" / "default" / "memories"),
        "store_engine": "edge",
        "memories": CORPUS_SIZE,
        "facts_active": 1,
        "facts_ended": 0,
        "waiting_in_spool": 0,
        "last_sync": None,
        "vectors_unchecked": 0,
        "vectors_distrusted_from": [],
    }
    assert not (data_dir / "device_id.txt").exists()


def test_status_loads_no_model_and_changes_nothing(corpus: tuple[Path, Path, Any], tmp_path: Path, imprint_cli: Run) -> None:
    data_dir = copy_data_dir(corpus[0], tmp_path / "data")
    ok(imprint_cli(data_dir, "fact", "add", "a", "b", "c"))
    before = _tree(data_dir)
    # A model that cannot be loaded does not matter: status never loads one.
    proc = ok(imprint_cli(data_dir, "--model", str(tmp_path / "no-such-model"), "status"))
    assert "memories  " in proc.stdout.replace("memories      ", "memories  ") and str(CORPUS_SIZE) in proc.stdout
    assert _tree(data_dir) == before, "status wrote to the data dir"
    # Another workspace: reported empty, and not created.
    [other] = json_objects(ok(imprint_cli(data_dir, "--workspace", "status-only", "status", "--json")).stdout)
    assert (other["workspace_exists"], other["memories"], other["facts_active"]) == (False, 0, 0)
    assert not (data_dir / "workspaces" / "status-only").exists()
    assert _tree(data_dir) == before
    # A data dir that does not exist stays that way.
    [fresh] = json_objects(ok(imprint_cli(tmp_path / "nothing-here", "status", "--json")).stdout)
    assert fresh["memories"] == 0 and not (tmp_path / "nothing-here").exists()


# ---------------------------------------------------------------- entry points


def test_console_script_and_module_are_the_same_command(tmp_path: Path, imprint_cli: Run) -> None:
    script = Path(sys.executable).with_name("imprint")
    script = script if script.exists() else Path(shutil.which("imprint") or "imprint-not-installed")
    assert script.exists(), "the `imprint` console script is not installed"
    via_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    via_module = ok(imprint_cli(None, "--help"))
    assert via_script.returncode == 0
    assert via_script.stdout == via_module.stdout
    assert via_module.stdout.startswith("usage: imprint ")
    for command in ("add", "import", "export", "search", "fact", "status"):
        assert re.search(rf"^\s+{command}\s", via_module.stdout, flags=re.M), command


@pytest.mark.parametrize("command", ["", "add", "import", "export", "search", "fact", "status", "serve", "join", "sync",
                                     "relay", "trust", "demo", "ui"])
def test_help_speaks_to_users(imprint_cli: Run, command: str) -> None:
    text = ok(imprint_cli(None, *command.split(), "--help")).stdout
    for jargon in ("SPEC", "source document", "the original"):
        assert jargon not in text, f"{jargon!r} in `imprint {command} --help`"


def test_no_command_prints_usage_and_fails(imprint_cli: Run) -> None:
    proc = imprint_cli(None)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: imprint ")
