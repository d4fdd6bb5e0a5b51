"""What the end-to-end tests share: the real `imprint` CLI in subprocesses,
reading their `--json` events; exports; a recording, tampering relay on
127.0.0.1; and helpers that run a whole sync.

Waits are bounded reads of the processes' `--json` events (one reader thread per
pipe feeds a queue); nothing sleeps to synchronise.
"""

from __future__ import annotations

import collections
import json
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imprint.relay.server import RelayServer
from tests.conftest import cli_env, stop_services

#: Longest wait for one event or one exit: a model load on a busy 2-core box, with room to spare.
WAIT = 90.0
IMPRINT = [sys.executable, "-m", "imprint"]
#: What the joining side reports as its user: long and unique, so a leak cannot hide in noise.
CONSUMER_USER = "e2e-consumer-user-5d1c"
BULK_BATCH = 5


# ---------------------------------------------------------------- processes


class Cli:
    """One running `imprint` command: stdout JSON events and stderr lines on queues."""

    def __init__(self, args: list[str], *, env: dict[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*IMPRINT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<not json>", "line": line}
            self.events.append(event)
            self._events.put(event)
        self._events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            self._stderr.put(line)
        self._stderr.put(None)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def describe(self) -> str:
        return (
            f"imprint {' '.join(self.args)} (exit {self.proc.poll()})\n"
            f"events: {self.events}\nstderr (last 3000 chars):\n{self.stderr[-3000:]}"
        )

    def next_event(self, *names: str, timeout: float = WAIT, where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next event named one of `names` (and matching `where`); fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                event = self._events.get(timeout=remaining)
            except queue.Empty:
                pytest.fail(f"no {'/'.join(names)} event within {timeout:g}s from {self.describe()}")
            if event is None:
                self._events.put(None)  # later calls see the end too
                pytest.fail(f"stdout ended before a {'/'.join(names)} event: {self.describe()}")
            if event.get("event") in names and (where is None or where(event)):
                return event

    def wait_stderr(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                line = self._stderr.get(timeout=remaining)
            except queue.Empty:
                pytest.fail(f"no stderr line matching {pattern!r} within {timeout:g}s: {self.describe()}")
            if line is None:
                pytest.fail(f"stderr ended before a line matching {pattern!r}: {self.describe()}")
            match = re.search(pattern, line)
            if match:
                return match

    def answer(self, text: str) -> None:
        """Type one line at the prompt, then close stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()

    def wait(self, timeout: float = WAIT) -> int:
        """Exit code, once stdout and stderr are fully read."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not exit within {timeout:g}s: {self.describe()}")
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def error(self) -> str:
        """The message of the `error` event (the one-line reason of a failure)."""
        errors = [e for e in self.events if e.get("event") == "error"]
        assert errors, f"no error event: {self.describe()}"
        return errors[-1]["message"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


Spawn = Callable[..., Cli]


def run(data_dir: Path, *args: str, timeout: float = WAIT) -> str:
    """Run one short command to completion; return its stdout, failing on a non-zero exit."""
    done = subprocess.run(
        [*IMPRINT, "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), stdin=subprocess.DEVNULL, check=False,
    )
    assert done.returncode == 0, f"imprint {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


def run_parallel(commands: list[tuple[Path, tuple[str, ...]]], timeout: float = WAIT) -> list[bytes]:
    """Run commands at once (2 cores); return each one's stdout bytes, failing on any non-zero exit."""
    procs = [
        subprocess.Popen([*IMPRINT, "--data-dir", str(d), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=cli_env())
        for d, args in commands
    ]
    try:
        outputs = []
        for (d, args), proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"imprint {' '.join(args)} in {d} failed:\n{err.decode()[-3000:]}"
            outputs.append(out)
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@dataclass(frozen=True)
class Export:
    """`imprint export` of one data dir, both datasets, as the raw bytes printed."""

    memories: bytes
    facts: bytes

    @property
    def memory_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.memories.splitlines()]

    @property
    def fact_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.facts.splitlines()]

    @property
    def memory_ids(self) -> list[str]:
        return [r["id"] for r in self.memory_records]

    @property
    def contents(self) -> set[str]:
        return {r["content"] for r in self.memory_records}


def export(*data_dirs: Path) -> list[Export]:
    outs = run_parallel([(d, ("export", "--dataset", ds)) for d in data_dirs for ds in ("memories", "facts")])
    return [Export(memories=outs[2 * i], facts=outs[2 * i + 1]) for i in range(len(data_dirs))]


# ---------------------------------------------------------------- relays


class RecordingRelay:
    """An in-process RelayServer on 127.0.0.1 that records every frame; per-room tamper hooks."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str, str | bytes]] = []
        self.tamper: dict[str, Callable[[str, str | bytes], list[str | bytes]]] = {}
        self.server = RelayServer(host="127.0.0.1", port=0, frame_hook=self._hook)
        self.port = self.server.start_in_thread()
        self.url = f"ws://127.0.0.1:{self.port}"

    def _hook(self, room: str, role: str, frame: str | bytes) -> list[str | bytes]:
        self.frames.append((room, role, frame))
        hook = self.tamper.get(room)
        return hook(role, frame) if hook is not None else [frame]

    def room_frames(self, room: str) -> list[tuple[str, str | bytes]]:
        return [(role, frame) for r, role, frame in list(self.frames) if r == room]


def nth_binary_from_provider(n: int, action: str, *, min_bytes: int = 0) -> Callable[[str, str | bytes], list[str | bytes]]:
    """A tamper hook: on the n-th binary frame from the provider (of at least `min_bytes`),
    flip one bit or drop it."""
    seen = collections.Counter()

    def hook(role: str, frame: str | bytes) -> list[str | bytes]:
        if role == "provider" and isinstance(frame, bytes) and len(frame) >= min_bytes:
            seen["binary"] += 1
            if seen["binary"] == n:
                if action == "drop":
                    return []
                flipped = bytearray(frame)
                flipped[len(flipped) // 2] ^= 0x04
                return [bytes(flipped)]
        return [frame]

    return hook



class ByteGate:
    """A TCP proxy on 127.0.0.1 in front of a relay: each connection gets at most ``limit``
    bytes from the relay, then the rest is held back (never dropped, never forwarded).

    It makes "the relay died mid-stream" deterministic: however fast the peers are, the
    receiver cannot have had more than ``limit`` bytes when the test kills the relay.
    ``held`` is set once some connection reached its limit. When either end closes, the
    other end is closed too, as it is for a peer whose relay dies.
    """

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port, self.limit = target_port, limit
        self.held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.limit), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while chunk := source.recv(65536):
                if limit is not None and passed + len(chunk) > limit:
                    dest.sendall(chunk[: limit - passed])
                    self.held.set()
                    # Keep reading so the relay side sees a live reader, forward nothing more.
                    while source.recv(65536):
                        pass
                    break
                dest.sendall(chunk)
                passed += len(chunk)
        except OSError:
            pass
        for sock in (source, dest):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def clone(template: Path, dest: Path) -> Path:
    """Copy a seeded data dir (its service stopped first, so the store is closed); drop its
    device key so the copy is a new device."""
    stop_services(template)
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("imprint.sock", "service.lock"))
    for name in ("device_key", "device_id.txt", "trusted_devices.json"):
        (dest / name).unlink(missing_ok=True)
    return dest



# ---------------------------------------------------------------- sync helpers


def start_serve(spawn: Spawn, data_dir: Path, relay_url: str, *extra: str) -> tuple[Cli, dict[str, Any]]:
    serve = spawn(data_dir, "serve", "--relay", relay_url, "--json", *extra)
    room = serve.next_event("room")
    assert re.fullmatch(r"[A-Za-z0-9]{8}", room["pin"]), room
    return serve, room


def start_join(spawn: Spawn, data_dir: Path, room: dict[str, Any], *extra: str, pin: str | None = None) -> Cli:
    # The target exactly as serve printed it (HOST:PORT/ROOM for a relay on 127.0.0.1).
    return spawn(data_dir, "join", room["target"], "--pin", pin or room["pin"], "--json", *extra,
                 env=cli_env(USER=CONSUMER_USER, LOGNAME=CONSUMER_USER))


def sync(spawn: Spawn, provider: Path, consumer: Path, relay_url: str, answer: str | None, *extra: str) -> tuple[Cli, Cli, dict[str, Any]]:
    """A whole sync: serve, join, answer the prompt (if asked), both exit 0."""
    serve, room = start_serve(spawn, provider, relay_url, *extra)
    join = start_join(spawn, consumer, room, *extra)
    if answer is not None:
        serve.next_event("approval_required")
        serve.answer(answer)
    assert serve.wait() == 0, serve.describe()
    assert join.wait() == 0, join.describe()
    # --json prints JSON lines and nothing else on stdout.
    assert all(e.get("event") != "<not json>" for e in serve.events + join.events), (serve.events, join.events)
    return serve, join, room


def approve_and_finish(serve: Cli, join: Cli, consumer: Path, contents: set[str]) -> None:
    """Answer the serve's question yes; both exit 0 and the consumer holds `contents`."""
    serve.next_event("approval_required")
    serve.answer("y")
    assert serve.wait() == 0, serve.describe()
    assert join.wait() == 0, join.describe()
    (got,) = export(consumer)
    assert got.contents == contents


def stats(cli: Cli) -> dict[str, Any]:
    found = [e for e in cli.events if e.get("event") == "stats"]
    assert len(found) == 1, cli.describe()
    return found[0]


def union_size(*exports: Export) -> int:
    return len({i for e in exports for i in e.memory_ids})


def whole_batches(new: set[str], provider_ids: list[str], before: set[str], batch: int, max_batches: int) -> bool:
    """True if `new` could be what k whole batches of the provider's stream added, k <= max_batches:
    the provider's records we lacked, a whole number of batches of them (protocol 2 sends only
    those, in its own order)."""
    missing = set(provider_ids) - before
    return new <= missing and any(len(new) == min(batch * k, len(missing)) for k in range(max_batches + 1))


