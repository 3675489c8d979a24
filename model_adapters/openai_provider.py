"""`provider: openai` - OpenAI and every OpenAI-compatible server (vLLM, FastChat, Ollama,
llama.cpp server, DeepSeek, DashScope compatible mode) and Azure OpenAI.

Built on langchain-openai: ChatOpenAI / AzureChatOpenAI / OpenAIEmbeddings and the
openai client's own timeouts and retries. The API key stays a SecretStr end to end.

```yaml
models:
  gpt:
    provider: openai
    model: gpt-4o-mini
    api_key: ${OPENAI_API_KEY}
  local-vllm:
    provider: openai
    model: Qwen/Qwen2.5-7B-Instruct
    base_url: http://127.0.0.1:8000/v1
    params: {top_k: 20}          # unknown to the OpenAI API -> sent in the request body
  azure:
    provider: openai
    model: gpt-4o
    base_url: https://myres.openai.azure.com
    deployment: gpt4o-prod
    api_version: 2024-10-21
    api_key: ${AZURE_OPENAI_API_KEY}
```
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

import httpx
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_openai import (
    AzureChatOpenAI,
    AzureOpenAIEmbeddings,
    ChatOpenAI,
    OpenAIEmbeddings,
)
from pydantic import SecretStr

from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings

# Placeholder key for compatible servers that do not check one (vLLM, Ollama, ...): the
# openai client refuses to start without some key.
NO_KEY = SecretStr("EMPTY")


def is_azure(entry: ModelEntry) -> bool:
    return bool(entry.deployment or entry.api_version)


def _api_key(entry: ModelEntry) -> SecretStr:
    if entry.api_key is not None:
        return entry.api_key
    env = "AZURE_OPENAI_API_KEY" if is_azure(entry) else "OPENAI_API_KEY"
    if os.environ.get(env):
        return SecretStr(os.environ[env])
    if entry.base_url:
        return NO_KEY
    raise ValueError(
        f"model {entry.name!r}: field 'api_key' is required for the official API "
        f"(set api_key: ${{{env}}} in the registry)"
    )


DEFAULT_READ_TIMEOUT = 120.0  # seconds; the registry's `timeout` overrides it
DEFAULT_CONNECT_TIMEOUT = 10.0


def _split_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Params the LangChain class knows become its fields; the rest go in the request body
    (`extra_body`), which is how compatible servers take their own knobs (top_k, ...)."""
    known = set(cls.model_fields)
    known |= {f.alias for f in cls.model_fields.values() if f.alias}
    fields = {k: v for k, v in params.items() if k in known}
    extra = {k: v for k, v in params.items() if k not in known}
    if extra:
        fields["extra_body"] = {**(fields.get("extra_body") or {}), **extra}
    return fields


def _client_kwargs(entry: ModelEntry) -> dict[str, Any]:
    """Connection settings shared by chat models and embeddings."""
    kwargs: dict[str, Any] = {
        "api_key": _api_key(entry),
        "max_retries": entry.max_retries,
        "default_headers": dict(entry.headers) or None,
    }
    # Always bounded: without a timeout the openai client waits forever on a silent
    # upstream. `timeout` is the read timeout (between bytes, so long streams are fine).
    read = entry.timeout or DEFAULT_READ_TIMEOUT
    kwargs["timeout"] = httpx.Timeout(read, connect=min(read, DEFAULT_CONNECT_TIMEOUT))
    if entry.http_proxy:
        kwargs["openai_proxy"] = entry.http_proxy
    if is_azure(entry):
        kwargs["azure_endpoint"] = entry.base_url
        kwargs["azure_deployment"] = entry.deployment or entry.model
        kwargs["api_version"] = entry.api_version
    else:
        kwargs["base_url"] = entry.base_url
        kwargs["organization"] = entry.organization
    return {k: v for k, v in kwargs.items() if v is not None}


class SharedClients:
    """httpx clients for one entry, built once: a ChatOpenAI built without them makes its
    own (an SSL context, ~40 ms) on every request. One sync client; one async client per
    event loop, since an httpx.AsyncClient must not be used from two loops."""

    def __init__(self, entry: ModelEntry) -> None:
        self.proxy = entry.http_proxy
        self.sync = httpx.Client(proxy=self.proxy)
        self._async: weakref.WeakKeyDictionary[Any, httpx.AsyncClient]
        self._async = weakref.WeakKeyDictionary()
        self._no_loop: httpx.AsyncClient | None = None

    def for_this_loop(self) -> dict[str, Any]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # sync caller: one client, bound to the first loop using it
            if self._no_loop is None:
                self._no_loop = httpx.AsyncClient(proxy=self.proxy)
            client = self._no_loop
        else:
            client = self._async.get(loop)
            if client is None:
                client = self._async[loop] = httpx.AsyncClient(proxy=self.proxy)
        return {"http_client": self.sync, "http_async_client": client}

    def close(self) -> None:
        self.sync.close()  # async clients close with their loops


def build_chat_model(
    entry: ModelEntry, clients: dict[str, Any] | None = None, **overrides: Any
) -> BaseChatModel:
    """ChatOpenAI / AzureChatOpenAI for one entry; `overrides` win over registry defaults.
    `clients`: shared httpx clients (see `SharedClients`)."""
    cls: type[ChatOpenAI] = AzureChatOpenAI if is_azure(entry) else ChatOpenAI
    defaults = entry.generation_defaults()
    # Compatible servers report usage in streams when asked; OpenAI does too.
    params = {"stream_usage": True, **entry.params, **defaults, **overrides}
    fields = _split_params(cls, params)
    connection = _client_kwargs(entry)
    if clients:
        connection.pop("openai_proxy", None)  # the clients carry the proxy
    return cls(model=entry.model, **connection, **(clients or {}), **fields)


def build_embeddings(entry: ModelEntry) -> Embeddings:
    cls: type[OpenAIEmbeddings] = AzureOpenAIEmbeddings if is_azure(entry) else OpenAIEmbeddings
    # Send raw text: token-splitting needs tiktoken files (a download) and only suits OpenAI.
    params = {"check_embedding_ctx_length": False, **entry.params}
    known = set(cls.model_fields)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"model {entry.name!r}: unknown embeddings params {unknown}")
    return cls(model=entry.model or "", **_client_kwargs(entry), **params)


class OpenAIEngine(Engine):
    """A remote client; no weights. One instance per registry entry (per replica in a
    router)."""

    name = "openai"
    kinds = frozenset({"chat", "embeddings"})
    needs_path = False

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        super().__init__(entry, settings)
        _api_key(entry)  # fail at load time, naming the field, not at the first request
        self._embeddings: Embeddings | None = None
        self._clients = SharedClients(entry)

    def chat_model(self, **overrides: Any) -> BaseChatModel:
        return build_chat_model(self.entry, self._clients.for_this_loop(), **overrides)

    def embeddings(self) -> Embeddings:
        if self._embeddings is None:
            self._embeddings = build_embeddings(self.entry)
        return self._embeddings

    def close(self) -> None:
        self._clients.close()
