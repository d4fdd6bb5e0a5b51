"""The resident service of a data dir, through the real CLI in subprocesses and
raw frames on its socket: every front end at once, a stale socket, racing
starts, another protocol, kill -9 mid-import, idle exit, the socket's mode,
hostile clients, and the client's light imports."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from imprint.service import protocol as p
from imprint.service.paths import connect, socket_path
from tests.conftest import cli_env, wait_until
from tests.e2e.support import IMPRINT, Spawn
from tests.service_support import alive, service_pid

pytestmark = pytest.mark.timeout(300)

#: Longest wait for a command (a model load on a busy 2-core machine included).
WAIT = 120.0


def imprint(data_dir: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMPRINT, "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env(), input=input, stdin=None if input else subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def raw_client(data_dir: Path) -> socket.socket:
    sock = connect(socket_path(data_dir), timeout=30)
    sock.settimeout(30)
    return sock


def exchange(sock: socket.socket, frame: Any) -> Any:
    p.send_frame(sock, frame)
    body = p.read_frame(sock)
    assert body is not None, "the service closed the connection"
    return p.service_frames.decode(body)


def fact_count(data_dir: Path) -> int:
    return len(ok(imprint(data_dir, "fact", "list", "--json")).stdout.splitlines())


# ---------------------------------------------------------------- every front end at once


def test_dashboard_serve_import_and_a_loop_of_add_and_search_at_once(spawn: Spawn, tmp_path: Path) -> None:
    from imprint.relay.server import RelayServer

    data = tmp_path / "data"
    rows = [{"content": f"imported note number {i} about the harbour crane {i % 37}", "project": "bulk",
             "timestamp": 1_700_000_000.0 + i} for i in range(2000)]
    corpus = tmp_path / "bulk.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok(imprint(data, "add", "warm the model up first", "--project", "loop"))  # one model load for all below
    relay = RelayServer(host="127.0.0.1", port=0)
    port = relay.start_in_thread()
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ui_port = probe.getsockname()[1]
        ui = spawn(data, "ui", "--no-browser", "--port", str(ui_port), "--json")
        ui.next_event("ui")
        serve = spawn(data, "serve", "--relay", f"ws://127.0.0.1:{port}", "--json")
        serve.next_event("room")
        importing = subprocess.Popen([*IMPRINT, "--data-dir", str(data), "import", str(corpus)], env=cli_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        added, errors = [], []
        for i in range(8):
            text = f"loop memory {i}: the staging cluster is reset on day {i}"
            proc = imprint(data, "add", text, "--project", "loop")
            (added if proc.returncode == 0 else errors).append(proc.stderr or text)
            proc = imprint(data, "search", "staging cluster reset", "-k", "3", "--json")
            if proc.returncode != 0 or not proc.stdout.strip():
                errors.append(proc.stderr)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/search?q=harbour%20crane&k=2", timeout=60) as r:
            assert r.status == 200 and json.loads(r.read())["hits"]
        out, err = importing.communicate(timeout=WAIT * 2)
        assert importing.returncode == 0, err
        assert "inserted 2000" in out
        assert not errors, errors
        assert serve.proc.poll() is None and ui.proc.poll() is None  # both still there, untouched
        serve.proc.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 130
        ui.proc.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 130  # as every command on Ctrl-C
    finally:
        relay.stop()
    exported = [json.loads(line) for line in ok(imprint(data, "export")).stdout.splitlines()]
    contents = {r["content"] for r in exported}
    assert {r["content"] for r in rows} <= contents
    assert all(f"loop memory {i}: the staging cluster is reset on day {i}" in contents for i in range(8))
    assert len(exported) == 2000 + 8 + 1 == len({r["id"] for r in exported})
    assert service_pid(data) is not None  # the front ends went; the service lives on


# ---------------------------------------------------------------- starting


def test_a_stale_socket_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    pid = service_pid(data)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), timeout=30, what="the killed service to go")
    assert socket_path(data).exists()  # what the crash left
    with pytest.raises(ConnectionRefusedError):
        connect(socket_path(data), timeout=5)
    ok(imprint(data, "fact", "add", "d", "e", "f"))
    assert fact_count(data) == 2
    assert service_pid(data) not in (None, pid)


def test_two_starts_racing_end_with_one_service(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procs = [subprocess.Popen([*IMPRINT, "--data-dir", str(data), "fact", "add", f"s{i}", "p", "o"], env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for i in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
    assert fact_count(data) == 4
    pid = service_pid(data)
    import psutil

    services = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if str(data) in cmdline and "service run" in cmdline and alive(proc.info["pid"]):
            services.append(proc.info["pid"])
    assert services == [pid]


def test_another_protocol_gets_one_clear_answer_and_the_service_lives_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    with raw_client(data) as sock:
        welcome = exchange(sock, p.Hello(protocol=p.PROTOCOL + 1))
        assert isinstance(welcome, p.Welcome) and welcome.protocol == p.PROTOCOL
        answer = exchange(sock, p.FactList())
        assert isinstance(answer, p.Failed) and "protocol" in answer.message
        info = exchange(sock, p.ServiceStatus())  # what a newer client needs to make way
        assert isinstance(info, p.Done)
    assert fact_count(data) == 1


def test_a_client_of_another_version_restarts_an_idle_service(tmp_path: Path) -> None:
    """A service speaking another protocol (an older imprint still running) is replaced when idle."""
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    ok(imprint(data, "service", "stop"))
    script = ("import sys; from imprint.service import protocol as p; p.PROTOCOL += 1; "
              "from imprint.main import main; sys.exit(main(sys.argv[1:]))")
    old = subprocess.Popen([sys.executable, "-c", script, "--data-dir", str(data), "service", "run"], env=cli_env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: service_pid(data) == old.pid, timeout=WAIT, what="the older service to listen")
        wait_until(lambda: socket_path(data).exists(), timeout=WAIT, what="the older service's socket")
        assert "a —b→ c" in ok(imprint(data, "fact", "list")).stdout
        assert old.wait(timeout=30) == 0  # it made way
        assert service_pid(data) not in (None, old.pid)
    finally:
        if old.poll() is None:
            old.kill()
            old.wait(timeout=10)


# ---------------------------------------------------------------- crashes and idleness


def test_kill_9_mid_import_then_the_rerun_stores_all_without_duplicates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [{"content": f"crash-safe line {i}: the backup of shard {i % 11} rotates weekly", "timestamp": 1.7e9 + i}
            for i in range(1500)]
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    importing = subprocess.Popen([*IMPRINT, "--data-dir", str(data), "import", str(corpus)], env=cli_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    wait_until(lambda: service_pid(data) is not None, timeout=WAIT, what="the service to start")
    # Kill it once some batches are stored (the model is loaded and the import under way).
    pid = service_pid(data)
    wait_until(lambda: _stored(data) > 0 or importing.poll() is not None, timeout=WAIT,
               what="a first batch to be stored")
    os.kill(pid, signal.SIGKILL)
    out, err = importing.communicate(timeout=WAIT)
    assert importing.returncode != 0 and "stopped before answering" in err, (out, err)
    assert "Traceback" not in err
    ok(imprint(data, "import", str(corpus)))
    exported = [json.loads(line) for line in ok(imprint(data, "export")).stdout.splitlines()]
    assert len(exported) == len(rows) == len({r["id"] for r in exported})
    assert {r["content"] for r in exported} == {r["content"] for r in rows}


def _stored(data: Path) -> int:
    """How many memories the service holds, asked on its socket (0 while it cannot say)."""
    try:
        with raw_client(data) as sock:
            exchange(sock, p.Hello(protocol=p.PROTOCOL))
            answer = exchange(sock, p.Count())
    except (OSError, AssertionError, p.ServiceError):
        return 0
    return msgspec.msgpack.decode(answer.value, type=int) if isinstance(answer, p.Done) else 0


def test_the_service_exits_by_itself_when_idle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c", env=cli_env(IMPRINT_SERVICE_IDLE="1")))
    pid = service_pid(data)
    assert pid is not None
    wait_until(lambda: not alive(pid), timeout=30, what="the idle service to exit")
    assert not socket_path(data).exists()  # it cleaned up after itself
    assert fact_count(data) == 1  # and the next command starts a new one


def test_service_status_and_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "not running" in ok(imprint(data, "service", "status")).stdout
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    [info] = [json.loads(line) for line in ok(imprint(data, "service", "status", "--json")).stdout.splitlines()]
    assert info["running"] and info["pid"] == service_pid(data) and info["rss_bytes"] > 0
    assert info["models_loaded"] == [] and info["syncs"] == 0 and info["workspaces"] == ["default"]
    pid = info["pid"]
    assert "fact add 1x p50" in ok(imprint(data, "service", "status")).stdout  # the requests it timed
    assert f"stopped the imprint service (pid {pid})" in ok(imprint(data, "service", "stop")).stdout
    assert not alive(pid) and not socket_path(data).exists()


# ---------------------------------------------------------------- no new door


def test_the_socket_is_the_users_alone_and_no_tcp_port_opens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    assert stat.S_IMODE(socket_path(data).stat().st_mode) == 0o600
    assert stat.S_ISSOCK(socket_path(data).stat().st_mode)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    import psutil

    listening = [c for c in psutil.Process(service_pid(data)).net_connections(kind="inet")]
    assert listening == []


def test_garbage_and_a_1_gib_length_get_an_error_and_the_service_lives_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "fact", "add", "a", "b", "c"))
    pid = service_pid(data)
    with raw_client(data) as sock:  # a huge announced length: refused before anything is read
        sock.sendall(struct.pack(">I", 1 << 30))
        answer = p.service_frames.decode(p.read_frame(sock))
        assert isinstance(answer, p.Failed) and "limit" in answer.message
        assert p.read_frame(sock) is None  # and that connection is closed
    with raw_client(data) as sock:  # bytes that are no frame of ours
        sock.sendall(struct.pack(">I", 12) + b"\xff" * 12)
        answer = p.service_frames.decode(p.read_frame(sock))
        assert isinstance(answer, p.Failed)
    with raw_client(data) as sock:  # a good hello, then a request that is not one
        assert isinstance(exchange(sock, p.Hello(protocol=p.PROTOCOL)), p.Welcome)
        sock.sendall(struct.pack(">I", 5) + msgspec.msgpack.encode({"type": "x"})[:5])
        assert isinstance(p.service_frames.decode(p.read_frame(sock)), p.Failed)
        answer = exchange(sock, p.FactList())  # the same connection still answers
        assert isinstance(answer, p.Done)
    with raw_client(data) as sock:  # half a frame, then gone
        sock.sendall(struct.pack(">I", 100) + b"abc")
    assert alive(pid)
    assert fact_count(data) == 1 and service_pid(data) == pid


# ---------------------------------------------------------------- the client stays light


HEAVY = ("torch", "sentence_transformers", "transformers", "qdrant_edge", "qdrant_client", "pykka", "numpy",
         "fastapi", "uvicorn", "websockets")


def test_add_and_search_import_no_heavy_module_on_the_client(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(imprint(data, "add", "The deploy script is ops/deploy.sh"))
    script = ("import sys; from imprint.main import main; code = main(sys.argv[1:]); "
              f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})), file=sys.stderr); "
              "sys.exit(code)")
    for args in (["search", "how do we deploy?"], ["add", "Deploys need AWS credentials"], ["fact", "list"],
                 ["export"], ["status"]):
        proc = subprocess.run([sys.executable, "-c", script, "--data-dir", str(data), *args], env=cli_env(),
                              capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert "HEAVY []" in proc.stderr, (args, proc.stderr)
