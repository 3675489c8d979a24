"""The OpenAI-compatible API against a real uvicorn server with the tiny models: the
official `openai` client, `langchain_openai.ChatOpenAI`, raw HTTP, and every response
validated against the official OpenAI OpenAPI schemas."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from openai import AsyncOpenAI, BadRequestError

from tests.openai_schema import validate
from tests.server_utils import sse_payloads

HELLO = [{"role": "user", "content": "hi"}]


# --- /v1/models --------------------------------------------------------------------


def test_models_list_and_retrieve(client, http):
    ids = [m.id for m in client.models.list()]
    assert {"tiny", "tiny-llama", "tiny-plain", "minilm"} <= set(ids)
    raw = http.get("/v1/models").json()
    validate(raw, "ListModelsResponse")
    card = next(m for m in raw["data"] if m["id"] == "tiny")
    assert card["kind"] == "chat"
    assert card["engine"] == "transformers"
    assert card["loaded"] is True
    assert card["context_length"] == 1024
    emb = next(m for m in raw["data"] if m["id"] == "minilm")
    assert emb["kind"] == "embeddings"

    one = client.models.retrieve("tiny")
    assert one.id == "tiny" and one.object == "model"
    validate(http.get("/v1/models/tiny").json(), "Model")


# --- /v1/chat/completions ----------------------------------------------------------


def test_chat_sync(client, http):
    out = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8)
    choice = out.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0
    assert 0 < out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.model == "tiny"

    raw = http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 8}
    )
    assert raw.status_code == 200
    validate(raw.json(), "CreateChatCompletionResponse")
    # Greedy (the test registry's default temperature is 0): same request, same text.
    assert raw.json()["choices"][0]["message"]["content"] == choice.message.content


async def test_chat_async(server_url):
    client = AsyncOpenAI(base_url=f"{server_url}/v1", api_key="x", max_retries=0)
    out = await client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)
    assert out.choices[0].message.content
    assert out.usage.completion_tokens <= 4
    stream = await client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=4, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == out.choices[0].message.content
    await client.close()


def test_chat_stream_with_usage(client):
    full = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [full.choices[0].finish_reason]
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_frames_validate(http):
    body = {
        "model": "tiny",
        "messages": HELLO,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    payloads = sse_payloads(r.text)
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        validate(json.loads(payload), "CreateChatCompletionStreamResponse")


def test_chat_options_n_stop_seed_and_length(client):
    base = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16)
    text = base.choices[0].message.content
    assert base.choices[0].finish_reason == "length"
    assert base.usage.completion_tokens == 16
    # A stop string cuts the output before it.
    stop = text[6:9]
    cut = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    # n choices; max_completion_tokens wins over max_tokens; the prompt counts once.
    many = client.chat.completions.create(
        model="tiny", messages=HELLO, n=2, max_tokens=50, max_completion_tokens=3
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert many.usage.completion_tokens == 6
    assert many.usage.prompt_tokens == base.usage.prompt_tokens
    # Sampling with a seed is reproducible.
    runs = [
        client.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_chat_stream_n_choices(client):
    chunks = list(
        client.chat.completions.create(model="tiny", messages=HELLO, n=2, max_tokens=3, stream=True)
    )
    finished = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_chat_content_parts_and_roles(client):
    out = client.chat.completions.create(
        model="tiny",
        max_tokens=4,
        messages=[
            {"role": "developer", "content": "You are terse."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
    )
    assert out.choices[0].message.content
    # A template without a system role still takes a system message (folded in).
    plain = client.chat.completions.create(
        model="tiny-plain",
        max_tokens=4,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert plain.choices[0].message.content is not None


def test_image_content_to_a_text_model_is_400(client):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is it?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        )
    assert info.value.body["code"] == "unsupported_content"


def test_default_model_when_omitted(http):
    r = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert r.status_code == 200
    assert r.json()["model"] == "tiny"


# --- /v1/completions (legacy) --------------------------------------------------------


def test_completions_sync_stream_and_schema(client, http):
    out = client.completions.create(model="tiny", prompt="The weather in Paris is", max_tokens=6)
    assert out.object == "text_completion"
    text = out.choices[0].text
    assert text and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 6
    streamed = list(
        client.completions.create(
            model="tiny",
            prompt="The weather in Paris is",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert streamed[-1].usage.completion_tokens == out.usage.completion_tokens

    raw = http.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": ["a b", "c d"], "max_tokens": 3, "n": 2, "echo": True},
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    validate(body, "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"].startswith("a b")
    assert body["choices"][2]["text"].startswith("c d")


def test_completions_raw_prompt_is_not_chat_templated(client):
    # The legacy API feeds the prompt as is: a short prompt is a few tokens, where the
    # chat template would add its role markers.
    raw = client.completions.create(model="tiny", prompt="hello", max_tokens=1)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=1
    )
    assert raw.usage.prompt_tokens < chat.usage.prompt_tokens


def test_completions_token_id_prompt(client):
    out = client.completions.create(model="tiny", prompt=[10, 20, 30], max_tokens=2)
    assert out.usage.prompt_tokens == 3


# --- /v1/embeddings ----------------------------------------------------------------


def test_embeddings_float_and_base64(client, http):
    out = client.embeddings.create(model="minilm", input=["hello world", "goodbye"])
    assert [d.index for d in out.data] == [0, 1]
    vector = out.data[0].embedding
    assert len(vector) == 384
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3  # normalised
    assert out.usage.prompt_tokens > 0

    raw = http.post(
        "/v1/embeddings",
        json={"model": "minilm", "input": "hello world", "encoding_format": "float"},
    )
    validate(raw.json(), "CreateEmbeddingResponse")
    assert raw.json()["data"][0]["embedding"] == pytest.approx(vector, abs=1e-6)

    b64 = http.post(
        "/v1/embeddings",
        json={"model": "minilm", "input": "hello world", "encoding_format": "base64"},
    ).json()
    blob = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(blob) // 4}f", blob)
    assert decoded == pytest.approx(vector, abs=1e-6)

    # The official client asks for base64 itself when no format is given, and decodes.
    via_client = client.embeddings.create(
        model="minilm", input="hello world", encoding_format="base64"
    )
    assert isinstance(via_client.data[0].embedding, str)
    single = client.embeddings.create(model="minilm", input="hello world")
    assert single.data[0].embedding == pytest.approx(vector, abs=1e-6)


# --- langchain_openai.ChatOpenAI ---------------------------------------------------


def test_langchain_chat_openai(server_url, client):
    from langchain_openai import ChatOpenAI

    expected = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6)
    llm = ChatOpenAI(
        model="tiny", base_url=f"{server_url}/v1", api_key="x", max_tokens=6, max_retries=0
    )
    msg = llm.invoke("hi")
    assert msg.content == expected.choices[0].message.content
    assert msg.usage_metadata["output_tokens"] == expected.usage.completion_tokens
    assert msg.response_metadata["finish_reason"] == expected.choices[0].finish_reason

    chunks = list(llm.stream("hi"))
    assert "".join(c.content for c in chunks) == msg.content

    streaming = ChatOpenAI(
        model="tiny",
        base_url=f"{server_url}/v1",
        api_key="x",
        max_tokens=6,
        stream_usage=True,
        max_retries=0,
    )
    merged = None
    for chunk in streaming.stream("hi"):
        merged = chunk if merged is None else merged + chunk
    assert merged.content == msg.content
    assert merged.usage_metadata["output_tokens"] == expected.usage.completion_tokens
    assert merged.usage_metadata["input_tokens"] == expected.usage.prompt_tokens


async def test_langchain_chat_openai_async(server_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="tiny", base_url=f"{server_url}/v1", api_key="x", max_tokens=4)
    msg = await llm.ainvoke("hi")
    chunks = [c async for c in llm.astream("hi")]
    assert "".join(c.content for c in chunks) == msg.content
