"""`imprint chat`: ask the memory a question; the answer streams in the terminal, grounded in the
memories and facts it found (listed as numbered citations)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from imprint.commands import CommandLine
from imprint.commands.render import Output, note
from imprint.config import Settings
from imprint.errors import ImprintError, InputError
from imprint.service import protocol as p
from imprint.text import visible


def register(cli: CommandLine) -> None:
    a = cli.command("chat", cmd_chat, "ask your memory a question (the answer cites the memories it used)",
                    description="Answer QUESTION from this workspace's memories and facts: the best matches are "
                                "found first and shown as numbered citations, then a language model phrases the "
                                "answer from them, streamed as it comes. By default the small local model "
                                "(SmolLM2-135M, on this machine, nothing leaves it); any OpenAI-compatible endpoint "
                                "with IMPRINT_CHAT_BASE_URL (Ollama, llama.cpp, vLLM, LM Studio, OpenAI), "
                                "IMPRINT_CHAT_MODEL and IMPRINT_CHAT_API_KEY — then only the question and the "
                                "memories found are sent. Conversations are kept per workspace (the dashboard's "
                                "Chat tab shows the same ones).")
    a.add_argument("question", nargs="?", help="what to ask (omit with --list)")
    a.add_argument("-c", "--continue", dest="continue_", action="store_true",
                   help="go on with the most recent conversation (the model sees its earlier turns)")
    a.add_argument("--conversation", metavar="ID", help="go on with this conversation (ids: --list)")
    a.add_argument("--list", action="store_true", help="list the conversations, newest first")


def chat_endpoint() -> p.ChatEndpoint:
    """The user's IMPRINT_CHAT_* settings, passed to the service (whose environment is not this shell's)."""
    from imprint.chat.models import endpoint_from_env

    e = endpoint_from_env()
    return p.ChatEndpoint(base_url=e.base_url, model=e.model, api_key=e.api_key, timeout=e.timeout)


def cmd_chat(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    from imprint.service.client import ServiceClient

    endpoint = chat_endpoint()
    question = (args.question or "").strip()
    if not question and not args.list:
        raise InputError("say what to ask: imprint chat \"which port does staging use?\" (or --list)")
    with ServiceClient(settings) as service:
        if args.list:
            found = service.call(p.ChatConversations(limit=200), list[dict[str, Any]])
            for c in found:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["updated_at"]))
                out.result(c, f"{c['id']}  {when}  {c['messages']:>3} messages  {c['title']}")
            if not found:
                note("imprint: no conversations yet: imprint chat \"a question\"")
            return 0
        conversation = args.conversation or ""
        if args.continue_ and not conversation:
            found = service.call(p.ChatConversations(limit=1), list[dict[str, Any]])
            conversation = found[0]["id"] if found else ""
        failed: list[str] = []
        state = {"tokens": False}

        def on_chat(event: dict[str, Any]) -> None:
            kind = event.get("type")
            if out.json_mode:
                out.result(event)
                if kind == "error":
                    failed.append(event.get("error", ""))
                return
            if kind == "citations":
                items = event.get("items", [])
                if not items:
                    note("imprint: no memory matches the question")
                for item in items:
                    sys.stderr.write(visible(_citation_line(item)) + "\n")
                sys.stderr.flush()
            elif kind == "status":
                note(f"imprint: {event.get('text', '')}")
            elif kind == "token":
                sys.stdout.write(visible(event.get("text", "")))
                sys.stdout.flush()
                state["tokens"] = True
            elif kind == "tool_call":
                note(f"imprint: the model calls {event.get('name')}({_args(event.get('args') or {})})")
            elif kind == "error":
                failed.append(event.get("error", ""))
            elif kind == "done":
                if state["tokens"]:
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                if event.get("stopped"):
                    note("imprint: stopped")

        conversation = service.call(p.ChatAsk(question=question, conversation=conversation, endpoint=endpoint), str,
                                    on_chat=on_chat, on_note=lambda text: note(f"imprint: {text}"))
    if failed:
        raise ImprintError(failed[0])
    if not out.json_mode:
        note(f"imprint: conversation {conversation} (go on with: imprint chat -c \"…\")")
    return 0


def _citation_line(item: dict[str, Any]) -> str:
    if item.get("kind") == "fact":
        return f"[{item['n']}] fact {item['id']}: {item['subject']} → {item['predicate']} → {item['object']}"
    text = " ".join(str(item.get("content", "")).split())
    where = item.get("project", "") + (f" {item['source']}#{item['chunk_index']}" if item.get("source") else "")
    return f"[{item['n']}] {item['id']} ({where}, {item.get('score', 0):.2f}) {text[:90]}{'…' if len(text) > 90 else ''}"


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in list(args.items())[:4])
