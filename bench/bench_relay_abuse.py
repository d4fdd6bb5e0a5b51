"""Benchmark: what anonymous clients can make a relay hold.

Run by hand (not a test):

    python bench/bench_relay_abuse.py

Starts `imprint relay` as its own process on 127.0.0.1 and runs, one after the
other, the attacks found against it, from other loopback addresses
(127.0.0.2, 127.0.0.3…) so the per-address limits are seen as they would be
from the internet. For each it prints the relay's RSS before, at the peak
(sampled every 20 ms) and once the attackers have left, and what the
attackers were told. Then a real sync of a few records goes through, to show
the relay still serves.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psutil
import websocket

MIB = 1024 * 1024


class Relay:
    def __init__(self, extra: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "imprint", "relay", "--host", "127.0.0.1", "--port", "0", *extra],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        self.port = int(line.rsplit(":", 1)[1])
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0
        self._sampling = False

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def sample(self) -> Callable[[], int]:
        """Start sampling the peak RSS; the returned function stops and gives it."""
        self.peak = self.rss()
        self._sampling = True

        def run() -> None:
            while self._sampling:
                self.peak = max(self.peak, self.rss())
                time.sleep(0.02)  # sampling interval, not synchronisation

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def stop() -> int:
            self._sampling = False
            thread.join()
            return self.peak

        return stop

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def connect(port: int, room: str, role: str, source: str = "127.0.0.2", timeout: float = 30) -> websocket.WebSocket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return websocket.create_connection(f"ws://127.0.0.1:{port}/{room}?role={role}", socket=sock, timeout=timeout,
                                       skip_utf8_validation=True)


def close_reason(ws: websocket.WebSocket) -> str:
    """What the relay said when it closed us (or why we could not read)."""
    try:
        ws.settimeout(15)
        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 0
                return f"{code} {frame.data[2:].decode(errors='replace')}"
    except Exception as exc:
        return f"({type(exc).__name__})"


def settle(relay: Relay, seconds: float = 12.0) -> int:
    time.sleep(seconds)  # past the relay's 10 s close timeout: what it keeps, not a race
    return relay.rss()


def attack_held_frames(relay: Relay) -> dict[str, Any]:
    """10 rooms, each with one side alone sending one 64 MiB frame (held for a peer that never comes)."""
    said = []
    for n in range(10):
        ws = connect(relay.port, f"held{n}", "provider", source=f"127.0.0.{2 + n}")
        with suppress(Exception):
            ws.send(b"\0" * (64 * MIB), opcode=websocket.ABNF.OPCODE_BINARY)
        said.append(close_reason(ws))
        ws.close()
    return {"told": sorted(set(said))}


def attack_consumer_never_reads(relay: Relay) -> dict[str, Any]:
    """3 rooms where the provider sends 64 MiB frames and the consumer never reads."""
    said = []
    pairs = []
    for n in range(3):
        room = f"stuck{n}"
        consumer = connect(relay.port, room, "consumer", source=f"127.0.1.{n + 1}")
        provider = connect(relay.port, room, "provider", source=f"127.0.2.{n + 1}")
        pairs.append((provider, consumer))

    def flood(provider: websocket.WebSocket) -> None:
        with suppress(Exception):
            for _ in range(8):
                provider.send(b"\0" * (64 * MIB), opcode=websocket.ABNF.OPCODE_BINARY)

    threads = [threading.Thread(target=flood, args=(p,), daemon=True) for p, _ in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for provider, consumer in pairs:
        provider.sock.settimeout(5)
        said.append(close_reason(provider))
        for ws in (provider, consumer):
            with suppress(Exception):
                ws.shutdown()
    return {"told": sorted(set(said))}


def attack_connect_send_abort(relay: Relay) -> dict[str, Any]:
    """One client looping: connect both sides, send 64 MiB, abort (30 times)."""
    said = set()
    for n in range(30):
        room = f"loop{n}"
        try:
            consumer = connect(relay.port, room, "consumer", source="127.0.3.1")
            provider = connect(relay.port, room, "provider", source="127.0.3.1")
        except Exception as exc:
            said.add(f"refused: {str(exc)[:80]}")
            time.sleep(0.2)  # the attacker backs off and tries again
            continue
        with suppress(Exception):
            provider.send(b"\0" * (64 * MIB), opcode=websocket.ABNF.OPCODE_BINARY)
        for ws in (provider, consumer):
            with suppress(Exception):
                ws.sock.close()  # abort: no closing handshake
    return {"told": sorted(said) or ["nothing (each frame fit in the budget)"]}


def attack_fill_rooms(relay: Relay) -> dict[str, Any]:
    """One address opening as many rooms as it can, then a real user's room from another address."""
    opened, refusals, sockets = 0, set(), []
    for n in range(1000):
        try:
            ws = connect(relay.port, f"fill{n}", "provider", source="127.0.4.1", timeout=5)
        except Exception as exc:
            refusals.add(str(exc)[:80])
            break
        ws.settimeout(0.2)
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                refusals.add(f"{int.from_bytes(frame.data[:2], 'big')} {frame.data[2:].decode(errors='replace')}")
                break
        except (websocket.WebSocketTimeoutException, socket.timeout):
            opened += 1
            sockets.append(ws)
    user = connect(relay.port, "real-user-room", "provider", source="127.0.5.1")
    user.settimeout(0.5)
    try:
        user.recv_data_frame(control_frame=True)
        user_ok = False
    except (websocket.WebSocketTimeoutException, socket.timeout):
        user_ok = True  # not closed: the room is open
    for ws in [*sockets, user]:
        with suppress(Exception):
            ws.close()
    return {"rooms the attacker got": opened, "told": sorted(refusals), "a real user's room opens": user_ok}


def attack_fragments(relay: Relay) -> dict[str, Any]:
    """A 256 MiB message in 1 MiB fragments through a paired room whose consumer reads slowly."""
    room = "fragments"
    consumer = connect(relay.port, room, "consumer", source="127.0.6.1")
    provider = connect(relay.port, room, "provider", source="127.0.6.2")
    piece = b"f" * MIB
    received = [0]

    def slow_reader() -> None:
        with suppress(Exception):
            consumer.settimeout(60)
            while received[0] < 256 * MIB:
                _, frame = consumer.recv_data_frame()
                received[0] += len(frame.data)
                time.sleep(0.01)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    with suppress(Exception):
        provider.send_frame(websocket.ABNF.create_frame(piece, websocket.ABNF.OPCODE_BINARY, fin=0))
        for _ in range(254):
            provider.send_frame(websocket.ABNF.create_frame(piece, websocket.ABNF.OPCODE_CONT, fin=0))
        provider.send_frame(websocket.ABNF.create_frame(piece, websocket.ABNF.OPCODE_CONT, fin=1))
    reader.join(timeout=120)
    for ws in (provider, consumer):
        with suppress(Exception):
            ws.close()
    return {"bytes through": f"{received[0] / MIB:.0f} MiB"}


def real_sync_still_works(relay: Relay) -> bool:
    room = uuid.uuid4().hex[:10]
    consumer = connect(relay.port, room, "consumer", source="127.0.7.1")
    provider = connect(relay.port, room, "provider", source="127.0.7.2")
    provider.send("hello")
    ok = consumer.recv() == "hello"
    consumer.close()
    provider.close()
    return ok


ATTACKS = [
    ("10 rooms each holding a 64 MiB frame", attack_held_frames),
    ("3 rooms whose consumer never reads, 8 x 64 MiB each", attack_consumer_never_reads),
    ("connect / send 64 MiB / abort, 30 times", attack_connect_send_abort),
    ("one address filling rooms", attack_fill_rooms),
    ("a 256 MiB message in 1 MiB fragments", attack_fragments),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay-arg", action="append", default=[], help="extra argument for `imprint relay`")
    args = parser.parse_args()
    relay = Relay(args.relay_arg)
    try:
        baseline = settle(relay, 1.0)
        print(json.dumps({"relay": "baseline", "rss_mb": round(baseline / MIB)}), flush=True)
        for name, attack in ATTACKS:
            before = relay.rss()
            stop = relay.sample()
            outcome = attack(relay)
            peak = stop()
            after = settle(relay)
            print(json.dumps({"attack": name, "rss_mb": {"before": round(before / MIB), "peak": round(peak / MIB),
                                                         "after": round(after / MIB)}, **outcome}), flush=True)
        print(json.dumps({"real sync afterwards": real_sync_still_works(relay),
                          "rss_mb": round(relay.rss() / MIB)}), flush=True)
    finally:
        relay.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
