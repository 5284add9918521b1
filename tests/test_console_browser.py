"""The operator console in a real headless Chromium (Debian's ``chromium``, driven by Playwright's Python client;
Playwright's own browser downloads are never used).

Where Chromium is missing these tests are skipped with the reason in pytest's summary; ``.ci/run`` installs it
and sets ``PARLEY_BROWSER_TESTS=required``, which turns a missing browser into a failure. With
``PARLEY_SCREENSHOTS=<dir>`` the tests also save the screenshots the README shows (docs/console/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.sms import segments

from .conftest import API_KEY, MakeParley, Parley, answered

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("PARLEY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("PARLEY_SCREENSHOTS")
if SHOTS:
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
READ_KEY = "test-read-key"
TIMEOUT_MS = 10_000

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:   # the test extra is not installed
    async_playwright = None  # type: ignore[assignment]


def _missing() -> str | None:
    if async_playwright is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PARLEY_CHROMIUM)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)   # a loaded machine runs turns slower than Playwright's default 5 s
    reason = _missing()
    if reason:
        if os.environ.get("PARLEY_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests are required here but cannot run: {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """A signed-in browser tab on the console, which fails the test on any Content-Security-Policy violation."""

    def __init__(self, parley: Parley, page: Page) -> None:
        self.parley, self.page = parley, page
        self.violations: list[str] = []
        page.on("console", lambda message: self.violations.append(message.text)
                if "Content Security Policy" in message.text else None)
        page.set_default_timeout(TIMEOUT_MS)

    def url(self, path: str) -> str:
        return str(self.parley.client.make_url(path))

    async def sign_in(self, key: str = API_KEY) -> None:
        await self.page.goto(self.url("/console/chats"))   # sent to the sign-in page, then back
        await self.page.get_by_label("API key, or your password").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()

    async def live(self) -> None:
        """Wait until the page's event stream is open."""
        await expect(self.page.locator("body[data-live-connected]")).to_have_count(1)

    async def shot(self, name: str) -> None:
        if SHOTS:   # the directory is made once, at import
            await self.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture
async def console(make_parley: MakeParley, browser: Browser) -> AsyncIterator[Console]:
    parley = await make_parley(scoped_api_keys=[{"key": READ_KEY, "role": "read"}],
                               sms_segment_prices={"*": 0.83}, llm_token_prices={"*": {"prompt": 250.0,
                                                                                         "completion": 1000.0}})
    context = await browser.new_context(viewport={"width": 1200, "height": 860})
    tab = Console(parley, await context.new_page())
    yield tab
    await context.close()
    assert tab.violations == []


async def test_a_text_appears_live_and_a_person_takes_over(console: Console) -> None:
    parley, page = console.parley, console.page
    await console.sign_in()
    await expect(page).to_have_url(console.url("/console/chats"))
    await console.live()
    # A text through the signed Twilio webhook shows up in the open list, without a reload.
    await answered(parley, "Hello there")
    row = page.locator("#rows tr", has_text="+1 415-555-0123")
    await expect(row).to_contain_text("You said: Hello there")
    await console.shot("conversations")
    await row.get_by_role("link").click()
    await expect(page.locator("ol.transcript")).to_contain_text("Hello there")

    await page.get_by_role("button", name="Pause the agent").click()
    await expect(page.get_by_text("needs a human")).to_be_visible()
    assert (await parley.chat_of())["agent_paused"] is True
    # The segment count follows the typing; one curly quote makes it UCS-2.
    text = "Hi, this is Sam from the front desk. I\u2019ve booked you for Tuesday at 3pm, see you then!"
    assert segments.measure(text).segments == 2
    await page.get_by_label("Send as a human").fill(text)
    await expect(page.locator("#measure")).to_contain_text("2 segments")
    await expect(page.locator("#measure")).to_contain_text("UCS-2 because of \u201c\u2019\u201d")
    sent_before = len(parley.twilio.messages)
    await page.get_by_role("button", name="Send", exact=True).click()
    await parley.twilio.wait_for(sent_before + 1)
    assert parley.twilio.messages[-1].body == text
    operator = page.locator("ol.transcript li.human")
    await expect(operator).to_contain_text("UCS-2 · 2 segments")
    # Paused: the user's next text shows up live, and the agent says nothing.
    await console.live()
    assert (await parley.text("Is Tuesday at 3pm right?")).status == 200
    await expect(page.locator("ol.transcript li.user").last).to_contain_text("Is Tuesday at 3pm right?")
    await parley.idle()
    assert len(parley.twilio.messages) == sent_before + 1
    await console.shot("conversation")

    await page.get_by_role("button", name="Resume the agent").click()
    await expect(page.get_by_role("button", name="Pause the agent")).to_be_visible()
    await console.live()
    await answered(parley, "Great, thanks")
    await expect(page.locator("ol.transcript li.agent").last).to_contain_text("You said: Great, thanks")

    # A phone's width: nothing runs off the side, and the page is used from the keyboard.
    await page.set_viewport_size({"width": 390, "height": 844})
    for path in (page.url, console.url("/console/chats"), console.url("/console/overview")):
        await page.goto(path)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
    await page.keyboard.press("Tab")   # the first stop is the skip link
    await expect(page.locator("a.skip")).to_be_focused()


async def test_dev_phone_and_overview(console: Console) -> None:
    parley, page = console.parley, console.page
    await answered(parley, "Hello")   # a real customer's text: counted in the overview
    await console.sign_in()
    await page.get_by_role("link", name="Dev phone").click()
    await console.live()
    await page.get_by_label("Message").fill("Testing from the browser")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#dev-transcript")).to_contain_text("You said: Testing from the browser")
    await expect(page.locator("#dev-transcript")).to_contain_text("delivered")
    assert [m.body for m in parley.twilio.messages] == ["You said: Hello"]   # Twilio never saw the test
    await console.shot("dev-phone")
    # The test chat is listed, marked, among the conversations.
    await page.get_by_role("link", name="Conversations", exact=True).click()
    await expect(page.locator("#rows tr", has_text="test")).to_contain_text("dev: +1 555-555-0123")

    await page.get_by_role("link", name="Overview").click()
    charts = page.locator("figure svg.chart")
    await expect(charts).to_have_count(6)
    # One text in and one out today (the dev phone's are not counted), drawn as bars with their values.
    day = page.locator("figure", has_text="Texts per day")
    await expect(day.locator("rect title", has_text=": 1")).to_have_count(2)
    by_number = page.locator("figure", has_text="Segments per day").locator("rect title", has_text="+1 503-555-0100")
    await expect(by_number).not_to_have_count(0)
    assert "1 / 1" in await page.locator(".charts .big").nth(1).inner_text()
    await console.shot("overview")


async def test_refusals(console: Console) -> None:
    parley, page = console.parley, console.page
    await answered(parley, "Hello")
    chat_id = (await parley.chat_of())["chat_id"]
    await console.sign_in("not-a-key")
    await expect(page.get_by_role("alert")).to_contain_text("No API key of this Parley matches")
    await console.sign_in(READ_KEY)
    await page.goto(console.url(f"/console/chats/{chat_id}"))
    await expect(page.get_by_text("read-only key")).to_be_visible()
    await expect(page.get_by_role("button", name="Pause the agent")).to_have_count(0)
    # A forged request with the browser's own cookie but without the page's CSRF token is refused, and a read
    # key cannot act even with it.
    forged = await page.request.post(console.url(f"/console/chats/{chat_id}/pause"), form={"x": "1"})
    assert forged.status == 403 and "CSRF" in await forged.text()
    token = await page.locator('input[name="csrf"]').first.get_attribute("value")
    refused = await page.request.post(console.url(f"/console/chats/{chat_id}/pause"), form={"csrf": token or ""})
    assert refused.status == 403 and "'read' key" in await refused.text()
    assert (await parley.chat_of())["agent_paused"] is False
    await page.get_by_role("button", name="Sign out").click()
    await page.goto(console.url("/console/overview"))
    await expect(page.get_by_label("API key, or your password")).to_be_visible()


async def test_without_javascript_the_pages_still_work(make_parley: MakeParley, browser: Browser) -> None:
    parley = await make_parley()
    await answered(parley, "Hello")
    context = await browser.new_context(java_script_enabled=False)
    tab = Console(parley, await context.new_page())
    try:
        await tab.sign_in()
        await tab.page.locator("#rows a").first.click()
        await tab.page.get_by_role("button", name="Pause the agent").click()   # a plain form: POST, 303, reload
        await expect(tab.page.get_by_role("button", name="Resume the agent")).to_be_visible()
        await tab.page.get_by_label("Send as a human").fill("A person here.")
        await tab.page.get_by_role("button", name="Send", exact=True).click()
        await expect(tab.page.locator("ol.transcript li.human")).to_contain_text("A person here.")
        assert parley.twilio.messages[-1].body == "A person here."
    finally:
        await context.close()
    assert tab.violations == []
