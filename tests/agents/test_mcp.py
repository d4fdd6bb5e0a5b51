"""The MCP server: its tools, driven by the official SDK's own client, in-process and over stdio,
against the real service of a data dir (the real store and model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from imprint.config import Settings
from imprint.mcp_server import build_server
from tests.conftest import cli_env
from tests.ui.test_cli import free_port

RUNBOOK_TAIL = ("If the replica lags by more than five minutes during the cut-over, pause the billing consumers, "
                "promote the warm standby in eu-west-2 and page the database on-call before touching DNS.")


def runbook() -> str:
    """A 6 KB runbook whose last paragraph holds the answer."""
    steps = "\n\n".join(
        f"## Step {i}\n\nCheck the {w} dashboard, confirm the {w} queue is drained and note the time in the log. "
        f"Then ask the {w} owners in the channel whether anything is scheduled for tonight."
        for i, w in enumerate(["ingest", "export", "search", "mailer", "thumbnail", "audit", "ledger", "invoice",
                               "webhook", "scheduler", "archive", "report", "metrics", "session", "upload",
                               "catalog", "pricing", "checkout", "shipping", "returns", "loyalty", "support",
                               "feedback", "notifications", "analytics", "backup", "restore", "failover"]))
    return f"# Database migration runbook\n\n{steps}\n\n## When things go wrong\n\n{RUNBOOK_TAIL}\n"


def call(settings: Settings, steps: Any) -> Any:
    """Run `steps(client)` against an in-process server; its return value."""
    from mcp import Client

    async def main() -> Any:
        async with Client(build_server(settings)) as client:
            return await steps(client)

    return anyio.run(main)


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data").prepare()


def test_the_tools_their_schemas_and_a_store_search_delete_round(settings: Settings) -> None:
    async def steps(client: Any) -> dict[str, Any]:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        stored = text(await client.call_tool("store", {"content": "We deploy with ops/deploy.sh from the bastion, "
                                                       "never from a laptop", "project": "ops", "type": "decision",
                                                       "tags": "deploy, lang=shell"}))
        found = text(await client.call_tool("search", {"query": "how do we deploy?", "limit": 3}))
        memory_id = stored.split("[")[1].split("]")[0]
        deleted = text(await client.call_tool("delete", {"memory_id": memory_id}))
        after = text(await client.call_tool("search", {"query": "how do we deploy?", "limit": 3}))
        status = text(await client.call_tool("status", {}))
        return {"tools": tools, "stored": stored, "found": found, "id": memory_id, "deleted": deleted,
                "after": after, "status": status}

    out = call(settings, steps)
    assert set(out["tools"]) == {"search", "store", "delete", "kg_query", "kg_edit", "status", "list_sources",
                                 "file_chunks"}
    for tool in out["tools"].values():
        assert tool.description and "workspace" in tool.input_schema["properties"]
    assert out["tools"]["search"].input_schema["required"] == ["query"]
    assert out["stored"].startswith("stored [") and len(out["id"]) == 16
    assert f"id={out['id']}" in out["found"] and "project=ops type=decision" in out["found"]
    assert out["deleted"] == f"forgot {out['id']}"
    assert out["id"] not in out["after"]
    assert "Memories: 0" in out["status"] and "Workspace: default" in out["status"]


def test_bad_arguments_are_tool_errors_and_store_nothing(settings: Settings) -> None:
    async def steps(client: Any) -> list[Any]:
        return [
            await client.call_tool("store", {"content": "   "}),
            await client.call_tool("store", {"content": "x " * (4 * 1024 * 1024 + 1)}),
            await client.call_tool("store", {"content": "fine", "workspace": "../elsewhere"}),
            await client.call_tool("store", {"content": "fine", "workspace": "nosuch"}),
            await client.call_tool("store", {"content": "fine", "tags": "colour=red"}),
            await client.call_tool("delete", {"memory_id": "0123456789abcdef"}),
            await client.call_tool("delete", {"memory_id": "not-an-id"}),
            await client.call_tool("search", {"query": " "}),
            await client.call_tool("kg_edit", {"op": "end"}),
            await client.call_tool("kg_edit", {"op": "add", "subject": "a"}),
            await client.call_tool("kg_query", {"as_of": "last tuesday"}),
            await client.call_tool("status", {}),
        ]

    *bad, status = call(settings, steps)
    for result in bad[:5] + bad[6:]:
        assert result.is_error, text(result)
    assert "empty" in text(bad[0]) and "8 MiB" in text(bad[1]) and "nosuch" in text(bad[3])
    assert "colour" in text(bad[4])
    assert "not found: 0123456789abcdef" in text(bad[5])
    assert "Memories: 0" in text(status) and "Facts: 0 open" in text(status)


def test_facts_add_query_as_of_and_end(settings: Settings) -> None:
    async def steps(client: Any) -> list[str]:
        added = text(await client.call_tool("kg_edit", {"subject": "alice", "predicate": "works_on",
                                                        "object": "billing"}))
        fact_id = added.split("[")[1].split("]")[0]
        return [added,
                text(await client.call_tool("kg_query", {"subject": "alice"})),
                text(await client.call_tool("kg_query", {"subject": "alice", "as_of": "2001-01-01"})),
                text(await client.call_tool("kg_edit", {"op": "end", "fact_id": fact_id})),
                text(await client.call_tool("kg_query", {"subject": "alice"})),
                text(await client.call_tool("kg_query", {"subject": "alice", "include_ended": True}))]

    added, found, long_ago, ended, open_now, history = call(settings, steps)
    assert added.startswith("added [") and "alice → works_on → billing" in added
    assert "alice → works_on → billing" in found
    assert long_ago == "No facts found."
    assert ended.startswith("ended [") and ", ended " in ended
    assert open_now == "No facts found."
    assert "alice → works_on → billing" in history and ", ended " in history


def test_a_long_document_is_chunks_found_by_its_last_paragraph_and_read_in_order(settings: Settings) -> None:
    document = runbook()
    assert 5500 < len(document) < 7000

    async def steps(client: Any) -> list[str]:
        return [text(await client.call_tool("store", {"content": document, "project": "ops",
                                                      "source": "runbooks/db-migration.md"})),
                text(await client.call_tool("search", {"query": "replica lags during the cut-over: what to do?",
                                                       "limit": 1})),
                text(await client.call_tool("list_sources", {})),
                text(await client.call_tool("file_chunks", {"source": "runbooks/db-migration.md"})),
                text(await client.call_tool("file_chunks", {"source": "runbooks/db-migration.md", "start": 1,
                                                            "end": 1})),
                text(await client.call_tool("file_chunks", {"source": "nowhere.md"}))]

    stored, hit, sources, whole, one, missing = call(settings, steps)
    chunks = int(stored.split()[1])
    assert chunks >= 3 and "of source 'runbooks/db-migration.md'" in stored
    assert "source=runbooks/db-migration.md#" in hit and "promote the warm standby" in hit
    assert f"{chunks:>5} chunks  runbooks/db-migration.md" in sources
    assert whole.count("--- chunk ") == chunks and RUNBOOK_TAIL in whole
    assert one.count("--- chunk ") == 1 and "--- chunk 1 " in one
    assert missing.startswith("No chunks of 'nowhere.md'")


def test_imprint_mcp_over_stdio_two_at_once_and_the_dashboard_all_answer(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    data = tmp_path / "data"
    env = cli_env()
    ui = subprocess.Popen([sys.executable, "-m", "imprint", "--data-dir", str(data), "ui", "--no-browser",
                           "--port", str(free_port()), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)
    try:
        ready = ui.stdout.readline()  # the dashboard's `ui` event once it listens
        assert '"event":"ui"' in ready.replace(" ", ""), ui.stderr.read() if ui.poll() is not None else ready

        def server() -> StdioServerParameters:
            return StdioServerParameters(command=sys.executable, args=["-m", "imprint", "--data-dir", str(data), "mcp"],
                                         env=env)

        async def main() -> list[str]:
            with anyio.fail_after(240):
                return await exchange()

        async def exchange() -> list[str]:
            async with Client(server()) as first, Client(server()) as second:
                stored = text(await first.call_tool("store", {"content": "The staging cluster resets on Sundays"}))
                found = text(await second.call_tool("search", {"query": "when is staging reset?", "limit": 1}))
                memory_id = stored.split("[")[1].split("]")[0]
                deleted = text(await second.call_tool("delete", {"memory_id": memory_id}))
                after = text(await first.call_tool("search", {"query": "when is staging reset?", "limit": 1}))
                return [memory_id, found, deleted, after]

        memory_id, found, deleted, after = anyio.run(main)
        assert f"id={memory_id}" in found and deleted == f"forgot {memory_id}" and memory_id not in after
        assert ui.poll() is None  # the dashboard kept serving meanwhile
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def test_the_readme_host_setups_start_the_server_they_name(tmp_path: Path) -> None:
    """What the README tells Claude Code, Cursor and Codex to run is the installed `imprint mcp`,
    and it answers the SDK's client (as far as this machine allows: no host is installed here)."""
    import json
    import re
    import tomllib

    from mcp import Client, StdioServerParameters

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "claude mcp add imprint -- imprint mcp" in readme
    cursor = json.loads(re.search(r"```json\n(\{\"mcpServers\".*?)\n```", readme, re.S).group(1))
    codex = tomllib.loads(re.search(r"```toml\n(\[mcp_servers\.imprint\].*?)\n```", readme, re.S).group(1))
    commands = {(cursor["mcpServers"]["imprint"]["command"], tuple(cursor["mcpServers"]["imprint"]["args"])),
                (codex["mcp_servers"]["imprint"]["command"], tuple(codex["mcp_servers"]["imprint"]["args"]))}
    assert commands == {("imprint", ("mcp",))}
    script = Path(sys.executable).parent / "imprint"  # the console script pip installed
    assert script.exists()

    async def main() -> set[str]:
        with anyio.fail_after(120):
            params = StdioServerParameters(command=str(script), args=["--data-dir", str(tmp_path / "d"), "mcp"],
                                           env=cli_env())
            async with Client(params) as client:
                return {t.name for t in (await client.list_tools()).tools}

    assert "search" in anyio.run(main)


def test_imprint_mcp_over_streamable_http_on_loopback_only(tmp_path: Path) -> None:
    from mcp import Client

    data = tmp_path / "data"
    refused = subprocess.run([sys.executable, "-m", "imprint", "--data-dir", str(data), "mcp", "--http",
                              "0.0.0.0:8770"], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert refused.returncode != 0 and "loopback address only" in refused.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imprint", "--data-dir", str(data), "mcp", "--http", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert f"http://127.0.0.1:{port}/mcp" in server.stderr.readline()  # said once its socket listens

        async def main() -> str:
            with anyio.fail_after(120):
                async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                    await client.call_tool("store", {"content": "HTTP agents share the same store"})
                    return text(await client.call_tool("search", {"query": "same store", "limit": 1}))

        assert "HTTP agents share the same store" in anyio.run(main)
    finally:
        server.terminate()
        server.wait(timeout=30)
