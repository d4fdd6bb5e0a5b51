"""Three `imprint relay` processes behind Debian's HAProxy, run with the very
configuration an operator deploys (deploy/haproxy.cfg), TLS included, all on
127.0.0.1. Clients come from other loopback addresses (127.0.1.x…) so that
per-address limits see distinct users, as they would from the internet.

Waits are bounded: a frame, a process exit, an HTTP answer within a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from imprint.relay.server import CLOSE_RESTARTING, CLOSE_TOO_MANY_ROOMS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "haproxy.cfg"
UNIT = REPO / "deploy" / "imprint-relay@.service"
WAIT = 30.0

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("haproxy") is None,
                       reason="Debian's haproxy is not installed (.ci/run installs it: apt-get install -y haproxy)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test's certificate"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RelayProcess:
    """`imprint relay` as an operator runs it (deploy/imprint-relay@.service's options)."""

    def __init__(self, *extra: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imprint", "relay", "--host", "127.0.0.1", "--port", str(port),
             "--trusted-proxy", "127.0.0.1", "--metrics", *extra],
            stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stderr], daemon=True).start()
        self.port = int(self.wait_line("relay listening on").rsplit(":", 1)[1])

    def wait_line(self, text: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if text in line:
                return line

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=WAIT) as response:
            body = response.read().decode()
        found = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                label = ",".join(f"{k}={v}" for k, v in sample.labels.items())
                found[sample.name + (f"{{{label}}}" if label else "")] = sample.value
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)


@dataclass
class Farm:
    port: int
    relays: list[RelayProcess]
    cafile: Path
    proxy: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost; returns (PEM for HAProxy, CA file for clients)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    pem = directory / "relay.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return pem, cert


def start_farm(tmp: Path, relays: list[RelayProcess], servers: list[int] | None = None) -> Farm:
    pem, cafile = certificate(tmp)
    port = free_port()
    ports = servers or [relay.port for relay in relays]
    env = dict(os.environ, IMPRINT_PROXY_BIND=f"127.0.0.1:{port}", IMPRINT_TLS_PEM=str(pem),
               **{f"IMPRINT_RELAY_{n + 1}": f"127.0.0.1:{p}" for n, p in enumerate(ports)})
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(CONFIG)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    farm = Farm(port, relays, cafile, proxy)
    deadline = time.monotonic() + WAIT
    while True:  # HAProxy is up once it answers a health check through TLS
        try:
            req = urllib.request.urlopen(f"https://localhost:{port}/health", timeout=5, context=farm.context())
            if req.status == 200:
                break
        except OSError:
            if proxy.poll() is not None:
                pytest.fail(f"haproxy exited: {proxy.stderr.read() if proxy.stderr else ''}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a port that is not open yet
    return farm


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    relays = [RelayProcess("--drain-timeout", "3") for _ in range(3)]
    try:
        farm = start_farm(tmp_path, relays)
        yield farm
    finally:
        if "farm" in locals():
            farm.proxy.terminate()
            farm.proxy.wait(WAIT)
        for relay in relays:
            relay.stop()


# ---------------------------------------------------------------- clients


def source(n: int) -> str:
    """The n-th client address: 127.0.1.1, 127.0.1.2, … (Linux answers all of 127/8)."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


async def open_ws(farm: Farm, room: str, role: str, address: str, headers: dict[str, str] | None = None):  # noqa: ANN201
    return await connect(f"{farm.url}/{room}?role={role}", ssl=farm.context(), local_addr=(address, 0),
                         max_size=None, open_timeout=WAIT, additional_headers=headers)


async def pair(farm: Farm, room: str, address: str, frames: int, size: int = 64 * 1024,
               until: asyncio.Event | None = None, on_round: asyncio.Event | None = None) -> str:
    """One room: the consumer greets, the provider sends frames, the consumer checks
    and acknowledges each. Returns "done", or "restart" when the relay said 1012."""
    consumer = await open_ws(farm, room, "consumer", address)
    provider = await open_ws(farm, room, "provider", address)
    try:
        await consumer.send("hi")
        assert await provider.recv() == "hi"
        sent = 0
        while sent < frames or (until is not None and not until.is_set()):
            frame = hashlib.sha256(f"{room}/{sent}".encode()).digest() * (size // 32)
            await provider.send(frame)
            got = await consumer.recv()
            assert got == frame, f"room {room}: frame {sent} changed on the way"
            await consumer.send(str(sent))
            assert await provider.recv() == str(sent)
            sent += 1
            if on_round is not None:
                on_round.set()
            if until is not None:
                await asyncio.sleep(0.02)  # pacing a long sync, not synchronising
        return "done"
    except ConnectionClosed as closed:
        if closed.rcvd is not None and closed.rcvd.code == CLOSE_RESTARTING:
            return "restart"
        raise
    finally:
        await provider.close()
        await consumer.close()


def farm_env(farm: Farm) -> dict[str, str]:
    """The CLI's environment, trusting the test's certificate as a user trusts a real one."""
    from tests.conftest import cli_env

    return cli_env(SSL_CERT_FILE=str(farm.cafile))


def serve_through(farm: Farm, spawn: Any, tmp_path: Path, records: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """A data dir holding `records` and its `serve --json --yes` through the farm: the serve and its
    room. The service makes the connections, so it starts with the environment of farm_env."""
    from tests.e2e.support import write_jsonl

    a = tmp_path / "a"
    assert spawn(a, "import", str(write_jsonl(tmp_path / "a.jsonl", records)), env=farm_env(farm)).wait() == 0
    serve = spawn(a, "serve", "--relay", farm.url, "--json", "--yes", env=farm_env(farm))
    return serve, serve.next_event("room")


# ------------------------------------------------------------------ tests


def test_the_shipped_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    pem, _ = certificate(tmp_path)
    env = dict(os.environ, IMPRINT_PROXY_BIND="127.0.0.1:9443", IMPRINT_TLS_PEM=str(pem),
               IMPRINT_RELAY_1="127.0.0.1:8431", IMPRINT_RELAY_2="127.0.0.1:8432", IMPRINT_RELAY_3="127.0.0.1:8433")
    check = subprocess.run(["haproxy", "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_200_rooms_at_once_pair_on_one_relay_each_and_the_three_share_them(farm: Farm) -> None:
    rooms = [uuid.uuid4().hex[:16] for _ in range(200)]

    async def all_pairs() -> list[str]:
        # 200 rooms from 20 addresses: 10 rooms each, under the 16 one address may open.
        return await asyncio.gather(*(pair(farm, room, source(n // 10), frames=4) for n, room in enumerate(rooms)))

    results = asyncio.run(asyncio.wait_for(all_pairs(), 240))
    assert results == ["done"] * 200
    opened = [relay.metrics()["imprint_relay_rooms_opened_total"] for relay in farm.relays]
    # Both roles of every room met on one relay (a split room would never have paired).
    assert sum(opened) == 200, opened
    assert min(opened) >= 20, f"the rooms were not spread: {opened}"
    forwarded = sum(relay.metrics()["imprint_relay_bytes_forwarded_total"] for relay in farm.relays)
    assert forwarded >= 200 * 4 * 64 * 1024
    # The relays saw the clients' own addresses (PROXY protocol), not HAProxy's.
    refused = sum(relay.metrics()['imprint_relay_refusals_total{reason=rooms_per_address}'] for relay in farm.relays)
    assert refused == 0
    # /metrics stays inside: the proxy does not pass it.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"https://localhost:{farm.port}/metrics", timeout=WAIT, context=farm.context())
    assert info.value.code == 404


def test_users_behind_the_proxy_each_get_their_own_rooms_and_a_forged_header_changes_nothing(tmp_path: Path) -> None:
    # One relay behind all three server lines: every room lands on it, so its per-address count is all of them.
    relay = RelayProcess()
    farm = start_farm(tmp_path, [relay], servers=[relay.port] * 3)
    try:
        async def scenario() -> None:
            opened = []
            for user in ("127.0.2.1", "127.0.2.2"):
                for n in range(16):
                    opened.append(await open_ws(farm, f"{user.replace('.', '-')}-{n}", "provider", user))
            # The 17th room of the first user is refused, whatever the header it sends.
            forged = await open_ws(farm, "one-too-many", "provider", "127.0.2.1",
                                   headers={"X-Forwarded-For": "198.51.100.99"})
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(forged.recv(), WAIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == CLOSE_TOO_MANY_ROOMS
            # Straight to the relay from an untrusted address: X-Forwarded-For is ignored.
            direct = []
            for n in range(17):
                direct.append(await connect(f"ws://127.0.0.1:{relay.port}/direct-{n}?role=provider",
                                            local_addr=("127.0.3.1", 0), open_timeout=WAIT,
                                            additional_headers={"X-Forwarded-For": f"198.51.100.{n}"}))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(direct[-1].recv(), WAIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == CLOSE_TOO_MANY_ROOMS
            for ws in opened + direct[:-1]:
                assert ws.close_code is None  # still open
                await ws.close()

        asyncio.run(asyncio.wait_for(scenario(), 120))
        assert relay.metrics()["imprint_relay_refusals_total{reason=rooms_per_address}"] == 2
    finally:
        farm.proxy.terminate()
        farm.proxy.wait(WAIT)
        relay.stop()


def test_sigterm_drains_one_relay_mid_sync_and_its_syncs_finish_or_rerun_through_the_others(farm: Farm) -> None:
    draining = farm.relays[0]

    async def scenario() -> tuple[list[str], list[str], list[str], int]:
        finish_short, finish_long = asyncio.Event(), asyncio.Event()
        short_tasks: list[asyncio.Task[str]] = []
        long_tasks: list[asyncio.Task[str]] = []

        async def start(finish: asyncio.Event, into: list[asyncio.Task[str]], prefix: str) -> None:
            going = asyncio.Event()
            n = len(short_tasks) + len(long_tasks)
            room = f"{prefix}-{uuid.uuid4().hex[:10]}"
            into.append(asyncio.create_task(pair(farm, room, source(n), frames=1, until=finish, on_round=going)))
            await asyncio.wait_for(going.wait(), WAIT)

        async def on_draining() -> int:
            """Rooms paired on the relay to be stopped. Not all rooms open: a room with one side
            came and went there now and then (a connection of an earlier test's, HAProxy's), and
            counted as a long sync placed there."""
            metrics = await asyncio.to_thread(draining.metrics)
            return int(metrics["imprint_relay_rooms_open"] - metrics["imprint_relay_rooms_waiting"])

        for _ in range(15):
            await start(finish_short, short_tasks, "short")
        # Long syncs until the relay to be stopped holds at least three of them (the
        # hashing decides where a room goes; the test makes sure it is tested).
        short_there = await on_draining()
        while await on_draining() - short_there < 3 and len(long_tasks) < 80:
            await start(finish_long, long_tasks, "long")
        rooms_there = await on_draining()
        draining.proc.send_signal(signal.SIGTERM)
        line = await asyncio.to_thread(draining.wait_line, "relay draining")
        assert f"relay draining: {rooms_there} syncs under way" in line, (line, rooms_there)  # what it drains
        await asyncio.sleep(0.5)  # syncs go on for a while, well inside the 3 s drain
        finish_short.set()
        short = await asyncio.gather(*short_tasks)
        # The long syncs outlast the drain: the relay closes those it still has at 3 s and exits.
        assert await asyncio.to_thread(draining.proc.wait, WAIT) == 0
        finish_long.set()
        long = await asyncio.gather(*long_tasks)
        rerun = []
        for n, result in enumerate(long):
            if result == "restart":  # run again, as the client is told: another relay takes it
                rerun.append(await pair(farm, f"again-{uuid.uuid4().hex[:10]}", source(150 + n), frames=3))
        return short, long, rerun, rooms_there - short_there

    short, long, rerun, long_there = asyncio.run(asyncio.wait_for(scenario(), 180))
    assert short == ["done"] * len(short), short  # finished inside the drain timeout, wherever they were
    assert long_there >= 3, "the hashing never sent a long sync to the relay stopped"
    # The long syncs on the drained relay were told to run again; the others finished.
    assert long.count("restart") == long_there and set(long) <= {"done", "restart"}, (long, long_there)
    restarted = long_there
    assert rerun == ["done"] * restarted
    for relay in farm.relays[1:]:  # the others were not touched
        assert relay.proc.poll() is None
        assert relay.metrics()["imprint_relay_refusals_total{reason=restart}"] == 0


@pytest.mark.e2e
def test_a_waiting_serve_moves_with_a_rolling_restart_and_its_peer_finds_it(farm: Farm, spawn,  # noqa: ANN001
                                                                             tmp_path: Path) -> None:
    """The relay holding a waiting room restarts: the serve opens its room again (on another relay,
    HAProxy having taken that one out), the relay comes back on its port, and the peer who joins
    afterwards with the same PIN still meets the serve — the stick table keeps the room where it
    is, where the hash alone would send the peer back to the restarted relay."""
    from tests.conftest import wait_until
    from tests.e2e.support import approve_and_finish

    def waiting() -> list[int]:
        return [int(relay.metrics()["imprint_relay_rooms_waiting"]) for relay in farm.relays]

    records = [{"content": f"rolling memory {n}: the room moved and its peer found it", "project": "roll"}
               for n in range(4)]
    serve, room = serve_through(farm, spawn, tmp_path, records)
    wait_until(lambda: sum(waiting()) == 1, timeout=WAIT, what="the serve's room")
    first = waiting().index(1)
    restarted = farm.relays[first]
    restarted.proc.send_signal(signal.SIGTERM)  # nothing under way: its waiting room closes at once
    assert restarted.proc.wait(WAIT) == 0
    others = [relay for n, relay in enumerate(farm.relays) if n != first]
    wait_until(lambda: sum(int(r.metrics()["imprint_relay_rooms_waiting"]) for r in others) == 1, timeout=WAIT,
               what="the room reopened")
    assert serve.proc.poll() is None, serve.describe()
    back = RelayProcess("--drain-timeout", "3", port=restarted.port)
    farm.relays[first] = back

    async def probe() -> None:  # rooms until HAProxy sends one to the relay that came back
        n = 0
        while not back.metrics()["imprint_relay_rooms_opened_total"]:
            n += 1  # each from its own address: one address may open only so many a second
            ws = await open_ws(farm, f"probe-{uuid.uuid4().hex[:10]}", "provider", f"127.0.4.{n % 250 + 1}")
            await ws.close()

    asyncio.run(asyncio.wait_for(probe(), WAIT))
    b = tmp_path / "b"
    join = spawn(b, "join", room["target"], "--pin", room["pin"], "--json", "--yes", env=farm_env(farm))
    approve_and_finish(serve, join, b, {r["content"] for r in records})


def test_the_systemd_unit_runs_the_relay_it_describes(tmp_path: Path) -> None:
    """The unit's ExecStart, with the port systemd would fill in, starts a relay
    that drains and exits 0 on the SIGTERM systemd sends, within TimeoutStopSec."""
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    stop_timeout = float(next(line for line in text.splitlines() if line.startswith("TimeoutStopSec="))
                         .split("=", 1)[1])
    args = exec_start.split("=", 1)[1].split()
    assert args[0].endswith("/imprint") and args[1] == "relay"
    drain = float(args[args.index("--drain-timeout") + 1])
    assert stop_timeout > drain, "systemd would kill a drain under way"
    port = free_port()
    argv = [sys.executable, "-m", "imprint", *[a.replace("%i", str(port)) for a in args[1:]]]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert "relay listening on ws://127.0.0.1:" in proc.stderr.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
            assert b"imprint_relay_rooms_open 0" in response.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0  # nothing under way: the drain ends at once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    if shutil.which("systemd-analyze"):
        unit = tmp_path / "imprint-relay@.service"
        unit.write_text(text.replace("/usr/local/bin/imprint", shutil.which("imprint") or "/bin/true"))
        check = subprocess.run(["systemd-analyze", "verify", f"{unit.parent}/imprint-relay@8431.service"],
                               capture_output=True, text=True, timeout=60, env=dict(os.environ,
                               SYSTEMD_UNIT_PATH=f"{tmp_path}:"))
        problems = [line for line in check.stderr.splitlines() if "imprint-relay" in line]
        assert not problems, check.stderr


@pytest.mark.e2e
def test_a_real_sync_goes_through_haproxy_over_tls(farm: Farm, spawn, tmp_path: Path) -> None:  # noqa: ANN001
    """The product itself through the deployed stack: `serve --relay wss://…` and `join`,
    trusting the test's certificate as a user trusts a real one (SSL_CERT_FILE)."""
    from tests.e2e.support import approve_and_finish

    records = [{"content": f"farm memory {n}: the relay behind the proxy carried this", "project": "farm"}
               for n in range(5)]
    serve, room = serve_through(farm, spawn, tmp_path, records)
    assert room["target"].startswith(f"wss://localhost:{farm.port}/"), room
    b = tmp_path / "b"
    join = spawn(b, "join", room["target"], "--pin", room["pin"], "--json", "--yes", env=farm_env(farm))
    approve_and_finish(serve, join, b, {r["content"] for r in records})
    assert sum(relay.metrics()["imprint_relay_rooms_opened_total"] for relay in farm.relays) == 1
