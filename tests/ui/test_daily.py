"""The dashboard for daily use, through its HTTP API on real actors: the chat's endpoints (against an
OpenAI-compatible endpoint on 127.0.0.1), adding memories and facts, the text filter, sort and page
size, the stats over time, and what a citation opens."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from imprint.chat.models import Endpoint
from imprint.ui.app import create_app
from tests.chat.endpoint import Reply, endpoint

from .helpers import Machine, machine, served

pytestmark = pytest.mark.timeout(180)

BASE = "http://127.0.0.1:8765"
SAME = {"Origin": BASE}
MEMORIES = [("The deploy script is ops/deploy.sh and needs AWS credentials", "ops", "note", "runbook.md"),
            ("Postgres runs version 16 with logical replication", "db", "note", "db.md"),
            ("Alice prefers code reviews on Tuesday mornings", "team", "preference", "")]


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    with machine(tmp_path_factory.mktemp("daily"), MEMORIES, [("alice", "reviews", "billing", None)]) as m:
        yield m


@pytest.fixture(scope="module")
def client(alpha: Machine) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, local=alpha.local), base_url=BASE) as c:
        yield c


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_conversations_are_listed_renamed_and_deleted_same_origin_only(client: TestClient) -> None:
    assert client.post("/api/chat/sessions", json={}).status_code == 403  # no Origin: not the page
    made = client.post("/api/chat/sessions", json={}, headers=SAME)
    assert made.status_code == 201 and made.json()["title"] == "New chat"
    cid = made.json()["id"]
    assert cid in {c["id"] for c in client.get("/api/chat/sessions").json()["sessions"]}
    assert client.post(f"/api/chat/sessions/{cid}/rename", json={"title": "Ops"}, headers=SAME).json()["title"] == "Ops"
    assert client.post(f"/api/chat/sessions/{cid}/rename", json={"title": "  "}, headers=SAME).status_code == 422
    assert client.post("/api/chat/sessions/nope/rename", json={"title": "x"}, headers=SAME).status_code == 404
    assert client.get(f"/api/chat/sessions/{cid}").json()["messages"] == []
    assert client.post(f"/api/chat/sessions/{cid}/delete", json={}).status_code == 403
    assert client.post(f"/api/chat/sessions/{cid}/delete", json={}, headers=SAME).json() == {"removed": cid}
    assert client.get(f"/api/chat/sessions/{cid}").status_code == 404
    assert client.post("/api/chat", json={"session_id": cid, "message": "hi"}, headers=SAME).status_code == 404


def test_a_question_streams_citations_then_tokens_and_is_kept(alpha: Machine) -> None:
    with endpoint([Reply(text="Run ops/deploy.sh [1].")]) as ep, \
            TestClient(create_app(alpha.settings, local=alpha.local, chat_endpoint=Endpoint(base_url=ep.url)),
                       base_url=BASE) as c:
        status = c.get("/api/chat/status").json()
        assert status["local"] is False and status["available"] and ep.url in status["model"]
        cid = c.post("/api/chat/sessions", json={}, headers=SAME).json()["id"]
        assert c.post("/api/chat", json={"session_id": cid, "message": "how do I deploy?"}).status_code == 403
        answer = c.post("/api/chat", json={"session_id": cid, "message": "how do I deploy?"}, headers=SAME)
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = sse(answer)
        assert events[0]["type"] == "citations" and events[-1] == {"type": "done", "stopped": False}
        cited = events[0]["items"][0]
        assert cited["content"].startswith("The deploy script") and cited["n"] == 1
        assert "".join(e["text"] for e in events if e["type"] == "token") == "Run ops/deploy.sh [1]."
        kept = c.get(f"/api/chat/sessions/{cid}").json()
        assert kept["title"] == "how do I deploy?" and kept["messages"][1]["citations"][0]["id"] == cited["id"]
        # The citation opens the memory it names.
        opened = c.get(f"/api/memories/{cited['id']}").json()
        assert opened["content"] == cited["content"] and opened["source"] == "runbook.md"
    assert client_get_404s(alpha)


def client_get_404s(alpha: Machine) -> bool:
    with TestClient(create_app(alpha.settings, local=alpha.local), base_url=BASE) as c:
        assert c.get("/api/memories/" + "0" * 16).status_code == 404
        assert c.get("/api/memories/not-an-id").status_code == 422
    return True


def test_stop_ends_an_answer_under_way(alpha: Machine) -> None:
    with endpoint([Reply(hang=True)]) as ep, \
            served(create_app(alpha.settings, local=alpha.local,
                              chat_endpoint=Endpoint(base_url=ep.url, timeout=60))) as url:
        cid = httpx.post(f"{url}/api/chat/sessions", json={}, headers={"Origin": url}).json()["id"]
        started = time.monotonic()
        with httpx.stream("POST", f"{url}/api/chat", json={"session_id": cid, "message": "deploy?"},
                          headers={"Origin": url}, timeout=30) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["type"] == "citations"
            busy = httpx.post(f"{url}/api/chat", json={"session_id": cid, "message": "again"}, headers={"Origin": url})
            assert busy.status_code == 409  # one answer at a time in a conversation
            assert httpx.post(f"{url}/api/chat/stop", json={"session_id": cid}, headers={"Origin": url}).status_code == 200
            ep.release.set()  # the endpoint's hanging reply ends; the turn sees the stop
            rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        assert rest[-1]["type"] == "done" and time.monotonic() - started < 20
        assert httpx.post(f"{url}/api/chat/stop", json={"session_id": cid}, headers={"Origin": url}).status_code == 404


def test_memories_and_facts_are_added_from_the_page(client: TestClient) -> None:
    assert client.post("/api/memories", json={"content": "x"}).status_code == 403
    done = client.post("/api/memories", json={"content": "The on-call rota lives in PagerDuty, team Falcon",
                                              "project": "ops", "type": "decision", "tags": "oncall, lang=yaml"},
                       headers=SAME)
    assert done.status_code == 201 and done.json()["inserted"] == 1
    [mid] = done.json()["ids"]
    found = client.get("/api/search", params={"q": "who is on call?", "k": 1}).json()["hits"][0]["memory"]
    assert found["id"] == mid and found["type"] == "decision" and found["tags"]["lang"] == "yaml"
    assert client.post("/api/memories", json={"content": "   "}, headers=SAME).status_code == 422
    assert client.post("/api/memories", json={"content": "x", "tags": "colour=red"}, headers=SAME).status_code == 422

    fact = client.post("/api/facts", json={"subject": "falcon", "predicate": "owns", "object": "on-call"}, headers=SAME)
    assert fact.status_code == 201 and fact.json()["ended"] is None
    assert fact.json()["id"] in {f["id"] for f in client.get("/api/facts").json()}
    assert client.post("/api/facts", json={"subject": "a", "predicate": " ", "object": "b"}, headers=SAME).status_code == 422


def test_memories_filter_by_text_sort_and_page_size(client: TestClient) -> None:
    hit = client.get("/api/memories", params={"q": "Postgres"}).json()
    assert hit["total"] == 1 and hit["items"][0]["content"].startswith("Postgres runs")
    assert client.get("/api/memories", params={"q": "no such words anywhere"}).json()["total"] == 0
    newest = [m["id"] for m in client.get("/api/memories", params={"limit": 500}).json()["items"]]
    oldest = [m["id"] for m in client.get("/api/memories", params={"limit": 500, "sort": "oldest"}).json()["items"]]
    assert oldest == list(reversed(newest)) and len(newest) >= 3
    assert client.get("/api/memories", params={"sort": "sideways"}).status_code == 422
    assert len(client.get("/api/memories", params={"limit": 2}).json()["items"]) == 2


def test_stats_say_when_what_and_where(client: TestClient, alpha: Machine) -> None:
    st = client.get("/api/stats").json()
    assert len(st["over_time"]) == 12 and st["over_time"][-1]["label"] == time.strftime("%Y-%m")
    # The seeded memories are dated 2023; anything added in this module is dated now.
    assert sum(p["count"] for p in st["over_time"]) == st["memories"] - len(MEMORIES)
    assert st["disk_bytes"] > 100_000 and st["model"] == "all-MiniLM-L6-v2" and len(st["model_fingerprint"]) == 16
    assert st["last_sync"] == ""


def test_the_page_has_a_favicon_and_a_chat_tab(client: TestClient) -> None:
    page = client.get("/").text
    assert 'rel="icon"' in page and 'data-page="chat"' in page
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.text.startswith("<svg")
