"""One chat turn: retrieve, cite, ask the model, stream the answer as events.

Retrieval comes first, always: the question is searched in the memories (and
matched against the facts), the best are numbered [1]…[n] — the citations the
page and the terminal show — and only those go into the prompt, never the
store. An endpoint that takes tools may then call the memory's read-only tools
(the MCP server's own `search`, `kg_query`, `status`, `list_sources`,
`file_chunks`: one implementation for agents and for the chat) for up to
:data:`MAX_ROUNDS` rounds; the small local model does not.

Events (dicts, as the dashboard's SSE and `imprint chat --json` carry them):
`status` {text}, `citations` {items}, `token` {text}, `tool_call` {name, args},
`tool_result` {name, result}, `assistant_message` {text}, `error` {error},
`done` {stopped}. An error is one line; `done` always comes last.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Callable

from imprint.chat.models import ChatError, Endpoint, LocalModel, RemoteModel
from imprint.errors import ImprintError
from imprint.service import protocol as p

#: Rounds of tool calls an endpoint may make for one question (as Imprint's own chat).
MAX_ROUNDS = 6
#: Memories and facts put in the prompt at most, and the least cosine score a memory needs to be cited.
MAX_MEMORIES = 5
MAX_FACTS = 5
MIN_SCORE = 0.15
#: Characters of a memory given to the model (the local model's context is small).
LOCAL_SNIPPET = 500
REMOTE_SNIPPET = 2000
#: Earlier turns of the conversation given to the model (the small local one gets lost in more than one:
#: it starts citing the numbers of earlier answers).
HISTORY_TURNS = 6
LOCAL_HISTORY_TURNS = 1
#: Open facts looked through for ones that share words with the question.
FACT_SCAN = 5000
#: The MCP tools the chat's model may call: those that only read.
CHAT_TOOLS = ("search", "kg_query", "status", "list_sources", "file_chunks")
#: Characters of a tool's result given back to the model.
TOOL_RESULT_MAX = 6000

SYSTEM = (
    "You are imprint, the assistant of the user's long-term memory. Answer the question from the numbered "
    "memories and facts given with it. Cite each one you use with its number in brackets, like [1]. If they do "
    "not contain the answer, say that the memory holds nothing about it. Be brief."
)
TOOLS_NOTE = (
    " You may call the memory's tools (search, kg_query, status, list_sources, file_chunks) to look further "
    "before answering."
)

Emit = Callable[[dict[str, Any]], None]
_WORD = re.compile(r"[\w.-]{3,}", re.UNICODE)
_STOPWORDS = frozenset("the and for are was were what which who whom whose where when why how does did has have "
                       "had with that this these those from into about there their they them you your our its "
                       "can could should would will not any all use uses used".split())


class CoreMemory:
    """The memory of one core, asked as the service asks it (the MCP tools' `memory` inside the service)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def call(self, workspace: str, request: p.Request, reply: Any = Any) -> Any:
        from imprint.service.dispatch import answer

        if workspace.strip() and workspace.strip() != self.core.settings.workspace:
            raise ChatError(f"the chat answers from workspace {self.core.settings.workspace!r} only")
        return answer(self.core, request, lambda text: None)


def _words(text: str) -> set[str]:
    return {w.lower().strip(".-") for w in _WORD.findall(text)} - _STOPWORDS


def retrieve(memory: Any, question: str) -> list[dict[str, Any]]:
    """The citations for `question`: the best memories, then the facts sharing the most words with it."""
    from imprint.messages.store import SearchHit, StoredFact

    hits = memory.call("", p.Search(query=question, k=MAX_MEMORIES), tuple[SearchHit, ...])
    items: list[dict[str, Any]] = []
    for hit in hits:
        if hit.score < MIN_SCORE and items:
            break
        if hit.score < MIN_SCORE:
            continue
        r = hit.record
        items.append({"n": len(items) + 1, "kind": "memory", "id": r.id, "score": round(hit.score, 3),
                      "project": r.project, "type": r.type, "source": r.source, "chunk_index": r.chunk_index,
                      "content": r.content})
    wanted = _words(question)
    if wanted:
        facts = memory.call("", p.FactList(limit=FACT_SCAN), tuple[StoredFact, ...])
        scored = []
        for f in facts:
            r = f.record
            overlap = len(wanted & (_words(r.subject) | _words(r.object) | _words(r.predicate)))
            if overlap:
                scored.append((-overlap, -r.valid_from, f))
        for _, _, f in sorted(scored, key=lambda s: s[:2])[:MAX_FACTS]:
            r = f.record
            items.append({"n": len(items) + 1, "kind": "fact", "id": f.short_id, "subject": r.subject,
                          "predicate": r.predicate, "object": r.object, "valid_from": r.valid_from,
                          "ended": r.ended, "content": f"{r.subject} {r.predicate} {r.object}"})
    return items


def context_of(items: list[dict[str, Any]], snippet: int) -> str:
    if not items:
        return "The memory holds nothing that matches this question."
    lines = []
    for item in items:
        if item["kind"] == "memory":
            where = f"{item['project']}" + (f", {item['source']}" if item["source"] else "")
            text = " ".join(item["content"].split())
            text = text if len(text) <= snippet else text[:snippet].rsplit(" ", 1)[0] + " …"
            lines.append(f"[{item['n']}] ({where}) {text}")
        else:
            since = time.strftime("%Y-%m-%d", time.localtime(item["valid_from"]))
            lines.append(f"[{item['n']}] fact: {item['subject']} → {item['predicate']} → {item['object']} "
                         f"(since {since})")
    return "\n".join(lines)


class Chat:
    """Answers questions for one workspace, from `memory`, with the model of `endpoint`."""

    def __init__(self, memory: Any, endpoint: Endpoint, *, settings: Any = None) -> None:
        self.memory = memory
        self.endpoint = endpoint
        self.settings = settings
        self._tools: list[dict[str, Any]] | None = None
        self._server: Any = None

    def model(self) -> Any:
        return LocalModel.shared() if self.endpoint.local else RemoteModel(self.endpoint)

    # ------------------------------------------------------------ tools (the MCP server's own)

    def _tool_server(self) -> Any:
        if self._server is None:
            from imprint.mcp_server import build_server

            self._server = build_server(self.settings, memory=self.memory)
        return self._server

    def tools(self) -> list[dict[str, Any]]:
        """The read-only MCP tools as OpenAI function tools (without `workspace`: the chat's is fixed)."""
        import anyio

        if self._tools is None:
            listed = anyio.run(self._tool_server().list_tools)
            tools = []
            for tool in listed:
                if tool.name not in CHAT_TOOLS:
                    continue
                schema = dict(tool.input_schema)
                schema["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k != "workspace"}
                tools.append({"type": "function", "function": {"name": tool.name, "description": tool.description,
                                                               "parameters": schema}})
            self._tools = tools
        return self._tools

    def run_tool(self, name: str, arguments: str) -> tuple[dict[str, Any], str]:
        import anyio

        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            return {}, f"error: the arguments are not JSON: {arguments[:100]!r}"
        if not isinstance(args, dict):
            return {}, "error: the arguments must be a JSON object"
        if name not in CHAT_TOOLS:
            return args, f"error: no tool {name!r}; the tools are {', '.join(CHAT_TOOLS)}"
        args.pop("workspace", None)
        try:
            result = anyio.run(self._tool_server().call_tool, name, args)
            text = "\n".join(getattr(c, "text", "") for c in result.content)
        except Exception as exc:  # a ToolError is the tool's own one-line message
            text = f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return args, text[:TOOL_RESULT_MAX]

    # ------------------------------------------------------------ a turn

    def answer(self, question: str, history: list[dict[str, str]], emit: Emit, stop: threading.Event) -> str:
        """Answer `question`; every step goes to `emit`; returns the answer's text (as far as it got)."""
        question = question.strip()
        if not question:
            raise ChatError("the question is empty")
        started = time.perf_counter()
        items = retrieve(self.memory, question)
        emit({"type": "citations", "items": items, "ms": round((time.perf_counter() - started) * 1000, 1)})
        model = self.model()
        if isinstance(model, LocalModel) and not model.loaded:
            emit({"type": "status", "text": "loading the local chat model (the first question only)…"})
            model.load()
        local = isinstance(model, LocalModel)
        system = SYSTEM + ("" if local else TOOLS_NOTE)
        prompt = (f"Memories and facts:\n{context_of(items, LOCAL_SNIPPET if local else REMOTE_SNIPPET)}\n\n"
                  f"Question: {question}")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        turns = LOCAL_HISTORY_TURNS if local else HISTORY_TURNS
        messages += [m for m in history if m.get("role") in ("user", "assistant")][-turns * 2:]
        messages.append({"role": "user", "content": prompt})
        tools = None if local else self.tools()
        answer_text = ""
        for round_ in range(MAX_ROUNDS):
            last = round_ == MAX_ROUNDS - 1
            text, calls = "", []
            for delta in model.stream(messages, stop=stop, tools=None if last else tools):
                if stop.is_set():
                    break
                if delta.text:
                    text += delta.text
                    emit({"type": "token", "text": delta.text})
                calls.extend(delta.tool_calls)
            answer_text += text
            if stop.is_set() or not calls:
                break
            if last:
                if not answer_text.strip():
                    raise ChatError(f"the model kept calling tools for {MAX_ROUNDS} rounds without answering: "
                                    "ask more precisely")
                break
            messages.append({"role": "assistant", "content": text or None, "tool_calls": [
                {"id": c["id"] or f"call_{round_}_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"] or "{}"}} for i, c in enumerate(calls)]})
            for i, call in enumerate(calls):
                args, result = self.run_tool(call["name"], call["arguments"])
                emit({"type": "tool_call", "name": call["name"], "args": args})
                emit({"type": "tool_result", "name": call["name"], "result": result})
                messages.append({"role": "tool", "tool_call_id": call["id"] or f"call_{round_}_{i}",
                                 "content": result})
        return answer_text.strip()


def run_turn(chat: Chat, conversations: Any, conversation_id: str, question: str, emit: Emit,
             stop: threading.Event) -> None:
    """One question in a conversation: stored with its answer (even a stopped one), every step emitted,
    any failure one `error` line; `done` last."""
    stopped = False
    try:
        history = conversations.history(conversation_id)
        conversations.append(conversation_id, "user", question)
        citations: list[dict[str, Any]] = []

        def keep(event: dict[str, Any]) -> None:
            if event["type"] == "citations":
                citations[:] = event["items"]
            emit(event)

        text = chat.answer(question, history, keep, stop)
        stopped = stop.is_set()
        if text or citations:
            conversations.append(conversation_id, "assistant", text + (" [stopped]" if stopped else ""),
                                 citations)
        emit({"type": "assistant_message", "text": text})
    except ImprintError as exc:
        emit({"type": "error", "error": str(exc)})
    except Exception as exc:  # never a stack trace in the chat; the log has it
        from loguru import logger

        logger.exception("chat: turn failed")
        emit({"type": "error", "error": f"the chat failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"})
    finally:
        emit({"type": "done", "stopped": stopped})
