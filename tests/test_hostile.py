"""Hostile input reaching a terminal or a log: escapes shown, never obeyed; peers'
words never turn encryption off; nothing private left readable by others."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imprint.actors.trust_gate import parse_answer
from imprint.commands.render import stdin_approver
from imprint.messages.session import PeerInfo
from imprint.text import clip, visible

ESC = "\x1b"
HOSTILE = "evil\x1b[2J\x1b[1;1H\rDIFFERENT key? all fine\u202e"


def test_control_characters_are_shown_not_obeyed() -> None:
    assert visible("a\x1b[2Jb\x07c\u202ed\nline") == "a\\x1b[2Jb\\x07c\\u202ed\nline"
    assert clip("x\ny\rz", 100) == "x\\x0ay\\x0dz"
    assert clip("w" * 300, 10) == "w" * 9 + "…"


def test_the_approval_prompt_shows_a_hostile_hostname_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    peer = PeerInfo(hostname=HOSTILE, user="u\x1b]0;title\x07" + "x" * 200, os="o\x9b31m", fingerprint="0badc0de")
    assert parse_answer(stdin_approver(peer, "fingerprint 0badc0de is on your trust list with a DIFFERENT key")) == "reject"
    shown = err.getvalue()
    assert ESC not in shown and "\r" not in shown and "\u202e" not in shown and "\x9b" not in shown
    assert "\\x1b[2J" in shown and "DIFFERENT key" in shown
    assert max(len(line) for line in shown.splitlines()) < 120


def test_trust_list_shows_a_hand_edited_hostile_entry_escaped(tmp_path: Path, imprint_cli) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "trusted_devices.json").write_text(json.dumps([
        {"fingerprint": "0BADC0DE", "hostname": HOSTILE + "y" * 5000, "added": 10**20},
    ]))
    proc = imprint_cli(data, "trust", "list")
    assert proc.returncode == 0, proc.stderr
    assert ESC not in proc.stdout and "\r" not in proc.stdout
    assert "0badc0de" in proc.stdout and len(proc.stdout) < 300


def test_files_and_the_data_dir_are_private(tmp_path: Path, imprint_cli) -> None:
    data = tmp_path / "data"
    assert imprint_cli(data, "fact", "add", "a", "b", "c").returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    # A data dir an older imprint left open is closed on the next command.
    os.chmod(data, 0o755)
    assert imprint_cli(data, "fact", "list").returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_the_log_never_holds_local_variables_unless_verbose(tmp_path: Path) -> None:
    script = """
import sys
from pathlib import Path
from loguru import logger
from imprint.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "v", log_dir=Path(sys.argv[2]))
def fail():
    memory_text = "the vault passphrase is tangerine-42"
    raise ValueError("boom" + memory_text[:0])
try:
    fail()
except ValueError:
    logger.exception("failed")
"""
    for mode, expect_secret in (("quiet", False), ("v", True)):
        log_dir = tmp_path / mode
        log_dir.mkdir()
        source = tmp_path / "fail.py"  # a file: tracebacks show its lines (and, verbose, their variables)
        source.write_text(script)
        done = subprocess.run([sys.executable, str(source), mode, str(log_dir)], capture_output=True, text=True,
                              timeout=60)
        text = (log_dir / "imprint.log").read_text() + done.stderr
        assert "boom" in text
        assert ("tangerine-42" in text) is expect_secret, mode


def test_repeated_log_lines_are_counted_not_written(capsys: pytest.CaptureFixture[str]) -> None:
    from imprint.logs import REPEAT_LIMIT, InterceptHandler

    handler = InterceptHandler()
    log = logging.getLogger("asyncio.test")
    log.propagate = False
    log.addHandler(handler)
    written: list[str] = []
    from loguru import logger

    sink = logger.add(lambda message: written.append(str(message)), level="DEBUG")
    try:
        for _ in range(500):
            log.warning("socket.send() raised exception.")
        log.warning("something else")
    finally:
        logger.remove(sink)
        log.removeHandler(handler)
    assert sum("socket.send()" in line for line in written) == REPEAT_LIMIT
    assert any("something else" in line for line in written)
