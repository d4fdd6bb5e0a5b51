"""End to end in a real headless Chromium: serve from the dashboard's Sync
page, `imprint join` from a subprocess, click **Trust & accept**, see the
stats and the merged memories.

Needs Debian's chromium (/usr/bin/chromium; `.ci/run` installs it) and the
playwright package (the `test` extra). Playwright never downloads a browser
here: it drives the system Chromium through `executable_path`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from imprint.identity import load_identity
from imprint.trust import TrustList
from imprint.ui.app import create_app
from tests.conftest import cli_env

from .helpers import machine, served

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: As the machine's notes say: without the background-networking flags Chromium
#: keeps dialling Google's hosts, which this closed network refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright package is not installed: pip install -e '.[test]'"),
]

HOME = [("The deploy script is ops/deploy.sh and needs AWS credentials", "ops", "note", "runbook.md"),
        ("Alice prefers code reviews on Tuesday mornings", "team", "preference", "")]
OTHER = [("The mobile app release train leaves every second Thursday", "mobile", "note", ""),
         ("Bob owns the billing service and its on-call rotation", "team", "note", "")]


def test_sync_approved_in_the_browser_merges_both_sides(tmp_path: Path, relay: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    other_dir = tmp_path / "other"
    with machine(other_dir, OTHER, []):
        pass  # seeded; its store is closed again so the joining CLI can open it
    other_fingerprint = load_identity(other_dir).fingerprint
    ARTIFACTS.mkdir(exist_ok=True)

    with machine(tmp_path / "home", HOME, [("alice", "works_on", "billing", None)]) as home, \
            served(create_app(home.settings, local=home.local)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        joiner = None
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{url}/#sync")
            page.fill("#serve-relay", f"ws://127.0.0.1:{relay}")
            page.get_by_role("button", name="Start serving").click()
            expect(page.locator("#serve-pin")).to_have_text(re.compile(r"^[A-Za-z0-9]{8}$"), timeout=WAIT_MS)
            target, pin = page.inner_text("#serve-target"), page.inner_text("#serve-pin")
            assert page.inner_text("#serve-command") == f"imprint sync {target} --pin {pin}"

            joiner = subprocess.Popen(
                [sys.executable, "-m", "imprint", "--data-dir", str(other_dir), "join", target, "--pin", pin],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
            trust_button = page.get_by_role("button", name="Trust & accept")
            expect(trust_button).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#approval-fingerprint")).to_have_text(other_fingerprint)
            expect(page.locator("#approval-verification")).to_have_text(re.compile(r"^[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$"))
            expect(page.locator("#approval-compare")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-approval.png"), full_page=True)
            trust_button.click()

            stats = page.locator("#serve-stats")
            expect(stats).to_be_visible(timeout=WAIT_MS)
            expect(stats).to_contain_text("Sync complete.")
            expect(stats).to_contain_text("memories 2 new")
            out, err = joiner.communicate(timeout=60)
            assert joiner.returncode == 0, err.decode(errors="replace")
            expect(page.locator("#serve-room")).to_be_hidden()  # the PIN is spent: not shown once the session is over
            history = page.locator("#sync-history tbody tr")
            expect(history).to_have_count(1)
            expect(history.first).to_contain_text(other_fingerprint)
            expect(history.first).to_contain_text("2 memories")
            expect(page.locator("#sync-peers")).to_contain_text(other_fingerprint)
            page.screenshot(path=str(ARTIFACTS / "dashboard-sync.png"), full_page=True)

            page.goto(f"{url}/#memories")
            listing = page.locator("#mem-list")
            for content, *_ in HOME + OTHER:
                expect(listing).to_contain_text(content)
            expect(page.locator("#mem-summary")).to_have_text("4 memories")
            page.screenshot(path=str(ARTIFACTS / "dashboard-memories.png"), full_page=True)

            page.goto(f"{url}/#trust")
            expect(page.locator("#trust-table")).to_contain_text(other_fingerprint)

            # The other pages render from the merged store too.
            page.goto(f"{url}/#stats")
            expect(page.locator("#stats-cards")).to_contain_text("4memories")
            expect(page.locator("#chart-project svg")).to_contain_text("mobile")
            page.screenshot(path=str(ARTIFACTS / "dashboard-stats.png"), full_page=True)
            page.goto(f"{url}/#facts")
            expect(page.locator("#facts-graph svg")).to_contain_text("works_on")
            page.screenshot(path=str(ARTIFACTS / "dashboard-facts.png"), full_page=True)
            page.goto(f"{url}/#search")
            page.fill("#search-q", "when does the mobile release ship?")
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#search-results .card").first).to_contain_text(OTHER[0][0])
            page.screenshot(path=str(ARTIFACTS / "dashboard-search.png"), full_page=True)
        finally:
            if joiner is not None and joiner.poll() is None:
                joiner.kill()
                joiner.wait(timeout=10)
            browser.close()
    assert [d.fingerprint for d in TrustList(home.settings.trust_path).load()] == [other_fingerprint]
    # The joining side ran its sync from the CLI: its history holds it too.
    from imprint.config import Settings
    from imprint.core import read_sync_history

    [joined] = read_sync_history(Settings(data_dir=other_dir))
    assert joined["role"] == "join" and joined["received"]["memories"] == 2 and "error" not in joined


def test_join_from_the_browser_asks_before_anything_moves_and_a_link_starts_nothing(tmp_path: Path, relay: int) -> None:
    """The dashboard's Join: connect, see the provider and the code, click Join. And a link like
    the one that once pushed a victim's store to a stranger, opened in the real browser, does nothing."""
    from playwright.sync_api import expect, sync_playwright

    serve_dir = tmp_path / "provider"
    with machine(serve_dir, OTHER, []):
        pass
    provider_fingerprint = load_identity(serve_dir).fingerprint
    ARTIFACTS.mkdir(exist_ok=True)
    with machine(tmp_path / "home", HOME, []) as home:
        app = create_app(home.settings, local=home.local)
        with served(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 900})
            server = None
            try:
                page = browser.pages[0] if browser.pages else browser.new_page()
                page.set_default_timeout(WAIT_MS)
                # The attack: a link clicked in a mail, to the old start URL and the new one.
                for path in (f"/api/sync/join?target=127.0.0.1:{relay}/evil&pin=Evil1234", "/api/sync/join"):
                    response = page.goto(f"{url}{path}")
                    assert response is not None and response.status in (403, 405), (path, response and response.status)
                assert app.state.sessions.all() == []

                server = subprocess.Popen(
                    [sys.executable, "-m", "imprint", "--data-dir", str(serve_dir), "serve", "--relay",
                     f"ws://127.0.0.1:{relay}", "--json"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), text=True)
                room = json.loads(server.stdout.readline())
                assert room["event"] == "room"
                page.goto(f"{url}/#sync")
                page.fill("#join-target", room["target"])
                page.fill("#join-pin", room["pin"])
                page.get_by_role("button", name="Connect").click()
                # The provider's user lets us in; our page then shows who it is, and waits.
                while json.loads(server.stdout.readline())["event"] != "approval_required":
                    pass
                server.stdin.write("y\n")
                server.stdin.flush()
                join_button = page.locator("#join-confirm").get_by_role("button", name="Join")
                expect(join_button).to_be_visible(timeout=WAIT_MS)
                expect(page.locator("#join-peer")).to_contain_text(provider_fingerprint)
                expect(page.locator("#join-verification")).to_have_text(re.compile(r"^[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$"))
                page.screenshot(path=str(ARTIFACTS / "dashboard-join-confirm.png"), full_page=True)
                assert httpx.get(f"{url}/api/stats", timeout=10).json()["memories"] == len(HOME)  # nothing moved yet
                join_button.click()
                stats = page.locator("#join-stats")
                expect(stats).to_be_visible(timeout=WAIT_MS)
                expect(stats).to_contain_text("memories 2 new")
                out, err = server.communicate(timeout=60)
                assert server.returncode == 0, err
                page.screenshot(path=str(ARTIFACTS / "dashboard-join.png"), full_page=True)
            finally:
                if server is not None and server.poll() is None:
                    server.kill()
                    server.wait(timeout=10)
                browser.close()
