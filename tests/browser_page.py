"""Driving the chat page and the LangServe playgrounds in a browser (tests/test_web_ui.py):
chromium's flags, a page that records JS errors, and waits for what the page shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).parent / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
TIMEOUT = 120_000  # ms, for one answer on a busy 2-core machine


class Page:
    """A browser page that records JS errors (pageerror) for the test to check."""

    def __init__(self, browser: Any, viewport: dict[str, int] | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 860})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))


def open_chat(tab: Page, url: str) -> Any:
    page = tab.page
    page.goto(url + "/")
    page.wait_for_selector("#model option", state="attached")  # /v1/models answered
    return page


def ask(page: Any, text: str) -> Any:
    """Send `text`; returns the answer's element once the answer is complete."""
    before = page.locator(".msg.ai").count()
    page.fill("#input", text)
    page.keyboard.press("Enter")
    answer = page.locator(".msg.ai").nth(before)
    answer.wait_for()
    page.wait_for_function("el => !el.classList.contains('streaming')", arg=answer.element_handle())
    return answer


def until(page: Any, condition: Any) -> None:
    """Poll `condition` (a server-side check) while the page runs, up to a minute."""
    for _ in range(600):
        if condition():
            return
        page.wait_for_timeout(100)
    raise AssertionError("condition not met")


def playground(tab: Page, url: str) -> Any:
    page = tab.page
    page.goto(url)
    page.wait_for_selector("textarea")  # rendered (a schema it cannot show: blank page)
    return page
