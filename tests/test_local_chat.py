"""The local transformers chat model through the factory: streaming, stop, usage, cancel."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

import chatbot
from chatbot import factory
from model_adapters.generation import ContextLengthError, StopMatcher
from model_adapters.messages import UnsupportedContentError


def test_invoke_reports_usage_and_finish_reason():
    model = chatbot.get_chat_model("tiny", max_tokens=5)
    reply = model.invoke("hello")
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata["output_tokens"] == 5
    assert reply.usage_metadata["input_tokens"] == len(model.prompt_ids([HumanMessage("hello")]))
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.response_metadata["model_name"] == "tiny"


def test_stream_is_token_by_token_and_matches_invoke():
    model = chatbot.get_chat_model("tiny", max_tokens=12)
    chunks = list(model.stream("tell me about paris"))
    assert len(chunks) >= 6  # real streaming: many chunks, not one finished answer
    assert "".join(c.content for c in chunks) == model.invoke("tell me about paris").content
    assert sum(1 for c in chunks if c.usage_metadata) == 1


async def test_astream_and_ainvoke_match_sync():
    model = chatbot.get_chat_model("tiny", max_tokens=8)
    text = "".join([c.content async for c in model.astream("hi there")])
    assert text == (await model.ainvoke("hi there")).content == model.invoke("hi there").content


def test_stop_sequence_cuts_output():
    model = chatbot.get_chat_model("tiny", max_tokens=30)
    full = model.invoke("what is the weather").content
    stop = full[5:8]
    assert stop and full.index(stop) < 30
    cut = model.invoke("what is the weather", stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in model.stream("what is the weather", stop=[stop]))
    assert streamed == cut.content


def test_stop_matcher_holds_back_partial_matches():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("ab", False)  # "cE" could start "END"
    assert m.feed("N") == ("c", False)  # only "EN" can still become "END"
    assert m.feed("Dxyz") == ("", True)
    assert StopMatcher([]).feed("abc") == ("abc", False)


def test_seeded_sampling_is_reproducible():
    model = chatbot.get_chat_model("tiny", temperature=1.0, max_tokens=10, seed=7)
    a, b = model.invoke("hello").content, model.invoke("hello").content
    assert a == b
    others = {
        chatbot.get_chat_model("tiny", temperature=1.0, max_tokens=10, seed=s)
        .invoke("hello")
        .content
        for s in range(4)
    }
    assert len(others) > 1


def test_batch_and_callbacks():
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs) -> None:
            tokens.append(token)

    model = chatbot.get_chat_model("tiny", max_tokens=6)
    replies = model.batch(["one", "two"])
    assert len(replies) == 2 and all(r.content for r in replies)
    reply = model.invoke("three", config={"callbacks": [Collect()]})
    assert "".join(tokens) == reply.content


def test_all_message_roles_and_tool_round_trip_render():
    model = chatbot.get_chat_model("tiny", max_tokens=4)
    history = [
        SystemMessage("You are terse."),
        HumanMessage("weather in paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("sunny", tool_call_id="c1"),
    ]
    text = model.runtime.tokenizer.decode(model.prompt_ids(history))
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert model.invoke(history).content


def test_template_without_system_role_still_works():
    model = chatbot.get_chat_model("tiny-plain", max_tokens=4)
    messages = [SystemMessage("Be brief."), HumanMessage("hello")]
    text = model.runtime.tokenizer.decode(model.prompt_ids(messages))
    assert "Be brief.\n\nhello" in text and "system" not in text
    assert model.invoke(messages).usage_metadata["output_tokens"] == 4


def test_llama_architecture_loads_through_registry():
    assert chatbot.get_chat_model("tiny-llama", max_tokens=3).invoke("hi").content


def test_context_overflow_is_a_clear_error_before_generation():
    model = chatbot.get_chat_model("tiny")
    before = model.runtime.stats.generated_tokens
    with pytest.raises(ContextLengthError, match="context length is 1024"):
        model.invoke("word " * 2000)
    assert model.runtime.stats.generated_tokens == before


def test_image_content_is_rejected_with_a_clear_error():
    model = chatbot.get_chat_model("tiny")
    msg = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:,"}}])
    with pytest.raises(UnsupportedContentError, match="image_url"):
        model.invoke([msg])


async def test_cancelling_astream_stops_generation_within_a_few_tokens():
    model = chatbot.get_chat_model("tiny", max_tokens=900, temperature=1.0)
    runtime = factory.get_engine("tiny").runtime
    cancelled_before = runtime.stats.cancelled
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in model.astream("go on forever"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    generated_at_cancel = runtime.stats.generated_tokens
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the worker notices within a step
        if runtime.stats.cancelled > cancelled_before:
            break
        await asyncio.sleep(0.02)
    assert runtime.stats.cancelled == cancelled_before + 1
    assert runtime.stats.generated_tokens - generated_at_cancel < 50  # far from 900


def test_breaking_out_of_sync_stream_cancels():
    model = chatbot.get_chat_model("tiny", max_tokens=900, temperature=1.0)
    runtime = factory.get_engine("tiny").runtime
    before = runtime.stats.cancelled
    stream = model.stream("go on")
    next(stream)
    stream.close()
    import time

    for _ in range(100):
        if runtime.stats.cancelled > before:
            break
        time.sleep(0.02)
    assert runtime.stats.cancelled == before + 1
    assert model.invoke("still works", max_tokens=2).content


def test_huge_prompt_is_rejected_before_tokenizing():
    model = chatbot.get_chat_model("tiny")
    with pytest.raises(ContextLengthError, match=r"prompt of 70000\d\d characters cannot fit"):
        model.prompt_ids([HumanMessage("x" * 7_000_000)])
