"""An OpenAI-compatible chat endpoint on 127.0.0.1 for the chat's tests: the real wire format
(`POST /v1/chat/completions` streamed as SSE chunks, tool calls in deltas, `GET /v1/models`),
answering from a script and recording every request it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One answer: text streamed in pieces, or tool calls; or an HTTP error; or silence."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    error: str = ""
    hang: bool = False
    #: Seconds between two pieces of text (a slow model).
    delay: float = 0.0


class Endpoint:
    def __init__(self, replies: list[Reply], *, model: str = "test-model", reject_tools: bool = False) -> None:
        self.replies = list(replies)
        self.model = model
        self.reject_tools = reject_tools
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # ends a hanging reply
        self.url = ""

    def messages_text(self, n: int = -1) -> str:
        """All the text of the messages of request `n`."""
        return "\n".join(str(m.get("content") or "") for m in self.requests[n]["messages"])


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


@contextmanager
def endpoint(replies: list[Reply], **kwargs: Any) -> Iterator[Endpoint]:
    state = Endpoint(replies, **kwargs)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                self.send_error(404)
                return
            body = json.dumps({"object": "list", "data": [{"id": state.model, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length))
            request["authorization"] = self.headers.get("Authorization", "")
            state.requests.append(request)
            if state.reject_tools and "tools" in request:
                return self._error(400, "this model does not support tools")
            reply = state.replies.pop(0) if state.replies else Reply(text="(no more replies scripted)")
            if reply.status != 200:
                return self._error(reply.status, reply.error or "error")
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if reply.hang:
                state.release.wait(30)
                return
            try:
                self.wfile.write(_chunk({"role": "assistant", "content": ""}))
                for i in range(0, len(reply.text), 7):
                    self.wfile.write(_chunk({"content": reply.text[i:i + 7]}))
                    self.wfile.flush()
                    if reply.delay and state.release.wait(reply.delay):
                        return
                for index, (name, args) in enumerate(reply.tool_calls):
                    encoded = json.dumps(args)
                    half = len(encoded) // 2  # arguments arrive in pieces, as real endpoints send them
                    self.wfile.write(_chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                                             "function": {"name": name, "arguments": encoded[:half]}}]}))
                    self.wfile.write(_chunk({"tool_calls": [{"index": index, "function": {"arguments": encoded[half:]}}]}))
                self.wfile.write(_chunk({}, "tool_calls" if reply.tool_calls else "stop"))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:
                pass

        def _error(self, status: int, message: str) -> None:
            body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, name="fake-endpoint", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
