"""The real model over /v1 with the official openai client (and LangServe): factual
answers, stream == non-stream, stop strings, usage counts, no special tokens leaking."""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = pytest.mark.real_model

MODEL = "smol"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SPECIAL = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")


@pytest.fixture(scope="module", autouse=True)
def _loaded(smol_engine) -> None:
    """The session's shared SmolLM2 (the server's lazy entry `smol` uses the same one)."""


def _ask(client: OpenAI, messages: list, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)


def _streamed(client: OpenAI, messages: list, **kw) -> tuple[str, str | None, object]:
    text, finish, usage = "", None, None
    stream = _ask(client, messages, stream=True, stream_options={"include_usage": True}, **kw)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage


def test_factual_answer_at_temperature_0(client) -> None:
    reply = _ask(client, FRANCE, max_tokens=24)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == MODEL


def test_stream_and_non_stream_give_the_same_text(client) -> None:
    reply = _ask(client, FRANCE, max_tokens=24)
    text, finish, usage = _streamed(client, FRANCE, max_tokens=24)
    assert text == reply.choices[0].message.content and text
    assert finish == reply.choices[0].finish_reason
    assert usage.completion_tokens == reply.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_where_asked(client, stream) -> None:
    full = _ask(client, FRANCE, max_tokens=24).choices[0].message.content
    assert "Paris" in full[1:], full
    cut = full.index("Paris", 1)
    if stream:
        text, finish, _ = _streamed(client, FRANCE, max_tokens=24, stop=["Paris"])
    else:
        choice = _ask(client, FRANCE, max_tokens=24, stop=["Paris"]).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert text == full[:cut]
    assert finish == "stop"


def test_usage_counts_match_the_tokenizer(client, smol_tokenizer) -> None:
    prompt_ids = smol_tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True)
    if not isinstance(prompt_ids, list):  # transformers 5 returns a BatchEncoding
        prompt_ids = prompt_ids["input_ids"]
    # Cut by max_tokens: every generated token is in the text.
    reply = _ask(client, FRANCE, max_tokens=5)
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 5
    assert len(smol_tokenizer(text, add_special_tokens=False)["input_ids"]) == 5
    assert reply.usage.total_tokens == len(prompt_ids) + 5
    # Ended by the model: the end-of-turn token is counted but not shown.
    reply = _ask(client, FRANCE, max_tokens=48)
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    shown = len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert reply.usage.completion_tokens == shown + 1


def test_no_special_tokens_leak(client) -> None:
    messages = [{"role": "system", "content": "Answer in one short sentence."}, *FRANCE]
    reply = _ask(client, messages, max_tokens=48)
    text, finish, _ = _streamed(client, messages, max_tokens=48)
    assert reply.choices[0].finish_reason == "stop" and finish == "stop"  # ended by EOS
    for content in (reply.choices[0].message.content, text):
        assert content.strip() and not any(tok in content for tok in SPECIAL), content


def test_langserve_route_answers(server_url) -> None:
    from langserve import RemoteRunnable

    remote = RemoteRunnable(f"{server_url}/models/{MODEL}")
    out = remote.invoke("What is the capital of France?", config={"configurable": {}})
    assert "Paris" in out.content
