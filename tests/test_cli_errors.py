"""Whatever a user types, no Python traceback reaches them: one line, exit 2
for a usage error, 1 for a runtime one."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("join", "ws://127.0.0.1:99999/room", "--pin", "Ab3xY9Kq"),
        ("join", "::::/room", "--pin", "Ab3xY9Kq"),
        ("join", "ws://127.0.0.1:8430/" + "r" * 5000, "--pin", "Ab3xY9Kq"),
        ("join", "127.0.0.1:8430/room", "--pin", "short"),
        ("serve", "--relay", "ws://127.0.0.1:99999"),
        ("serve", "--relay", "::::"),
        ("serve", "--listen", "0.0.0.0:http"),
    ],
)
def test_bad_addresses_are_one_line_usage_errors(tmp_path: Path, imprint_cli, args: tuple[str, ...]) -> None:
    proc = imprint_cli(tmp_path / "data", *args)
    line = one_line(proc)
    assert proc.returncode == 2, proc
    assert line.startswith("imprint: error: ") and len(line) < 300


def test_a_relay_that_does_not_answer_is_a_one_line_runtime_error(tmp_path: Path, imprint_cli) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = imprint_cli(tmp_path / "data", "serve", "--relay", f"ws://127.0.0.1:{port}", "--json", timeout=90)
    assert proc.returncode == 1, proc
    assert "cannot reach the relay" in one_line(proc)
    events = [json.loads(line)["event"] for line in proc.stdout.splitlines() if line.strip()]
    assert "room" not in events, events  # no PIN and no command for a relay that is not there


def test_a_second_dashboard_on_a_data_dir_in_use_is_one_line(tmp_path: Path, imprint_cli) -> None:
    from imprint.config import Settings
    from imprint.local import LocalActors
    from imprint.storage import StoreMeta
    from imprint.storage.edge import EdgeBackend

    settings = Settings(data_dir=tmp_path / "data").prepare()
    made = EdgeBackend(settings.memories_path)
    made.create(StoreMeta(dimension=384))  # a store exists ...
    made.close()
    with LocalActors(settings, facts=False):  # the first holder of the store
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = imprint_cli(settings.data_dir, "ui", "--no-browser", "--port", str(port), timeout=90)
    assert proc.returncode == 1, proc
    assert "open in another imprint process" in "\n".join(proc.stderr.splitlines()[-1:])
    assert "Traceback" not in proc.stderr


def test_the_dashboard_port_in_use_is_one_line(tmp_path: Path, imprint_cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = imprint_cli(tmp_path / "data", "ui", "--no-browser", "--port", str(port), timeout=60)
    assert proc.returncode == 1, proc
    assert "cannot serve the dashboard" in one_line(proc)


def test_an_unknown_model_fails_at_once_naming_what_is_installed(tmp_path: Path, imprint_cli) -> None:
    import time

    started = time.monotonic()
    done = imprint_cli(tmp_path / "data", "--model", "all-mpnet-base-v2", "add", "hello")
    took = time.monotonic() - started
    assert done.returncode == 1
    assert "'all-mpnet-base-v2' is not on this machine" in done.stderr and "all-MiniLM-L6-v2" in done.stderr
    assert "Traceback" not in done.stderr
    # It used to try the model hub for over a minute; a bound, not a benchmark. It is checked before
    # anything else: no service started for it, no data dir made.
    assert took < 20, took
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("args", [("search", "x"), ("export",), ("fact", "list"), ("show", "a.md")])
def test_reading_a_data_dir_that_does_not_exist_creates_nothing(tmp_path: Path, imprint_cli, args: tuple[str, ...]) -> None:
    missing = tmp_path / "mistyped"
    done = imprint_cli(missing, *args)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"imprint: error: there is no imprint data dir at {missing} (nothing was created "
                                   "there): check --data-dir / IMPRINT_DATA_DIR; `imprint add` or `imprint import` "
                                   "starts one")
    assert not missing.exists()


def test_import_errors_name_the_line_in_plain_words(tmp_path: Path, imprint_cli) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"content": "a good line"}\n{"content": "cut short\n[1, 2]\n{"project": "x"}\nnot json at all\n')
    done = imprint_cli(tmp_path / "data", "import", str(path))
    assert done.returncode == 1 and "inserted 1" in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("imprint: line")]
    assert lines[0].startswith("imprint: line 2: rejected: not JSON: it ends before the record is complete"), lines
    assert lines[1] == "imprint: line 3: rejected: a record is a JSON object ({…}), not `array`", lines
    assert lines[2].startswith("imprint: line 4: rejected: the record has no field `content`"), lines
    assert lines[3].startswith("imprint: line 5: rejected: not JSON ("), lines
    assert "truncated" not in done.stderr and "malformed" not in done.stderr


def _read_only_mount_works(tmp_path: Path) -> str:
    """Why a read-only bind mount cannot be made here ("" when it can)."""
    import shutil

    if shutil.which("unshare") is None:
        return "no `unshare` on this machine (util-linux)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
                            f"mount -o remount,bind,ro {tmp_path} && ! touch {tmp_path}/probe"],
                           capture_output=True, text=True, timeout=30)
    return "" if probe.returncode == 0 else f"no read-only bind mount in a user namespace: {probe.stderr.strip()}"


@pytest.mark.timeout(240)
def test_a_data_dir_on_read_only_media_is_read_and_left_untouched(tmp_path: Path, imprint_cli) -> None:
    """A backup on read-only media: reading commands work (from a private copy where Qdrant
    Edge or SQLite's log cannot be read in place), writing ones say why not, nothing changes."""
    import hashlib
    import sys
    import tempfile

    from tests.conftest import cli_env, stop_services

    if why := _read_only_mount_works(tmp_path):
        pytest.skip(why)
    src, backup = tmp_path / "src", tmp_path / "backup"
    assert imprint_cli(src, "add", "the deploy needs AWS credentials", "--project", "ops").returncode == 0
    assert imprint_cli(src, "fact", "add", "alice", "works_at", "acme").returncode == 0
    # copied while the service runs: the new fact may still be in SQLite's log (facts.db-wal)
    subprocess.run(["cp", "-a", str(src), str(backup)], check=True)
    stop_services(tmp_path)
    for leftover in ("service.sock", "service.lock"):
        (backup / leftover).unlink(missing_ok=True)

    def fingerprint() -> dict[str, str]:
        return {str(f.relative_to(backup)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(backup.rglob("*")) if f.is_file()}

    before = fingerprint()
    copies = set(Path(tempfile.gettempdir()).glob("imprint-read-only-*"))

    def ro(*args: str) -> subprocess.CompletedProcess[str]:
        inner = " ".join(["exec", sys.executable, "-m", "imprint", "--data-dir", str(backup), *map(_quote, args)])
        script = f"mount --bind {backup} {backup} && mount -o remount,bind,ro {backup} && {inner}"
        return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=180,
                              env=cli_env())

    status = ro("status")
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "data dir is read-only" in status.stdout and "facts active             1" in status.stdout, status.stdout
    found = ro("search", "deployment credentials")
    assert found.returncode == 0 and "the deploy needs AWS credentials" in found.stdout, found.stderr
    exported = ro("export")
    assert [json.loads(line)["content"] for line in exported.stdout.splitlines()] == ["the deploy needs AWS credentials"]
    listed = ro("--json", "fact", "list")
    assert [json.loads(line)["object"] for line in listed.stdout.splitlines()] == ["acme"], listed.stderr
    refused = ro("add", "one more")
    assert refused.returncode == 2 and one_line(refused).startswith(f"imprint: error: data dir {backup} is not "
                                                                    "writable")
    assert fingerprint() == before  # not a byte changed
    assert set(Path(tempfile.gettempdir()).glob("imprint-read-only-*")) == copies  # its copies are gone


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
