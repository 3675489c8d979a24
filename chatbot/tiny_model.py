"""Build a tiny, real (randomly initialised) chat model offline.

Used by the tests and by the README quickstart: a Qwen2 or Llama config with 2 layers,
a byte-level BPE tokenizer trained here with `tokenizers`, and a chat template that
supports tools. It loads through the same registry/factory path as any real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen2.5-style template: tools go into the system prompt, calls come back as
# <tool_call>{json}</tool_call>, tool results as <tool_response> in a user turn.
QWEN_TEMPLATE = r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls or [] %}
{%- set fn = tool_call.function if tool_call.function is defined else tool_call %}
{{- '\n<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# A template with no system role and no tool support, like some older model families.
PLAIN_TEMPLATE = r"""{%- for message in messages %}
{%- if message.role == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}
{%- if message.role == 'user' %}{{- '<|im_start|>user\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\n' + (message.content or '') + '<|im_end|>\n' }}
{%- else %}{{ raise_exception('Unsupported role ' + message.role) }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

_CORPUS_WORDS = (
    "the a an of to in is you that it he was for on are as with his they at be this from "
    "have or by one had not but what all were when we there can your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man "
    "too any day same right look think also around another came come work three word must "
    "because does part even place well such here take why things help put years different "
    "away again off went old number great tell men say small every found still between "
    "name should home big give air line set own under read last never us left end along "
    "while might next sound below saw something thought both few those always looked show "
    "large often together asked house world going want school important until form food "
    "weather city paris london temperature hello hi answer question document source tool "
    "function call arguments result true false null json name value price weather sunny"
).split()


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(3000):
        words = rng.choices(_CORPUS_WORDS, k=rng.randint(4, 14))
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ":", ","]))
    lines += ['{"name": "get_weather", "arguments": {"city": "Paris"}}'] * 50
    lines += [str(n) + " + " + str(n * 3) + " = " + str(n * 4) for n in range(300)]
    lines += ["{}[]():;,\"'<>/\\|_-+=*&^%$#@!~`0123456789\n\t"] * 20
    return lines


def _byte_level_bpe(size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)
    return raw


def _sentencepiece_bpe(size: int) -> Any:
    """BPE over characters with `▁` for spaces and `<0xNN>` tokens for any other byte, as
    Llama 2's tokenizer.json (the 256 byte tokens are added to the trained vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=size - 257, special_tokens=["<unk>", *SPECIAL_TOKENS], show_progress=False
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return Tokenizer.from_str(json.dumps(spec))


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "qwen2",
    template: str = "qwen",
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_heads: int = 2,
    num_layers: int = 2,
    num_kv_heads: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    tokenizer_type: str = "byte-level",
) -> Path:
    """Write a tiny random chat model (weights, tokenizer, template) to `out_dir`.

    head_dim is hidden_size / num_heads: 64 by default (vLLM's CPU attention takes 32, 64,
    80, 96, 112, 128, 160, ...; tensor parallelism splits heads and KV heads across ranks).
    `num_kv_heads` below num_heads gives grouped-query attention. `tokenizer_type`
    "sentencepiece" gives a Llama-2-style vocabulary (`▁` for spaces, `<0xNN>` byte
    fallback) instead of GPT-2's byte-level BPE.
    """
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if tokenizer_type == "byte-level":
        raw = _byte_level_bpe(vocab_size - len(SPECIAL_TOKENS) - len(ADDED_TOKENS))
    elif tokenizer_type == "sentencepiece":
        raw = _sentencepiece_bpe(vocab_size - len(SPECIAL_TOKENS) - len(ADDED_TOKENS))
    else:
        raise ValueError(
            f"tokenizer_type must be 'byte-level' or 'sentencepiece', not {tokenizer_type!r}"
        )
    raw.add_tokens(ADDED_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=max_position_embeddings,
    )
    tokenizer.chat_template = QWEN_TEMPLATE if template == "qwen" else PLAIN_TEMPLATE
    tokenizer.save_pretrained(out)

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wide init so greedy output depends on the prompt (tests compare outputs).
        initializer_range=0.4,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"arch must be 'qwen2' or 'llama', not {arch!r}")
    model.generation_config = GenerationConfig(
        eos_token_id=[common["eos_token_id"], tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    return out
