"""`imprint ui` as a user runs it: a subprocess serving 127.0.0.1, stopped with Ctrl-C."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_env

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_on_loopback_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imprint", "--data-dir", str(tmp_path / "data"), "ui", "--no-browser", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        while (line := lines.get(timeout=90)) is not None and "dashboard on" not in line:
            pass
        assert line is not None, f"imprint ui exited with {proc.wait(timeout=10)}"
        assert f"http://127.0.0.1:{port}/" in line
        status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10).json()
        assert status["data_dir"] == str(tmp_path / "data")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130  # as every imprint command on Ctrl-C
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        assert "Traceback" not in "".join(rest) and "still running" not in "".join(rest), "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_ui_help_names_its_options(imprint_cli) -> None:
    result = imprint_cli(None, "ui", "--help")
    assert result.returncode == 0
    assert "--port" in result.stdout and "--no-browser" in result.stdout and "127.0.0.1" in result.stdout
