"""Online providers: logprobs and sampling fields are passed through to the upstream,
and Responses / Messages work for them too. The upstream is this same server's tiny
model, reached over HTTP through a `provider: openai` registry entry."""

from __future__ import annotations

import anthropic
import pytest
from openai import OpenAI

HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def via(server_url, models_root):
    from tests.extra_models import extra_models

    entry = {
        "provider": "openai",
        "model": "tiny",
        "base_url": f"{server_url}/v1",
        "api_key": "x",
        "max_retries": 0,
    }
    with extra_models({"via-openai": entry}, models_root):
        yield OpenAI(base_url=f"{server_url}/v1", api_key="x", max_retries=0)


def test_logprobs_and_sampling_pass_through(via):
    direct = via.chat.completions.create(
        model="tiny", messages=HI, max_tokens=5, logprobs=True, top_logprobs=2
    )
    out = via.chat.completions.create(
        model="via-openai", messages=HI, max_tokens=5, logprobs=True, top_logprobs=2
    )
    assert out.choices[0].message.content == direct.choices[0].message.content
    got = [(c.token, round(c.logprob, 4)) for c in out.choices[0].logprobs.content]
    assert got == [(c.token, round(c.logprob, 4)) for c in direct.choices[0].logprobs.content]
    # Streamed too.
    chunks = via.chat.completions.create(
        model="via-openai", messages=HI, max_tokens=5, logprobs=True, stream=True
    )
    streamed = [
        c.token
        for ch in chunks
        for choice in ch.choices
        if choice.logprobs
        for c in choice.logprobs.content
    ]
    assert streamed == [t for t, _ in got]
    # vLLM's extras go in the upstream's request body: top_k=1 there is greedy.
    sampled = via.chat.completions.create(
        model="via-openai",
        messages=HI,
        max_tokens=5,
        temperature=1.5,
        seed=1,
        extra_body={"top_k": 1},
    )
    assert sampled.choices[0].message.content == direct.choices[0].message.content
    biased = via.chat.completions.create(
        model="via-openai", messages=HI, max_tokens=3, logit_bias={"300": 100}
    )
    assert biased.choices[0].message.content != direct.choices[0].message.content


def test_responses_and_messages_for_a_provider_entry(via, server_url):
    out = via.responses.create(model="via-openai", input="hi there", max_output_tokens=5)
    direct = via.responses.create(model="tiny", input="hi there", max_output_tokens=5)
    assert out.output_text == direct.output_text
    claude = anthropic.Anthropic(base_url=server_url, api_key="x", max_retries=0)
    msg = claude.messages.create(model="via-openai", max_tokens=5, messages=HI)
    assert msg.content[0].text == direct.output_text
