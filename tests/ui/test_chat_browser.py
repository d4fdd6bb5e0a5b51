"""The Chat tab and the daily-use pages in a real headless Chromium (Debian's, driven by Playwright),
the chat answered by an OpenAI-compatible endpoint on 127.0.0.1 (tests/chat/endpoint.py): tokens
arrive, the answer cites the memory and the citation opens it, Stop stops, a conversation survives a
restart of the dashboard, a memory added from the page is found by search, and the navigation fits
420 px."""

from __future__ import annotations

import re
from pathlib import Path

from imprint.chat.models import Endpoint
from imprint.ui.app import create_app
from tests.chat.endpoint import Reply, endpoint

from .helpers import machine, served
from .test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, pytestmark  # noqa: F401 - same skips and timeout

WAIT_MS = 60_000
MEMORIES = [("The deploy script is ops/deploy.sh and needs AWS credentials", "ops", "note", "runbook.md"),
            ("Alice prefers code reviews on Tuesday mornings", "team", "preference", "")]


def test_chat_tab_cites_stops_and_keeps_conversations(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    replies = [Reply(text="Run ops/deploy.sh with AWS credentials [1]."),
               Reply(text="counting " * 400, delay=0.05)]
    facts = [("alice", "reviews", "billing", 1_700_000_500.0), ("alice", "reviews", "billing", None)]  # ended, then again
    with machine(tmp_path / "home", MEMORIES, facts) as home, \
            endpoint(replies) as ep, sync_playwright() as pw:
        chat_endpoint = Endpoint(base_url=ep.url, timeout=30)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            with served(create_app(home.settings, local=home.local, chat_endpoint=chat_endpoint)) as url:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(WAIT_MS)
                page.goto(f"{url}/#chat")
                expect(page.locator("#chat-model")).to_contain_text(ep.url)
                page.fill("#chat-q", "how do I deploy?")
                page.locator("#chat-q").press("Enter")
                answer = page.locator(".msg.assistant").last
                expect(answer.locator(".text")).to_have_text("Run ops/deploy.sh with AWS credentials [1].")
                expect(answer.locator("a.cite")).to_have_text("[1]")
                citation = answer.locator("ol.citations a").first
                expect(citation).to_contain_text("ops · runbook.md")
                citation.click()
                dialog = page.locator("#detail")
                expect(dialog).to_be_visible()
                expect(dialog).to_contain_text(MEMORIES[0][0])
                page.screenshot(path=str(ARTIFACTS / "dashboard-chat.png"), full_page=True)
                page.locator("#detail-close").click()
                expect(dialog).to_be_hidden()

                # A slow answer, stopped part-way: what came is kept, the rest never comes.
                page.fill("#chat-q", "count for me")
                page.click("#chat-send")
                slow = page.locator(".msg.assistant").last
                expect(slow.locator(".text")).to_contain_text("counting counting")
                page.click("#chat-stop")
                expect(page.locator("#chat-send")).to_be_enabled()
                expect(slow).to_contain_text("(stopped)")
                shown = slow.locator(".text").inner_text()
                assert 0 < shown.count("counting") < 400
                expect(page.locator("#chat-sessions li")).to_have_count(1)

            # The dashboard restarts (same data dir): the conversation is still there, citations and all.
            with served(create_app(home.settings, local=home.local, chat_endpoint=chat_endpoint)) as url:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(WAIT_MS)
                page.goto(f"{url}/#chat")
                expect(page.locator("#chat-sessions li")).to_have_count(1)
                expect(page.locator("#chat-sessions li a")).to_have_text("how do I deploy?")
                expect(page.locator("#chat-log .msg.user")).to_have_count(2)
                first = page.locator("#chat-log .msg.assistant").first
                expect(first.locator(".text")).to_have_text("Run ops/deploy.sh with AWS credentials [1].")
                first.locator("a.cite").click()
                expect(page.locator("#detail")).to_contain_text(MEMORIES[0][0])
                page.locator("#detail-close").click()

                # Add a memory from the page, then find it by meaning.
                page.goto(f"{url}/#memories")
                page.locator("#mem-add summary").click()
                page.fill("#add-content", "The staging database listens on port 5433")
                page.fill("#add-project", "ops")
                page.get_by_role("button", name="Store").click()
                expect(page.locator("#add-status")).to_have_text(re.compile(r"^stored [0-9a-f]{16}$"))
                expect(page.locator("#mem-list")).to_contain_text("port 5433")
                page.fill("#mem-q", "5433")
                expect(page.locator("#mem-summary")).to_have_text("1 memories containing “5433”")
                page.goto(f"{url}/#search")
                page.fill("#search-q", "which port does staging's database use?")
                page.get_by_role("button", name="Search").click()
                expect(page.locator("#search-results .card").first).to_contain_text("port 5433")

                # An ended fact and the open one between the same pair are two curves, the ended one dashed.
                page.goto(f"{url}/#facts")
                expect(page.locator("#facts-graph path.edge")).to_have_count(1)  # the open one
                page.check("#facts-ended")
                edges = page.locator("#facts-graph path.edge")
                expect(edges).to_have_count(2)
                paths = {edges.nth(i).get_attribute("d") for i in range(2)}
                assert len(paths) == 2, paths
                expect(page.locator("#facts-graph path.edge.ended")).to_have_attribute("stroke-dasharray", "4 3")
                expect(page.locator("#facts-graph")).to_contain_text("reviews (ended)")

                # 420 px: every tab of the navigation is on the screen.
                narrow = browser.new_page(viewport={"width": 420, "height": 800})
                narrow.goto(f"{url}/#stats")
                expect(narrow.locator("#stats-about")).to_contain_text("all-MiniLM-L6-v2")
                for link in narrow.locator("nav a").all():
                    box = link.bounding_box()
                    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420, link.inner_text()
                assert narrow.evaluate("document.documentElement.scrollWidth") <= 420
                narrow.screenshot(path=str(ARTIFACTS / "dashboard-stats-420.png"), full_page=True)
        finally:
            browser.close()
