"""Our side <-> vLLM's: registry options -> AsyncEngineArgs, a GenerationRequest ->
SamplingParams (with structured outputs), vLLM's logprobs -> TokenLogprobs.
Importing this module does not import vllm."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from chatbot.registry import ModelEntry
from model_adapters.call_schema import free_object_schema, grammar_schema
from model_adapters.generation import Constraint, GenerationRequest, TokenLogprob

log = logging.getLogger(__name__)


def engine_args(entry: ModelEntry) -> dict[str, Any]:
    """Registry options -> AsyncEngineArgs keyword arguments, nothing added or changed.

    Keys vLLM does not know are left out with a warning: an entry with
    `engines: [vllm, transformers]` shares its options with the other engine.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    opts = entry.options
    args: dict[str, Any] = {
        "model": str(entry.resolved_path or entry.path),
        "dtype": opts.dtype,
        "trust_remote_code": opts.trust_remote_code,
    }
    if opts.max_model_len is not None:
        args["max_model_len"] = opts.max_model_len
    ignored = []
    for key, value in (opts.model_extra or {}).items():
        if key in known:
            args[key] = value
        else:
            ignored.append(key)
    if ignored:
        log.warning("model %s: options not used by vllm: %s", entry.name, ", ".join(ignored))
    return args


def sampling_params(request: GenerationRequest, max_tokens: int) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop or None,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=structured_outputs(request.constraint),
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        top_k=request.top_k if request.top_k > 0 else -1,  # -1: off in every vLLM version
        min_p=request.min_p,
        logit_bias=dict(request.logit_bias) or None,
        logprobs=request.logprobs,
        prompt_logprobs=request.prompt_logprobs,
    )


def vllm_logprobs(logprobs: Any, token_ids: Any) -> list[TokenLogprob] | None:
    """vLLM's per-token {id: Logprob} dicts -> TokenLogprobs (the chosen token first)."""
    if logprobs is None:
        return None
    out = []
    for token, ranked in zip(token_ids, logprobs, strict=False):
        if ranked is None:
            continue
        chosen = ranked.get(token)
        top = sorted(
            ((t, lp.logprob) for t, lp in ranked.items() if lp.rank is not None),
            key=lambda item: -item[1],
        )
        out.append(TokenLogprob(token, chosen.logprob if chosen else float("-inf"), top))
    return out


def structured_outputs(constraint: Constraint | None) -> Any:
    """Our Constraint -> vLLM's StructuredOutputsParams (grammar-constrained decoding)."""
    if constraint is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec = constraint.spec
    if constraint.kind == "json_schema":
        return StructuredOutputsParams(json=grammar_schema(spec))  # as our matcher compiles it
    if constraint.kind == "json_object":
        return StructuredOutputsParams(json=free_object_schema())  # as our matcher
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=spec)
    if constraint.kind == "ebnf":
        return StructuredOutputsParams(grammar=spec)
    if constraint.kind == "structural_tag":
        return StructuredOutputsParams(
            structural_tag=spec if isinstance(spec, str) else json.dumps(spec)
        )
    raise ValueError(f"constraint kind {constraint.kind!r} is not supported by vllm")
