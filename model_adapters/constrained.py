"""Constrained decoding with xgrammar: JSON schemas, any JSON object, forced tool calls.

`compile_constraint(constraint, tokenizer, config)` returns a per-request object with
`mask(logits) -> logits`, `accept(token_id)` and `done()`, which every local engine calls
once per generated token. Compiled grammars are cached per tokenizer (xgrammar's
compiler cache), so a schema is compiled once per process.

Budget: when a `GuidedConstraint` carries `max_tokens`, the matcher measures how many
tokens the shortest completion still needs and, once the budget is that tight, steers
decoding to close the JSON. So output always parses, even from a random model with a
small max_tokens, instead of being cut off mid-object.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from model_adapters.generation import Constraint
from model_adapters.tool_parsers import ToolCallParser

# Re-check the completion cost only in the last stretch of the budget (it costs a few
# matcher steps per token).
_WINDOW = 96
_CLOSERS = set(b'"}]')
# One random token can lengthen the shortest completion (a backslash, a new key): start
# closing a few tokens early.
_MARGIN = 4


@dataclass
class GuidedConstraint(Constraint):
    """A Constraint that also knows the token budget, so the grammar can close in time."""

    max_tokens: int | None = None


class _Backend:
    """xgrammar state for one tokenizer: compiler (with its cache) and token tables."""

    def __init__(self, tokenizer: Any, config: Any) -> None:
        import torch
        import xgrammar as xgr

        vocab_size = max(int(getattr(config, "vocab_size", 0) or 0), len(tokenizer))
        stops = _stop_ids(tokenizer, config)
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stops or None
        )
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.vocab_size = vocab_size
        self.stop_ids = list(self.info.stop_token_ids)
        vocab: list[bytes] = list(self.info.decoded_vocab)
        vocab += [b""] * (vocab_size - len(vocab))
        special = set(self.info.special_token_ids) | set(self.stop_ids)
        self.by_bytes: dict[bytes, int] = {}
        for i, tok in enumerate(vocab):
            if tok and i not in special:
                self.by_bytes.setdefault(tok, i)
        self.closers = sorted(
            (i for i, tok in enumerate(vocab) if tok and i not in special and set(tok) <= _CLOSERS),
            key=lambda i: -len(vocab[i]),
        )
        big = 1 << 30
        self.lengths = torch.tensor(
            [len(tok) if tok and i not in special else big for i, tok in enumerate(vocab)]
        )
        self.shifts = torch.arange(32, dtype=torch.int32)

    def compile(self, constraint: Constraint) -> Any:
        kind, spec = constraint.kind, constraint.spec
        if kind == "json_schema":
            schema = spec if isinstance(spec, str) else json.dumps(spec)
            return self.compiler.compile_json_schema(schema, any_whitespace=False)
        if kind == "json_object":
            return self.compiler.compile_json_schema(
                '{"type": "object"}', any_whitespace=False, strict_mode=False
            )
        if kind == "structural_tag":
            return self.compiler.compile_structural_tag(spec)
        if kind == "ebnf":
            return self.compiler.compile_grammar(spec)
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        raise ValueError(f"constraint kind {kind!r} is not supported")


def _stop_ids(tokenizer: Any, config: Any) -> list[int]:
    ids: list[int] = []
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.append(value)
        elif value:
            ids.extend(value)
    return sorted(set(ids))


_backends: dict[int, tuple[Any, _Backend]] = {}
_lock = threading.Lock()


def _backend(tokenizer: Any, config: Any) -> _Backend:
    with _lock:
        hit = _backends.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = (tokenizer, _Backend(tokenizer, config))
            _backends[id(tokenizer)] = hit
        return hit[1]


class GrammarMatcher:
    """One request's grammar state: the object engines call per token."""

    def __init__(self, backend: _Backend, compiled: Any, max_tokens: int | None) -> None:
        import xgrammar as xgr

        self.backend = backend
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, backend.vocab_size)
        self.words = self.bitmask[0].numpy()  # shares memory: cheap bit tests
        self.max_tokens = max_tokens
        self.produced = 0
        self.finishing = False
        self._done = False
        self._cost = _WINDOW  # shortest completion last measured, in tokens

    # --- the engine-facing API -------------------------------------------------------

    def mask(self, logits: Any) -> Any:
        import torch
        import xgrammar as xgr

        if self.must_finish():
            forced = torch.full_like(logits, float("-inf"))
            forced[self.finish_token(self.matcher)] = 0
            return forced
        self.matcher.fill_next_token_bitmask(self.bitmask)
        bitmask = self.bitmask.to(logits.device)
        xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), bitmask, vocab_size=logits.shape[-1])
        return logits

    def accept(self, token_id: int) -> None:
        self.produced += 1
        if not self.matcher.accept_token(int(token_id)):
            self._done = True  # cannot happen after mask(); stop rather than emit garbage
            return
        self._done = self._is_done(self.matcher)

    def done(self) -> bool:
        return self._done

    # --- finishing within the budget -------------------------------------------------

    def _fill(self, matcher: Any) -> Any:
        """Fill the bitmask for `matcher`; returns its words as a numpy view."""
        matcher.fill_next_token_bitmask(self.bitmask)
        return self.words

    @staticmethod
    def _bit(words: Any, tok: int) -> bool:
        return bool((int(words[tok >> 5]) >> (tok & 31)) & 1)

    def _is_done(self, matcher: Any) -> bool:
        """Terminated, or complete with nothing but a stop token left to emit."""
        if matcher.is_terminated():
            return True
        if not matcher.is_completed():
            return False
        words = self._fill(matcher).copy()
        for stop in self.backend.stop_ids:
            words[stop >> 5] &= ~(1 << (stop & 31))
        return not words.any()

    def finish_token(self, matcher: Any) -> int:
        """The next token on a short path to the end of the grammar."""
        import torch

        words = self._fill(matcher)
        b = self.backend
        for stop in b.stop_ids:
            if self._bit(words, stop):
                return stop
        forced = matcher.find_jump_forward_string().encode()
        for n in range(len(forced), 0, -1):
            tok = b.by_bytes.get(forced[:n])
            if tok is not None and self._bit(words, tok):
                return tok
        for tok in b.closers:
            if self._bit(words, tok):
                return tok
        # Rare (numbers, enums): the shortest allowed token.
        bits = (torch.from_numpy(words).unsqueeze(1) >> b.shifts) & 1
        allowed = bits.flatten()[: b.vocab_size].bool()
        return int(b.lengths.masked_fill(~allowed, 1 << 30).argmin())

    def _completion_cost(self, limit: int) -> int:
        sim = self.matcher.fork()
        steps = 0
        while steps < limit and not self._is_done(sim):
            if not sim.accept_token(self.finish_token(sim)):
                return limit
            steps += 1
        return steps

    def must_finish(self) -> bool:
        if self.finishing or self.max_tokens is None:
            return self.finishing
        remaining = self.max_tokens - self.produced
        # Re-measure near the edge, and now and then (nesting can grow the cost).
        near = remaining <= self._cost + 3 * _MARGIN or self.produced % 8 == 0
        if remaining <= _WINDOW and near:
            self._cost = self._completion_cost(remaining + 1)
            self.finishing = self._cost + _MARGIN >= remaining
        return self.finishing


def compile_constraint(constraint: Constraint, tokenizer: Any, config: Any) -> GrammarMatcher:
    """Compile (cached) and start a matcher for one request."""
    backend = _backend(tokenizer, config)
    try:
        compiled = backend.compile(constraint)
    except Exception as exc:  # noqa: BLE001 - xgrammar raises several types for bad specs
        raise ValueError(f"response_format: cannot build a grammar: {exc}") from exc
    return GrammarMatcher(backend, compiled, getattr(constraint, "max_tokens", None))


def check_constraint(constraint: Constraint, tokenizer: Any, config: Any) -> None:
    """Compile now so a bad schema is a clear error before the request is queued."""
    compile_constraint(constraint, tokenizer, config)


# --- forcing a tool call -------------------------------------------------------------


def tool_call_tag(tools: list[dict[str, Any]], parser: ToolCallParser) -> dict[str, Any]:
    """A structural tag allowing exactly one call, to one of `tools`, in `parser`'s format."""
    tags = []
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        tags.append(
            {
                "type": "tag",
                "begin": parser.call_begin(fn["name"]),
                "content": {
                    "type": "json_schema",
                    "json_schema": params,
                    "max_whitespace_cnt": 1,
                    # A call marker inside an argument string would cut the call short.
                    "excludes": [m for m in (parser.start, parser.end) if m],
                },
                "end": parser.call_end(),
            }
        )
    fmt = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
    return {"type": "structural_tag", "format": fmt}


# --- response_format -----------------------------------------------------------------


def response_format_constraint(response_format: Any, max_tokens: int) -> Constraint | None:
    """OpenAI `response_format` ({"type": "json_schema" | "json_object" | "text"}, or a
    pydantic class as LangChain allows) -> a constraint; a clear error for anything else."""
    if response_format is None:
        return None
    if isinstance(response_format, type):
        from langchain_core.utils.function_calling import convert_to_json_schema

        schema = convert_to_json_schema(response_format)
        return GuidedConstraint("json_schema", schema, max_tokens=max_tokens)
    if not isinstance(response_format, dict):
        raise ValueError(
            f"response_format: expected an object, got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedConstraint("json_object", None, max_tokens=max_tokens)
    if kind == "json_schema":
        body = response_format.get("json_schema")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), dict):
            raise ValueError("response_format.json_schema.schema: a JSON schema object is required")
        return GuidedConstraint("json_schema", body["schema"], max_tokens=max_tokens)
    raise ValueError(
        f"response_format.type: expected 'text', 'json_object' or 'json_schema', got {kind!r}"
    )
