"""The chat against an OpenAI-compatible endpoint on 127.0.0.1 speaking the real API (streaming,
tool calls), over a real store and model: what reaches the endpoint, the tools it may call, and
how failures end. The local model's own test is test_local.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imprint.chat.agent import CHAT_TOOLS, Chat, CoreMemory, run_turn
from imprint.chat.models import Endpoint
from imprint.core import Core
from tests.ui.helpers import machine

from .endpoint import Reply, endpoint

pytestmark = pytest.mark.timeout(180)

TARGET = "The staging database listens on port 5433, not the default 5432"
DEPLOY = "The deploy script is ops/deploy.sh; run it from the repository root with AWS credentials"
FILLER = [f"The {w} violin lesson moved to room {i}" for i, w in enumerate(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "morning", "evening", "late",
     "early", "spring", "summer", "autumn", "winter", "first", "second", "third", "fourth", "fifth"])]


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    memories = [(TARGET, "ops", "note", ""), (DEPLOY, "ops", "note", "runbook.md")] + \
        [(f, "music", "note", "") for f in FILLER]
    facts = [("staging-db", "runs_on", "port 5433", None), ("alice", "plays", "violin", None)]
    with machine(tmp_path_factory.mktemp("chat"), memories, facts) as m:
        yield Core(m.settings, local=m.local)


def turn(core: Core, url: str, question: str, *, conversation: str = "", timeout: float = 30.0,
         stop: threading.Event | None = None, on_event: Any = None) -> tuple[list[dict[str, Any]], str]:
    store = core.conversations()
    conversation = conversation or store.create()["id"]
    events: list[dict[str, Any]] = []

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if on_event:
            on_event(event)

    run_turn(Chat(CoreMemory(core), Endpoint(base_url=url, timeout=timeout), settings=core.settings), store,
             conversation, question, emit, stop or threading.Event())
    assert events[-1]["type"] == "done", events
    return events, conversation


def kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_the_prompt_holds_what_was_found_and_not_the_store(core: Core) -> None:
    with endpoint([Reply(text="Staging's database listens on port 5433 [1].")]) as ep:
        events, conversation = turn(core, ep.url, "which port does the staging database use?")
    [citations] = kinds(events, "citations")
    first = citations["items"][0]
    assert first["kind"] == "memory" and first["content"] == TARGET and first["n"] == 1
    assert any(i["kind"] == "fact" and i["subject"] == "staging-db" for i in citations["items"])
    sent = ep.messages_text(0)
    assert TARGET in sent and "[1]" in sent
    assert sum(f in sent for f in FILLER) == 0, "unrelated memories were sent to the endpoint"
    assert ep.requests[0]["model"] == "test-model" and ep.requests[0]["stream"] is True  # asked GET /models for it
    assert "".join(e["text"] for e in kinds(events, "token")) == "Staging's database listens on port 5433 [1]."
    assert not kinds(events, "error")
    kept = core.conversations().get(conversation)
    assert [m["role"] for m in kept["messages"]] == ["user", "assistant"]
    assert kept["messages"][1]["citations"][0]["id"] == first["id"]
    assert kept["title"] == "which port does the staging database use?"


def test_tool_calls_run_the_mcp_servers_read_only_tools(core: Core) -> None:
    replies = [Reply(tool_calls=[("search", {"query": "deploy script credentials", "limit": 3})]),
               Reply(text="Run ops/deploy.sh from the repository root.")]
    with endpoint(replies) as ep:
        events, _ = turn(core, ep.url, "how do I ship a release?")
    offered = {t["function"]["name"] for t in ep.requests[0]["tools"]}
    assert offered == set(CHAT_TOOLS)
    assert all("workspace" not in t["function"]["parameters"]["properties"] for t in ep.requests[0]["tools"])
    [call] = kinds(events, "tool_call")
    assert call["name"] == "search" and call["args"]["query"] == "deploy script credentials"
    [result] = kinds(events, "tool_result")
    assert "ops/deploy.sh" in result["result"]  # the real search, over the real store
    tool_messages = [m for m in ep.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_call_id"] == "call_0" and "ops/deploy.sh" in tool_messages[0]["content"]
    assert [m for m in ep.requests[1]["messages"] if m.get("tool_calls")][0]["tool_calls"][0]["function"]["name"] == "search"
    assert "".join(e["text"] for e in kinds(events, "token")) == "Run ops/deploy.sh from the repository root."


def test_rounds_of_tool_calls_are_bounded(core: Core) -> None:
    from imprint.chat.agent import MAX_ROUNDS

    replies = [Reply(tool_calls=[("status", {})]) for _ in range(MAX_ROUNDS + 3)]
    with endpoint(replies) as ep:
        events, _ = turn(core, ep.url, "tell me everything")
    assert len(ep.requests) == MAX_ROUNDS
    assert "tools" not in ep.requests[-1], "the last round must answer, not call"
    assert len(kinds(events, "tool_call")) == MAX_ROUNDS - 1
    [error] = kinds(events, "error")
    assert f"kept calling tools for {MAX_ROUNDS} rounds" in error["error"]


def test_an_endpoint_without_tools_is_asked_again_without_them(core: Core) -> None:
    with endpoint([Reply(text="Port 5433 [1].")], reject_tools=True, model="no-tools") as ep:
        events, _ = turn(core, ep.url, "staging database port?")
    assert not kinds(events, "error")
    assert "tools" in ep.requests[0] and "tools" not in ep.requests[-1]
    assert "".join(e["text"] for e in kinds(events, "token")) == "Port 5433 [1]."


@pytest.mark.parametrize("reply,expected", [
    (Reply(status=401, error="invalid api key"), "refused the API key"),
    (Reply(status=404, error="model 'x' not found"), "IMPRINT_CHAT_MODEL"),
    (Reply(status=400, error="This model's maximum context length is 4096 tokens"), "too long"),
    (Reply(status=500, error="boom"), "answered 500"),
])
def test_an_endpoint_error_is_one_line(core: Core, reply: Reply, expected: str) -> None:
    with endpoint([reply]) as ep:
        events, _ = turn(core, ep.url, "staging database port?")
    [error] = kinds(events, "error")
    assert expected in error["error"] and "\n" not in error["error"] and "Traceback" not in error["error"]


def test_a_hanging_or_absent_endpoint_frees_the_chat(core: Core) -> None:
    with endpoint([Reply(hang=True), Reply(text="Back: 5433 [1].")]) as ep:
        started = time.monotonic()
        events, conversation = turn(core, ep.url, "staging database port?", timeout=1.0)
        assert time.monotonic() - started < 15
        [error] = kinds(events, "error")
        assert "gave no answer for 1 s" in error["error"]
        events, _ = turn(core, ep.url, "and now?", conversation=conversation, timeout=5.0)  # the chat is free again
        assert "".join(e["text"] for e in kinds(events, "token")) == "Back: 5433 [1]."
    events, _ = turn(core, ep.url, "anyone there?", timeout=5.0)  # the endpoint is gone
    [error] = kinds(events, "error")
    assert "not reachable" in error["error"]


def test_stop_ends_the_answer_and_keeps_what_came(core: Core) -> None:
    stop = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "token":
            stop.set()

    with endpoint([Reply(text="one two three four five six seven eight nine ten " * 20)]) as ep:
        events, conversation = turn(core, ep.url, "count for me", stop=stop, on_event=on_event)
    assert events[-1] == {"type": "done", "stopped": True}
    assert len(kinds(events, "token")) == 1
    answer = core.conversations().get(conversation)["messages"][-1]
    assert answer["role"] == "assistant" and answer["content"].endswith("[stopped]")


def test_the_question_is_sent_with_earlier_turns_but_not_their_memories(core: Core) -> None:
    with endpoint([Reply(text="5433 [1]."), Reply(text="ops/deploy.sh [1].")]) as ep:
        _, conversation = turn(core, ep.url, "staging database port?")
        turn(core, ep.url, "and the deploy script?", conversation=conversation)
    second = ep.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "staging database port?" and second[2]["content"] == "5433 [1]."
    assert DEPLOY.split(";")[0] in second[3]["content"]


def test_conversations_survive_a_reopen(tmp_path: Path) -> None:
    from imprint.chat.store import Conversations
    from imprint.errors import InputError

    store = Conversations(tmp_path / "chat.db")
    one = store.create()["id"]
    store.append(one, "user", "what is the staging port? " * 10)
    store.append(one, "assistant", "5433 [1]", [{"n": 1, "kind": "memory", "id": "ab" * 8}])
    two = store.create("kept title")["id"]
    store.append(two, "user", "something else")
    store.close()
    store = Conversations(tmp_path / "chat.db")
    listed = store.list()
    assert {c["id"] for c in listed} == {one, two} and listed[0]["id"] == two
    first = store.get(one)
    assert first["title"].startswith("what is the staging port?") and len(first["title"]) <= 80
    assert first["messages"][1]["citations"] == [{"n": 1, "kind": "memory", "id": "ab" * 8}]
    assert store.get(two)["title"] == "kept title"
    assert store.rename(one, "Staging") and store.get(one)["title"] == "Staging"
    with pytest.raises(InputError):
        store.rename(one, "   ")
    assert store.delete(two) and store.get(two) is None and not store.delete(two)
    with pytest.raises(InputError, match="no conversation"):
        store.history(two)
