"""logprobs (chat and legacy completions, streams too) and the sampling fields beyond
temperature/top_p (penalties, logit_bias, top_k, min_p, repetition_penalty), with the
official openai client against the server on the tiny model. Logprobs are checked
against the model's own log-softmax, computed here with plain forward passes."""

from __future__ import annotations

import pytest
import torch
from openai import BadRequestError

HELLO = [{"role": "user", "content": "hi there"}]
BIASED = 300  # some ordinary token of the tiny model's vocabulary


@pytest.fixture(scope="module")
def tiny():
    """The server's own ChatLocal for 'tiny' (same process, same weights)."""
    import chatbot

    return chatbot.get_chat_model("tiny")


def greedy_reference(runtime, prompt: list[int], steps: int) -> list[tuple[int, float]]:
    """Greedy continuation with each token's log-probability, by full forward passes."""
    ids, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(steps):
            logits = runtime.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            token = int(torch.argmax(logp))
            if token in runtime.eos_ids:
                break
            out.append((token, float(logp[token])))
            ids.append(token)
    return out


def test_chat_logprobs_match_the_model(client, tiny):
    from langchain_core.messages import HumanMessage

    out = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    ref = greedy_reference(tiny.runtime, tiny.prompt_ids([HumanMessage("hi there")]), 6)
    assert (
        len(content)
        == len(ref)
        == out.usage.completion_tokens - (out.choices[0].finish_reason == "stop")
    )
    tok = tiny.runtime.tokenizer
    text = "".join(c.token for c in content)  # a token may be part of a character
    assert text.replace("\ufffd", "") == out.choices[0].message.content.replace("\ufffd", "")
    for item, (token, lp) in zip(content, ref, strict=True):
        assert item.token == tok.decode([token])
        assert item.logprob == pytest.approx(lp, abs=1e-3)
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(lp, abs=1e-3)  # greedy: the best
    total = sum(c.logprob for c in content)
    assert total == pytest.approx(sum(lp for _, lp in ref), abs=1e-3)

    # Streamed: the same tokens and logprobs, spread over the chunks.
    chunks = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [
        c
        for ch in chunks
        for choice in ch.choices
        if choice.logprobs
        for c in choice.logprobs.content
    ]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert sum(c.logprob for c in streamed) == pytest.approx(total, abs=1e-4)


def test_legacy_logprobs_and_echo(client, tiny):
    prompt = tiny.runtime.tokenizer.encode("hello world")
    out = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, logprobs=2, echo=True
    )
    lp = out.choices[0].logprobs
    ref = greedy_reference(tiny.runtime, prompt, 5)
    # echo: the prompt's tokens first (the first has no logprob), then the completion's
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(prompt) + len(ref)
    with torch.inference_mode():
        logits = tiny.runtime.model(input_ids=torch.tensor([prompt])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    for i in range(1, len(prompt)):
        assert lp.token_logprobs[i] == pytest.approx(float(logp[i - 1, prompt[i]]), abs=1e-3)
    tail = lp.token_logprobs[len(prompt) :]
    assert tail == pytest.approx([x for _, x in ref], abs=1e-3)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])  # texts may coincide
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)

    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, logprobs=2, stream=True
    )
    streamed = [
        x for ch in stream for c in ch.choices if c.logprobs for x in c.logprobs.token_logprobs
    ]
    assert streamed == pytest.approx([x for _, x in ref], abs=1e-3)


def _tokens(client, **extra) -> list[str]:
    out = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=12, logprobs=True, **extra
    )
    return [c.token for c in out.choices[0].logprobs.content]


def penalised_reference(runtime, prompt, steps, bias, presence=0.0, frequency=0.0, rep=1.0):
    """Greedy decoding with logit bias and penalties, written out here (vLLM's rules)."""
    ids, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(steps):
            scores = runtime.model(input_ids=torch.tensor([ids])).logits[0, -1].float().clone()
            for token, value in bias.items():
                scores[token] += value
            for token in set(ids):
                s = scores[token]
                scores[token] = s / rep if s > 0 else s * rep
            for token in set(out):
                scores[token] -= frequency * out.count(token) + presence
            token = int(torch.argmax(scores))
            if token in runtime.eos_ids:
                break
            out.append(token)
            ids.append(token)
    return [runtime.tokenizer.decode([t]) for t in out]


@pytest.mark.parametrize(
    ("bias", "extra"),
    [
        (30.0, {"frequency_penalty": 2.0}),
        (20.0, {"presence_penalty": 2.0}),
        (20.0, {"extra_body": {"repetition_penalty": 3.0}}),
    ],
)
def test_penalties_change_the_output(client, tiny, bias, extra):
    from langchain_core.messages import HumanMessage

    # A bias makes one token win every step; each penalty then pushes it back down.
    prompt = tiny.prompt_ids([HumanMessage("hi there")])
    logit_bias = {str(BIASED): bias}
    plain = _tokens(client, logit_bias=logit_bias)
    assert plain == penalised_reference(tiny.runtime, prompt, 12, {BIASED: bias})
    penalised = _tokens(client, logit_bias=logit_bias, **extra)
    flat = {**extra, **extra.get("extra_body", {})}
    expected = penalised_reference(
        tiny.runtime,
        prompt,
        12,
        {BIASED: bias},
        flat.get("presence_penalty", 0.0),
        flat.get("frequency_penalty", 0.0),
        flat.get("repetition_penalty", 1.0),
    )
    assert penalised == expected
    assert penalised != plain  # the penalty changed what was picked
    word = tiny.runtime.tokenizer.decode([BIASED])
    assert penalised.count(word) < plain.count(word)


def test_logit_bias_top_k_min_p(client, tiny):
    token = tiny.runtime.tokenizer.encode("the")[0]
    forced = _tokens(client, logit_bias={str(token): 100})
    assert set(forced) == {tiny.runtime.tokenizer.decode([token])}
    # top_k=1 / min_p=1 leave only the most likely token: sampling is then greedy.
    plain = _tokens(client)
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = _tokens(client, temperature=1.5, seed=3, extra_body=extra)
        assert sampled == plain, extra


def test_bad_sampling_fields_are_400(client):
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=HELLO, logit_bias={"99999": 1})
    assert "logit_bias" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=HELLO, top_logprobs=21, logprobs=True)
    assert "top_logprobs" in err.value.message
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=HELLO, top_logprobs=2)
    assert "top_logprobs" in err.value.message
    for field, value in (("min_tokens", 4), ("use_beam_search", True), ("typical_p", 0.5)):
        with pytest.raises(BadRequestError) as err:
            client.chat.completions.create(
                model="tiny", messages=HELLO, max_tokens=2, extra_body={field: value}
            )
        assert field in err.value.message
        with pytest.raises(BadRequestError) as err:
            client.completions.create(model="tiny", prompt="x", extra_body={field: value})
        assert field in err.value.message
