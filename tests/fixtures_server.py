"""Server fixtures, registered in tests/conftest.py (`pytest_plugins`).

`server_url`: one uvicorn server for the whole session, serving `create_app()` for the
tiny test registry (no API keys), on a free 127.0.0.1 port, with every model loaded.
Start others (keys, CORS, limits) with `tests.server_utils.start_server`.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.server_utils import start_server


@pytest.fixture(scope="session")
def server_url(_registry, tmp_path_factory) -> Iterator[str]:
    from chatbot.api import create_app
    from chatbot.settings import Settings

    data = tmp_path_factory.mktemp("server-data")  # stored responses: not in the repo
    app = create_app(Settings(api_keys=[], cors_origins=[], data_dir=data), show_progress=False)
    with start_server(app, wait_ready=True) as url:
        yield url


@pytest.fixture(scope="module")
def client(server_url) -> OpenAI:
    """The official openai client against our server."""
    return OpenAI(base_url=f"{server_url}/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def http(server_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=120) as c:
        yield c
