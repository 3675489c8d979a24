"""An example custom provider: any OpenAI-compatible HTTP API, called with plain httpx.

```yaml
models:
  my-remote:
    provider: model_adapters.examples.http_provider:HTTPChatProvider   # or: openai-http
    model: qwen2.5-7b
    base_url: http://127.0.0.1:8000/v1
    api_key: ${MY_KEY}
```

(For real OpenAI-compatible servers `provider: openai` is the better choice; this shows
how little a provider needs: `chat` returns text or yields deltas, `embed` is optional.)
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import certifi
import httpx

from model_adapters.custom_provider import CustomProvider, ProviderConfig, Reply

_BODY_KEYS = ("temperature", "top_p", "max_tokens", "stop", "seed")


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building a TLS context takes ~0.2 s; every client of this process shares one.
    return ssl.create_default_context(cafile=certifi.where())


def _check(response: httpx.Response) -> None:
    """Raise with the server's own error message (4xx/5xx); the router reads the status."""
    if response.is_error:
        detail = response.text[:300]
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {response.request.url}: {detail}",
            request=response.request,
            response=response,
        )


def _reply(data: dict[str, Any]) -> Reply:
    choice = (data.get("choices") or [{}])[0]
    usage = data.get("usage") or {}
    text = (choice.get("message") or choice.get("delta") or {}).get("content") or ""
    return Reply(
        text=text,
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        finish_reason=choice.get("finish_reason"),
    )


def _sse_data(line: str) -> dict[str, Any] | None:
    if not line.startswith("data:"):
        return None
    payload = line.removeprefix("data:").strip()
    return None if payload in ("", "[DONE]") else json.loads(payload)


class HTTPChatProvider(CustomProvider):
    """Chat and embeddings over /chat/completions and /embeddings."""

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        if not config.base_url:
            raise ValueError(f"model {config.name!r}: field 'base_url' is required")
        headers = dict(config.headers)
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._client_args: dict[str, Any] = {
            "base_url": config.base_url.rstrip("/") + "/",
            "headers": headers,
            "timeout": config.timeout or 60.0,
            "proxy": config.http_proxy,
            "verify": _tls(),
        }
        self.client = httpx.Client(**self._client_args)

    def _body(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages}
        body.update({k: params[k] for k in _BODY_KEYS if params.get(k) is not None})
        body.update({k: v for k, v in params.items() if k not in (*_BODY_KEYS, "stream")})
        if params.get("stream"):
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    # --- sync ------------------------------------------------------------------------

    def chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        body = self._body(messages, params)
        if body.get("stream"):
            return self._stream(body)
        response = self.client.post("chat/completions", json=body)
        _check(response)
        return _reply(response.json())

    def _stream(self, body: dict[str, Any]) -> Iterator[Reply]:
        with self.client.stream("POST", "chat/completions", json=body) as response:
            if response.is_error:
                response.read()
            _check(response)
            for line in response.iter_lines():
                if (data := _sse_data(line)) is not None:
                    yield _reply(data)

    def embed(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self.config.model, "input": texts, "encoding_format": "float"}
        response = self.client.post("embeddings", json=body)
        _check(response)
        return [d["embedding"] for d in sorted(response.json()["data"], key=lambda d: d["index"])]

    # --- async (a client per call: an httpx.AsyncClient belongs to one event loop) ----

    async def achat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        body = self._body(messages, params)
        if body.get("stream"):
            return self._astream(body)
        async with httpx.AsyncClient(**self._client_args) as client:
            response = await client.post("chat/completions", json=body)
        _check(response)
        return _reply(response.json())

    async def _astream(self, body: dict[str, Any]) -> AsyncIterator[Reply]:
        async with httpx.AsyncClient(**self._client_args) as client:
            async with client.stream("POST", "chat/completions", json=body) as response:
                if response.is_error:
                    await response.aread()
                _check(response)
                async for line in response.aiter_lines():
                    if (data := _sse_data(line)) is not None:
                        yield _reply(data)

    def close(self) -> None:
        self.client.close()
