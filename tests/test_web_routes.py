"""The web page's routes without a browser: static files (public even with API keys),
/ui/api conversations and knowledge-base upload (the rules and errors of `kb ingest`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from chains import kb
from chains.conversation import get_history, history_url
from tests.chains_fakes import data_dir  # noqa: F401 - fixture
from tests.server_utils import start_server

KEY = {"Authorization": "Bearer sk-ui"}


@pytest.fixture(scope="module")
def app_data(tmp_path_factory) -> Path:
    """The app's own settings.data_dir (not the process's: see `data_dir`)."""
    return tmp_path_factory.mktemp("app-data")


@pytest.fixture(scope="module")
def app_settings(app_data):
    from chatbot.settings import Settings

    return Settings(api_keys=["sk-ui"], cors_origins=[], data_dir=app_data)


@pytest.fixture(scope="module")
def url(_registry, app_settings):
    from chatbot.api import create_app

    app = create_app(app_settings, show_progress=False)
    with start_server(app) as base:
        yield base


def test_the_page_and_its_files_are_public_and_packaged(url):
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for src in (
        "/ui/app.js",
        "/ui/app.css",
        "/ui/vendor/marked.umd.js",
        "/ui/vendor/purify.min.js",
    ):
        assert src in page.text
        assert httpx.get(f"{url}{src}").status_code == 200, src
    assert httpx.get(f"{url}/ui/nope.js").status_code == 401  # not a file: needs the key
    assert httpx.get(f"{url}/ui/nope.js", headers=KEY).status_code == 404
    assert httpx.get(f"{url}/ui/api/kbs").status_code == 401
    assert httpx.get(f"{url}/ui/api/config", headers=KEY).json() == {"default_model": "tiny"}
    # The licences ship beside the vendored code (setuptools package-data).
    vendor = Path(__file__).parents[1] / "chatbot" / "web" / "vendor"
    assert (vendor / "LICENSE.marked.txt").is_file() and (
        vendor / "LICENSE.dompurify.txt"
    ).is_file()


def test_conversations_list_read_append_delete(url, data_dir, app_settings):  # noqa: F811
    from langchain_core.messages import AIMessage, HumanMessage

    # The app's history (its settings), not the process's.
    history = get_history("s1", history_url(app_settings))
    history.add_messages([HumanMessage("First question"), AIMessage("answer")])
    assert get_history("s1").messages == []
    listed = httpx.get(f"{url}/ui/api/conversations", headers=KEY).json()["data"]
    assert listed == [{"session_id": "s1", "title": "First question", "messages": 2}]

    turn = {
        "messages": [
            {"type": "human", "data": {"content": "kb question"}},
            {"type": "ai", "data": {"content": "kb answer", "response_metadata": {"sources": []}}},
        ]
    }
    r = httpx.post(f"{url}/ui/api/conversations/s1/messages", headers=KEY, json=turn)
    assert r.status_code == 200, r.text
    messages = httpx.get(f"{url}/ui/api/conversations/s1", headers=KEY).json()["messages"]
    assert [m["data"]["content"] for m in messages] == [
        "First question",
        "answer",
        "kb question",
        "kb answer",
    ]
    assert messages[3]["data"]["response_metadata"] == {"sources": []}

    bad = httpx.post(
        f"{url}/ui/api/conversations/s1/messages",
        headers=KEY,
        json={"messages": [{"type": "martian", "data": {"content": "x"}}]},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    long_id = "x" * 300
    assert httpx.get(f"{url}/ui/api/conversations/{long_id}", headers=KEY).status_code == 400

    assert httpx.delete(f"{url}/ui/api/conversations/s1", headers=KEY).status_code == 200
    assert httpx.get(f"{url}/ui/api/conversations", headers=KEY).json()["data"] == []


def _upload(url: str, name: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    parts = [("files", (fname, data)) for fname, data in files]
    return httpx.post(f"{url}/ui/api/kbs/{name}/files", headers=KEY, files=parts, timeout=120)


def test_upload_of_one_name_twice_is_a_400(url, data_dir):  # noqa: F811
    r = _upload(url, "notes", [("a.md", b"one\n"), ("a.md", b"two\n")])
    assert r.status_code == 400 and "twice" in r.json()["error"]["message"]


def test_upload_ingests_with_progress_and_the_cli_rules(
    url,
    data_dir,  # noqa: F811
    app_data,
    app_settings,
):
    r = _upload(url, "notes", [("a.md", b"# A\nalpha text\n"), ("b.txt", b"beta text\n")])
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    steps = lines[:-1]  # bytes indexed so far, per file, as `chatbot kb ingest` shows them
    done = [line["done"] for line in steps]
    assert done == sorted(done) and done[-1] == steps[-1]["total"] > 0
    assert {line["file"] for line in steps} >= {"a.md", "b.txt"}
    report = lines[-1]["report"]
    assert sorted(Path(p).name for p in report["added"]) == ["a.md", "b.txt"]
    assert [i.name for i in kb.list_kbs(app_settings)] == ["notes"]  # the app's KBs
    assert kb.list_kbs() == []  # not the process's
    assert httpx.get(f"{url}/ui/api/kbs", headers=KEY).json()["data"][0]["files"] == 2

    # The same file again: unchanged; changed: updated (not duplicated).
    again = json.loads(
        _upload(url, "notes", [("a.md", b"# A\nalpha text\n")]).text.splitlines()[-1]
    )
    assert len(again["report"]["unchanged"]) == 1
    changed = _upload(url, "notes", [("a.md", b"# A\nnew alpha\n")]).text.splitlines()[-1]
    assert len(json.loads(changed)["report"]["updated"]) == 1

    bad_type = _upload(url, "notes", [("x.exe", b"MZ")])
    assert bad_type.status_code == 400
    message = bad_type.json()["error"]["message"]
    assert message.startswith("x.exe: unsupported file type '.exe'"), message  # no server path
    uploads = app_data / "uploads" / "notes"  # under the app's data_dir, not the process's
    assert sorted(p.name for p in uploads.iterdir()) == ["a.md", "b.txt"]  # x.exe: not left
    assert not (data_dir / "uploads").exists()

    bad_name = _upload(url, "bad name", [("a.md", b"x")])
    assert bad_name.status_code == 400 and "invalid knowledge-base name" in bad_name.text
    assert _upload(url, ".hidden", [("a.md", b"x")]).status_code == 400
    assert _upload(url, "notes", [(".env", b"x")]).status_code == 400
    assert [i.files for i in kb.list_kbs(app_settings)] == [2]
