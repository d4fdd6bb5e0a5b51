"""The dashboard's HTTP API against real local actors (Qdrant, SQLite, model)
on tmp dirs: every endpoint, bad input, and a whole sync driven through the
API of two dashboards and an in-process relay."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from imprint.identity import load_identity
from imprint.trust import TrustList
from imprint.ui.app import create_app

from .helpers import Machine, machine, served

pytestmark = pytest.mark.timeout(180)

MEMORIES = [
    ("The deploy script is ops/deploy.sh and needs AWS credentials", "ops", "note", "runbook.md"),
    ("Postgres runs version 16 with logical replication", "db", "note", "db.md"),
    ("Alice prefers code reviews on Tuesday mornings", "team", "preference", ""),
]
FACTS = [("alice", "works_on", "billing", None), ("postgres", "version", "15", 1_700_000_100.0)]
BASE = "http://127.0.0.1:8765"
FOREIGN = {"Origin": "http://evil.example"}
#: What the dashboard's own page sends with every change.
SAME = {"Origin": BASE}


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    with machine(tmp_path_factory.mktemp("alpha"), MEMORIES, FACTS) as m:
        yield m


@pytest.fixture(scope="module")
def client(alpha: Machine) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, local=alpha.local), base_url=BASE) as c:
        yield c


# ---------------------------------------------------------------- schema, pages


def test_openapi_schema_is_valid_and_lists_every_endpoint(client: TestClient) -> None:
    from openapi_spec_validator import validate

    schema = client.app.openapi()
    validate(schema)
    assert set(schema["paths"]) == {
        "/api/status", "/api/memories", "/api/search", "/api/stats", "/api/facts", "/api/trust",
        "/api/trust/remove", "/api/sync/serve", "/api/sync/join", "/api/sync/approve", "/api/sync/forget", "/api/sync/cancel",
        "/api/sync/sessions/{session_id}", "/api/sync/sessions/{session_id}/events",
        "/api/memories/forget", "/api/facts/forget", "/api/sync/history", "/api/memories/{memory_id}",
        "/api/chat/status", "/api/chat/sessions", "/api/chat/sessions/{session_id}", "/api/chat/sessions/{session_id}/rename",
        "/api/chat/sessions/{session_id}/delete", "/api/chat", "/api/chat/stop",
    }
    events = schema["paths"]["/api/sync/sessions/{session_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    # Whatever changes something is a POST; a GET only reads or watches.
    for path, operations in schema["paths"].items():
        changing = path in ("/api/trust/remove", "/api/sync/serve", "/api/sync/join", "/api/sync/approve", "/api/sync/forget",
                            "/api/sync/cancel", "/api/memories/forget", "/api/facts/forget", "/api/chat",
                            "/api/chat/stop", "/api/chat/sessions/{session_id}/rename",
                            "/api/chat/sessions/{session_id}/delete")
        both = path in ("/api/memories", "/api/facts", "/api/chat/sessions")  # list (GET) and add (POST)
        assert set(operations) == ({"get", "post"} if both else {"post"} if changing else {"get"}), path
    assert client.get("/openapi.json").json() == schema


def test_index_and_static_sources_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "Trust &amp; accept" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_status_names_this_device(client: TestClient, alpha: Machine) -> None:
    body = client.get("/api/status").json()
    assert body["device_id"] == load_identity(alpha.settings.data_dir).fingerprint
    assert body["workspace"] == "default" and body["model"] == "all-MiniLM-L6-v2" and body["dimension"] == 384


# ---------------------------------------------------------------- memories, search, stats, facts


def test_memories_lists_newest_first_with_filter_choices(client: TestClient) -> None:
    body = client.get("/api/memories").json()
    assert body["total"] == 3
    assert [m["content"] for m in body["items"]] == [c for c, *_ in reversed(MEMORIES)]
    assert body["projects"] == ["db", "ops", "team"]
    assert body["types"] == ["note", "preference"]
    assert body["sources"] == ["", "db.md", "runbook.md"]


@pytest.mark.parametrize(("query", "contents"), [
    ({"project": "ops"}, [MEMORIES[0][0]]),
    ({"type": "note"}, [MEMORIES[1][0], MEMORIES[0][0]]),
    ({"source": "db.md"}, [MEMORIES[1][0]]),
    ({"project": "ops", "type": "preference"}, []),
    ({"limit": 1, "offset": 1}, [MEMORIES[1][0]]),
    ({"offset": 10}, []),
])
def test_memories_filters_and_pages(client: TestClient, query: dict[str, Any], contents: list[str]) -> None:
    body = client.get("/api/memories", params=query).json()
    assert [m["content"] for m in body["items"]] == contents


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}])
def test_memories_rejects_bad_paging(client: TestClient, query: dict[str, Any]) -> None:
    assert client.get("/api/memories", params=query).status_code == 422


def test_search_ranks_by_meaning_with_scores(client: TestClient) -> None:
    body = client.get("/api/search", params={"q": "which database version do we run?", "k": 2}).json()
    assert len(body["hits"]) == 2
    assert body["hits"][0]["memory"]["content"] == MEMORIES[1][0]
    assert body["hits"][0]["score"] >= body["hits"][1]["score"]
    only = client.get("/api/search", params={"q": "database", "project": "team"}).json()
    assert {h["memory"]["project"] for h in only["hits"]} == {"team"}


@pytest.mark.parametrize("query", [{}, {"q": ""}, {"q": "   "}, {"q": "x", "k": 0}, {"q": "x", "k": 101}])
def test_search_rejects_bad_queries(client: TestClient, query: dict[str, Any]) -> None:
    assert client.get("/api/search", params=query).status_code == 422


def test_stats_counts_per_project_type_and_facts(client: TestClient) -> None:
    body = client.get("/api/stats").json()
    assert body["memories"] == 3
    assert body["by_project"] == [{"name": n, "count": 1} for n in ("db", "ops", "team")]
    assert body["by_type"] == [{"name": "note", "count": 2}, {"name": "preference", "count": 1}]
    assert (body["facts_active"], body["facts_ended"]) == (1, 1)


def test_facts_lists_open_facts_unless_ended_asked(client: TestClient) -> None:
    open_facts = client.get("/api/facts").json()
    assert [(f["subject"], f["predicate"], f["object"], f["ended"]) for f in open_facts] == [("alice", "works_on", "billing", None)]
    every = client.get("/api/facts", params={"include_ended": "true"}).json()
    assert {f["object"] for f in every} == {"billing", "15"}
    assert client.get("/api/facts", params={"subject": "postgres", "include_ended": "true"}).json()[0]["ended"] == 1_700_000_100.0
    assert client.get("/api/facts", params={"limit": 0}).status_code == 422


# ---------------------------------------------------------------- trust


def test_trust_list_and_remove(client: TestClient, alpha: Machine) -> None:
    trust = TrustList(alpha.settings.trust_path)
    trust.add(fingerprint="0a1b2c3d", hostname="laptop", public_key="ab" * 32)
    trust.add(fingerprint="deadbeef", hostname="desk")
    listed = client.get("/api/trust").json()
    assert [(d["fingerprint"], d["hostname"], d["public_key"]) for d in listed] == [
        ("0a1b2c3d", "laptop", "ab" * 32), ("deadbeef", "desk", "")]

    assert client.post("/api/trust/remove", json={"fingerprint": "DEADBEEF"}, headers=FOREIGN).status_code == 403
    assert client.post("/api/trust/remove", json={"fingerprint": "DEADBEEF"}).status_code == 403  # no Origin
    assert client.post("/api/trust/remove", json={"fingerprint": "DEADBEEF"}, headers=SAME).json() == {"removed": "deadbeef"}
    assert client.post("/api/trust/remove", json={"fingerprint": "deadbeef"}, headers=SAME).status_code == 404
    assert client.post("/api/trust/remove", json={"fingerprint": "../x"}, headers=SAME).status_code == 422
    assert [d.fingerprint for d in trust.load()] == ["0a1b2c3d"]
    trust.remove("0a1b2c3d")


def test_forget_buttons_forget_memories_and_facts_same_origin_only(tmp_path: Path) -> None:
    with machine(tmp_path, MEMORIES, FACTS) as m, TestClient(create_app(m.settings, local=m.local), base_url=BASE) as c:
        items = c.get("/api/memories").json()["items"]
        victim = next(i for i in items if i["project"] == "db")
        assert c.post("/api/memories/forget", json={"ids": [victim["id"]]}, headers=FOREIGN).status_code == 403
        assert c.post("/api/memories/forget", json={"ids": ["../etc"]}, headers=SAME).status_code == 422
        r = c.post("/api/memories/forget", json={"ids": [victim["id"]]}, headers=SAME)
        assert r.json() == {"forgotten": [victim["id"]]}
        assert c.post("/api/memories/forget", json={"ids": [victim["id"]]}, headers=SAME).status_code == 404
        assert victim["id"] not in {i["id"] for i in c.get("/api/memories").json()["items"]}
        stats = c.get("/api/stats").json()
        assert stats["memories"] == len(MEMORIES) - 1 and "db" not in {p["name"] for p in stats["by_project"]}

        fact = c.get("/api/facts").json()[0]
        assert c.post("/api/facts/forget", json={"id": fact["id"]}, headers=FOREIGN).status_code == 403
        assert c.post("/api/facts/forget", json={"id": fact["id"][:8]}, headers=SAME).json() == {"forgotten": [fact["id"]]}
        assert c.post("/api/facts/forget", json={"id": fact["id"]}, headers=SAME).status_code == 404
        assert fact["id"] not in {f["id"] for f in c.get("/api/facts?include_ended=true").json()}


# ---------------------------------------------------------------- approval: bad input, origin, host


def test_approve_unknown_session_is_404(client: TestClient) -> None:
    r = client.post("/api/sync/approve", json={"session_id": "no-such-session", "decision": "accept"}, headers=SAME)
    assert r.status_code == 404


@pytest.mark.parametrize("body", [
    {"session_id": "s", "decision": "maybe"},
    {"session_id": "s", "decision": "ACCEPT"},
    {"session_id": "s"},
    {"decision": "accept"},
    {"session_id": "", "decision": "accept"},
    ["s", "accept"],
])
def test_approve_rejects_bad_bodies(client: TestClient, body: Any) -> None:
    assert client.post("/api/sync/approve", json=body, headers=SAME).status_code == 422


@pytest.mark.parametrize(("body", "status"), [
    ({"session_id": "no-such-session", "forget": True}, 404),
    ({"session_id": "s", "forget": "perhaps"}, 422),
    ({"session_id": "s"}, 422),
])
def test_a_forget_answer_to_nothing_is_refused(client: TestClient, body: Any, status: int) -> None:
    assert client.post("/api/sync/forget", json=body, headers=SAME).status_code == status


def test_approve_rejects_malformed_json(client: TestClient) -> None:
    r = client.post("/api/sync/approve", content=b'{"session_id": "s", "decision": ',
                    headers={"Content-Type": "application/json", **SAME})
    assert r.status_code == 422


def test_a_change_must_be_a_json_body(client: TestClient) -> None:
    # What an HTML form on another page can send without a preflight.
    r = client.post("/api/sync/cancel", content=b"session_id=s", headers={"Content-Type": "application/x-www-form-urlencoded", **SAME})
    assert r.status_code == 415


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:9999"},
    {"Origin": "https://127.0.0.1:8765"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    # A link clicked in a mail or chat app: no Origin, and Sec-Fetch-Site none (or nothing at all).
    {"Sec-Fetch-Site": "none"},
    {},
])
def test_state_changes_not_from_the_dashboards_page_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    assert client.post("/api/sync/approve", json={"session_id": "s", "decision": "accept"}, headers=headers).status_code == 403
    assert client.post("/api/sync/serve", json={"relay": "ws://127.0.0.1:1"}, headers=headers).status_code == 403
    assert client.post("/api/sync/join", json={"target": "ws://127.0.0.1:1/room", "pin": "ABCD1234"},
                       headers=headers).status_code == 403
    assert client.post("/api/sync/cancel", json={"session_id": "s"}, headers=headers).status_code == 403
    assert client.app.state.sessions.all() == []  # nothing was started


def test_a_link_to_the_old_start_urls_starts_nothing(client: TestClient) -> None:
    """`GET /api/sync/join?target=…&pin=…` once pushed a victim's memories to a stranger."""
    link = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}
    query = {"target": "ws://127.0.0.1:1/room", "pin": "ABCD1234"}
    assert client.get("/api/sync/join", params=query, headers=link).status_code == 405
    assert client.get("/api/sync/serve", params={"relay": "ws://127.0.0.1:1"}, headers=link).status_code == 405
    assert client.app.state.sessions.all() == []


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8765", "http://localhost:8765"])
def test_same_origin_is_allowed(client: TestClient, origin: str) -> None:
    r = client.post("/api/sync/approve", json={"session_id": "s", "decision": "accept"},
                    headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 404  # got past the origin check
    r = client.post("/api/sync/approve", json={"session_id": "s", "decision": "accept"},
                    headers={"Sec-Fetch-Site": "same-origin"})  # a same-origin fetch may leave Origin out
    assert r.status_code == 404


def test_foreign_host_name_is_refused(client: TestClient) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name.
    assert client.get("/api/memories", headers={"Host": "evil.example:8765"}).status_code == 400


@pytest.mark.parametrize(("path", "body"), [
    ("/api/sync/serve", {"relay": "ftp://relay.example"}),
    ("/api/sync/join", {"target": "ws://127.0.0.1:1/room", "pin": "short"}),
    ("/api/sync/join", {"target": "ws://127.0.0.1:1/room"}),
    ("/api/sync/join", {"target": "ws://127.0.0.1:1/bad room!", "pin": "ABCD1234"}),
    ("/api/sync/join", {"target": "ws://127.0.0.1:99999/room", "pin": "ABCD1234"}),
])
def test_sync_start_rejects_bad_parameters(client: TestClient, path: str, body: dict[str, str]) -> None:
    assert client.post(path, json=body, headers=SAME).status_code == 422
    assert client.app.state.sessions.all() == []


def test_unknown_session_events_is_404(client: TestClient) -> None:
    assert client.get("/api/sync/sessions/nope").status_code == 404
    assert client.get("/api/sync/sessions/nope/events").status_code == 404


# ---------------------------------------------------------------- a whole sync through the API


class EventStream:
    """Reads an SSE endpoint on a thread; events arrive in a queue, None at the end.

    Plain http.client, so `stop()` can cut the socket from the test's thread, as a
    closed browser tab does.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.content_type = ""
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=150)
        self.path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, name="sse-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.conn.request("GET", self.path)
            response = self.conn.getresponse()
            if response.status != 200:
                raise AssertionError(f"{self.url}: HTTP {response.status} {response.read()[:200]!r}")
            self.content_type = response.getheader("content-type", "")
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data: "):
                    self.events.put(json.loads(line[len("data: "):]))
        except BaseException as exc:  # handed to the test thread (unless we hung up ourselves)
            if not self.stopped.is_set():
                self.events.put(exc)
        self.events.put(None)

    def stop(self) -> None:
        """Hang up, as a page that goes away does."""
        self.stopped.set()
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=30)
        self.conn.close()

    def next(self, name: str, timeout: float = 120, where: Any = None) -> dict[str, Any]:
        """The next event called `name` (and matching `where`); earlier ones are kept in `seen`."""
        while True:
            item = self.events.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise AssertionError(f"{self.url}: {item!r}")
            if item is None:
                raise AssertionError(f"{self.url} ended before {name!r}; saw {self.seen}")
            self.seen.append(item)
            if item["event"] == "error":
                raise AssertionError(f"{self.url}: {item['message']}")
            if item["event"] == name and (where is None or where(item)):
                return item

    def end(self, timeout: float = 30) -> None:
        """Wait for the server to close the stream."""
        while (item := self.events.get(timeout=timeout)) is not None:
            assert not isinstance(item, BaseException), repr(item)
            self.seen.append(item)
        self.thread.join(timeout=timeout)


def approve(base: str, session_id: str, decision: str) -> httpx.Response:
    return httpx.post(f"{base}/api/sync/approve", json={"session_id": session_id, "decision": decision},
                      headers={"Origin": base}, timeout=10)


def start(base: str, kind: str, body: dict[str, Any]) -> tuple[str, EventStream]:
    """Start a session the way the page does (same-origin POST), then watch it."""
    r = httpx.post(f"{base}/api/sync/{kind}", json=body, headers={"Origin": base}, timeout=10)
    assert r.status_code == 201, r.text
    session_id = r.json()["session_id"]
    return session_id, EventStream(f"{base}/api/sync/sessions/{session_id}/events")


BETA = [("The mobile app release train leaves every second Thursday", "mobile", "note", ""),
        ("The deploy script is ops/deploy.sh and needs AWS credentials", "ops", "note", "runbook.md")]


def test_serve_approve_and_join_through_two_dashboards(tmp_path: Path, relay: int) -> None:
    with machine(tmp_path / "a", MEMORIES, FACTS) as a, machine(tmp_path / "b", BETA, [("bob", "owns", "billing", None)]) as b, \
            served(create_app(a.settings, local=a.local)) as a_url, served(create_app(b.settings, local=b.local)) as b_url:
        session_id, serve = start(a_url, "serve", {"relay": f"ws://127.0.0.1:{relay}"})
        room = serve.next("room")
        assert serve.content_type.startswith("text/event-stream")
        assert room["session_id"] == session_id and len(session_id) >= 32
        assert room["pin"] and room["room"] in room["target"]
        assert room["fingerprint"] == load_identity(a.settings.data_dir).fingerprint
        assert approve(a_url, session_id, "accept").status_code == 409  # nobody is waiting yet

        join_id, join = start(b_url, "join", {"target": room["target"], "pin": room["pin"]})
        asked = serve.next("approval_required")
        assert asked["fingerprint"] == load_identity(b.settings.data_dir).fingerprint
        assert {"hostname", "user", "os"} <= set(asked)
        assert approve(a_url, session_id, "accept").json() == {"session_id": session_id, "decision": "accept"}
        assert approve(a_url, session_id, "trust").status_code == 409  # a second decision

        # The joining page sees who the provider is (signed, checked) and the same code, before anything moves.
        confirm = join.next("confirm_required")
        assert confirm["fingerprint"] == load_identity(a.settings.data_dir).fingerprint
        assert confirm["verification"] == serve.next("peer_connected")["verification"]
        assert asked["verification"] == confirm["verification"] != ""  # shown on the serving page before the choice
        assert not any(e["event"] == "progress" for e in join.seen + serve.seen)
        assert approve(b_url, join_id, "trust").status_code == 409  # a join is joined or cancelled
        assert approve(b_url, join_id, "accept").json() == {"session_id": join_id, "decision": "accept"}

        a_stats, b_stats = serve.next("stats"), join.next("stats")
        assert a_stats["received"]["memories"]["inserted"] == 1 and a_stats["received"]["facts"]["inserted"] == 1
        assert b_stats["received"]["memories"]["inserted"] == 2 and b_stats["received"]["facts"]["inserted"] == 2
        assert "peer_connected" in {e["event"] for e in join.seen}
        serve.end()
        join.end()

        assert approve(a_url, session_id, "reject").status_code == 404  # finished
        info = httpx.get(f"{a_url}/api/sync/sessions/{session_id}").json()
        assert info["finished"] and info["kind"] == "serve" and info["events"][-1]["event"] == "stats"
        contents_a = {m["content"] for m in httpx.get(f"{a_url}/api/memories").json()["items"]}
        contents_b = {m["content"] for m in httpx.get(f"{b_url}/api/memories").json()["items"]}
        assert contents_a == contents_b == {c for c, *_ in MEMORIES + BETA}
        assert TrustList(a.settings.trust_path).load() == []  # accepted once, not trusted

        # Both Sync tabs list the sync, with the peer and what moved each way; the peers are known.
        a_history = httpx.get(f"{a_url}/api/sync/history").json()
        [entry] = a_history["syncs"]
        assert entry["role"] == "serve" and load_identity(b.settings.data_dir).fingerprint in entry["peer"]
        assert entry["received"]["memories"] == 1 and entry["sent"]["memories"] == a_stats["sent"]["memories"]["sent"] > 0
        assert not entry.get("error")
        assert [p["syncs"] for p in a_history["peers"]] == [1] and not a_history["peers"][0]["trusted"]
        [b_entry] = httpx.get(f"{b_url}/api/sync/history").json()["syncs"]
        assert b_entry["role"] == "join" and b_entry["received"]["memories"] == 2


def test_cancelling_a_join_at_the_confirmation_moves_nothing(tmp_path: Path, relay: int) -> None:
    with machine(tmp_path / "a", MEMORIES, FACTS) as a, machine(tmp_path / "b", BETA, []) as b, \
            served(create_app(a.settings, local=a.local)) as a_url, served(create_app(b.settings, local=b.local)) as b_url:
        session_id, serve = start(a_url, "serve", {"relay": f"ws://127.0.0.1:{relay}"})
        room = serve.next("room")
        join_id, join = start(b_url, "join", {"target": room["target"], "pin": room["pin"]})
        serve.next("approval_required")
        approve(a_url, session_id, "accept")
        join.next("confirm_required")
        assert approve(b_url, join_id, "reject").status_code == 200
        join.end()
        assert join.seen[-1]["event"] == "error" and "did not join" in join.seen[-1]["message"]
        serve.end()
        assert serve.seen[-1]["event"] == "error" and "chose not to sync" in serve.seen[-1]["message"]
        assert {m["content"] for m in httpx.get(f"{b_url}/api/memories").json()["items"]} == {c for c, *_ in BETA}


def test_40_watched_joins_end_when_their_pages_go(tmp_path: Path) -> None:
    """A join cannot outlive the page that watches it: each of these waits for a room nobody
    serves; closing its watcher ends the session, its thread and its relay connection."""
    from imprint.relay.server import RelayServer

    # All 40 come from 127.0.0.1: lift the relay's per-address limits for this test.
    relay = RelayServer(host="127.0.0.1", port=0, max_rooms_per_address=100, connection_burst=100)
    port = relay.start_in_thread()
    try:
        with machine(tmp_path / "b", BETA, []) as b:
            app = create_app(b.settings, local=b.local)
            with served(app) as url:
                watchers = []
                for n in range(40):
                    r = httpx.post(f"{url}/api/sync/join", json={"target": f"127.0.0.1:{port}/room{n}", "pin": "ABCD1234"},
                                   headers={"Origin": url}, timeout=10)
                    assert r.status_code == 201, r.text
                    watchers.append(EventStream(f"{url}/api/sync/sessions/{r.json()['session_id']}/events"))
                for w in watchers:
                    w.next("waiting", where=lambda e: "to be served" in e["message"])
                assert relay.wait_for_rooms(40, timeout=30), relay.room_count
                for w in watchers:
                    w.stop()
                sessions = app.state.sessions.all()
                assert len(sessions) == 40
                for session in sessions:
                    session.thread.join(timeout=60)
                    assert session.finished and not session.thread.is_alive()
                    assert "page that watched this sync was closed" in session.events[-1].message
                # The relay hears each connection close a moment after its session ends.
                assert relay.wait_for_rooms(0, timeout=30), relay.room_count
    finally:
        relay.stop()


def test_a_session_nobody_watches_ends_by_itself(tmp_path: Path) -> None:
    from imprint.relay.server import RelayServer

    relay = RelayServer(host="127.0.0.1", port=0)
    port = relay.start_in_thread()
    try:
        with machine(tmp_path / "b", BETA, []) as b:
            app = create_app(b.settings, local=b.local, watch_grace=1.0)
            with served(app) as url:
                r = httpx.post(f"{url}/api/sync/join", json={"target": f"127.0.0.1:{port}/lonely", "pin": "ABCD1234"},
                               headers={"Origin": url}, timeout=10)
                [session] = app.state.sessions.all()
                session.thread.join(timeout=60)
                assert session.finished and "no dashboard page watched" in session.events[-1].message
                assert r.json()["session_id"] == session.id
    finally:
        relay.stop()
