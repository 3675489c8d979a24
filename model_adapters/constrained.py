"""Constrained decoding with xgrammar: JSON schemas, any JSON object, forced tool calls.

`compile_constraint(constraint, tokenizer, config)` returns a per-request object with
`mask(logits) -> logits` and `accept(token_id) -> token_id` and `done()`, which every
local engine calls once per generated token. Compiled grammars are cached per tokenizer
in xgrammar's compiler cache, bounded in bytes (LRU; `grammar_cache_bytes()` reports it).

The budget guarantee: a `GuidedConstraint` carrying `max_tokens` is checked up front
(shortest valid output longer than the budget -> ValueError naming max_tokens), and the
matcher keeps, near the end of the budget, a token plan that completes the grammar
(model_adapters.grammar_plan). A sampled token whose own shortest completion would not
fit what is left is replaced by the plan's next token, so the output always ends valid.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from model_adapters.call_schema import free_object_schema, grammar_schema
from model_adapters.generation import Constraint
from model_adapters.grammar_plan import Bounds, JsonLex, PlanError, completion_text, tokenize_plan
from model_adapters.schema_checks import check_schema
from model_adapters.tokenizer_info import tokenizer_info

log = logging.getLogger(__name__)

# Near the end of the budget (remaining <= cost + _SLACK) every token is vetted; before
# that the cost is re-measured every _EVERY tokens.
_SLACK = 16
_EVERY = 4
# Compiled grammars kept per tokenizer (xgrammar's LRU cache), in bytes.
DEFAULT_CACHE_BYTES = int(os.environ.get("CHATBOT_GRAMMAR_CACHE_BYTES", 256 * 2**20))


class ConstraintError(ValueError):
    """A constraint that cannot be honoured; `param` names the request field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class GuidedConstraint(Constraint):
    """A Constraint that also knows the token budget, so the grammar can close in time.
    `source` names the request field it came from, for error messages."""

    max_tokens: int | None = None
    source: str = "response_format"


def _schemas_in(spec: Any) -> list[Any]:
    """The JSON schemas inside a structural tag spec."""
    found: list[Any] = []
    stack = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and "json_schema" in node:
                found.append(node["json_schema"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _key(constraint: Constraint) -> str:
    return json.dumps([constraint.kind, constraint.spec], sort_keys=True, default=str)


class _Backend:
    """xgrammar state for one tokenizer: compiler (with its cache) and token tables."""

    def __init__(self, tokenizer: Any, config: Any, cache_bytes: int) -> None:
        import xgrammar as xgr

        vocab_size = max(int(getattr(config, "vocab_size", 0) or 0), len(tokenizer))
        self.info = tokenizer_info(tokenizer, vocab_size, _stop_ids(tokenizer, config))
        self.compiler = xgr.GrammarCompiler(
            self.info, max_threads=1, cache_enabled=True, cache_limit_bytes=cache_bytes
        )
        self.vocab_size = vocab_size
        self.stop_ids = list(self.info.stop_token_ids)
        vocab: list[bytes] = list(self.info.decoded_vocab)
        vocab += [b""] * (vocab_size - len(vocab))
        self.vocab = vocab
        self.special = set(self.info.special_token_ids) | set(self.stop_ids)
        self.by_bytes: dict[bytes, int] = {}
        for i, tok in enumerate(vocab):
            if tok and i not in self.special:
                self.by_bytes.setdefault(tok, i)
        self.longest = max((len(t) for t in self.by_bytes), default=1)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.lock = threading.Lock()  # guards the scratch bitmask and the cost cache
        self.min_costs: OrderedDict[str, int] = OrderedDict()

    def compile(
        self,
        constraint: Constraint,
        any_whitespace: bool = False,
        separators: tuple[str, str] | None = None,
    ) -> Any:
        """`separators` (item, key) as xgrammar takes them; None: its default (", ", ": ")
        unless any_whitespace."""
        kind, spec = constraint.kind, constraint.spec
        json_opts = {"any_whitespace": any_whitespace, "separators": separators}
        if kind == "json_schema":
            check_schema(parsed := json.loads(spec) if isinstance(spec, str) else spec)
            schema = json.dumps(grammar_schema(parsed))  # bounded strings: call_schema
            return self.compiler.compile_json_schema(schema, **json_opts)
        if kind == "json_object":
            schema = json.dumps(free_object_schema())  # our strings, as for json_schema
            return self.compiler.compile_json_schema(schema, **json_opts)
        if kind == "structural_tag":
            for schema in _schemas_in(spec):
                check_schema(schema)
            return self.compiler.compile_structural_tag(spec)
        if kind == "ebnf":
            return self.compiler.compile_grammar(spec)
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        raise ValueError(f"constraint kind {kind!r} is not supported")

    # --- planning ----------------------------------------------------------------------

    def words(self, matcher: Any) -> Any:
        with self.lock:
            matcher.fill_next_token_bitmask(self.bitmask)
            return self.bitmask[0].numpy().copy()

    def is_done(self, matcher: Any) -> bool:
        """Terminated, or complete with nothing but a stop token left to emit."""
        if matcher.is_terminated():
            return True
        if not matcher.is_completed():
            return False
        words = self.words(matcher)
        for stop in self.stop_ids:
            words[stop >> 5] &= ~(1 << (stop & 31))
        return not words.any()

    def _fallback(self, matcher: Any) -> bytes | None:
        from model_adapters.grammar_plan import _step_any

        return _step_any(matcher, self.words, self.vocab, self.special)

    def plan(self, matcher: Any, lex: JsonLex, bounds: Bounds | None = None) -> list[int]:
        """Tokens that complete the grammar from `matcher`'s state (PlanError if none)."""
        complete = lambda m: m.is_terminated() or m.is_completed()  # noqa: E731
        text = completion_text(matcher, lex, complete, self._fallback, bounds or Bounds())
        return tokenize_plan(
            matcher, text, self.by_bytes, self.longest, self.stop_ids, self.is_done, lex
        )

    def min_tokens(self, constraint: Constraint, compiled: Any) -> int:
        """Tokens of the shortest output the planner finds from the start (cached)."""
        import xgrammar as xgr

        key = _key(constraint)
        with self.lock:
            if key in self.min_costs:
                self.min_costs.move_to_end(key)
                return self.min_costs[key]
        cost = len(self.plan(xgr.GrammarMatcher(compiled), JsonLex()))
        with self.lock:
            self.min_costs[key] = cost
            while len(self.min_costs) > 1024:
                self.min_costs.popitem(last=False)
        return cost


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
            hit = (tokenizer, _Backend(tokenizer, config, DEFAULT_CACHE_BYTES))
            _backends[id(tokenizer)] = hit
        return hit[1]


def grammar_cache_bytes() -> int:
    """Bytes held by every tokenizer's compiled-grammar cache (for /metrics)."""
    with _lock:
        backends = [b for _, b in _backends.values()]
    return sum(int(b.compiler.get_cache_size_bytes()) for b in backends)


class GrammarMatcher:
    """One request's grammar state: the object engines call per token."""

    def __init__(self, backend: _Backend, compiled: Any, max_tokens: int | None) -> None:
        import xgrammar as xgr

        self.backend = backend
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, backend.vocab_size)
        self.max_tokens = max_tokens
        self.produced = 0
        self.lex = JsonLex()
        self.plan: list[int] | None = None  # completes the grammar from the current state
        self.cost = 0  # len(plan) when last measured
        self._done = False

    # --- the engine-facing API -------------------------------------------------------

    def mask(self, logits: Any) -> Any:
        import torch
        import xgrammar as xgr

        plan = self._plan_now()
        if plan and len(plan) >= self.remaining():
            forced = torch.full_like(logits, float("-inf"))
            forced[plan[0]] = 0
            return forced
        self.matcher.fill_next_token_bitmask(self.bitmask)
        bitmask = self.bitmask.to(logits.device)
        xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), bitmask, vocab_size=logits.shape[-1])
        return logits

    def accept(self, token_id: int) -> int:
        """Take the sampled token, or the plan's next one if the sampled token would leave
        no room to close; returns the token actually taken."""
        token = int(token_id)
        token, after = self.vet(token)
        self.produced += 1
        if not self.matcher.accept_token(token):
            self._done = True  # cannot happen after mask(); stop rather than emit garbage
            return token
        self.lex.feed(self.backend.vocab[token] if token < len(self.backend.vocab) else b"")
        if after is not None:
            self.plan = after
        elif self.plan and self.plan[0] == token:
            self.plan = self.plan[1:]
        else:
            self.plan = None
        self._done = self.backend.is_done(self.matcher)
        return token

    def done(self) -> bool:
        return self._done

    # --- the budget ----------------------------------------------------------------------

    def remaining(self) -> int:
        return (1 << 30) if self.max_tokens is None else self.max_tokens - self.produced

    def _watching(self) -> bool:
        return self.max_tokens is not None and self.remaining() <= self.cost + _SLACK

    def _measure(self) -> list[int] | None:
        try:
            self.plan = self.backend.plan(self.matcher, self.lex)
        except PlanError as exc:
            log.debug("no completion plan: %s", exc)
            self.plan = None
        self.cost = len(self.plan) if self.plan is not None else self.cost
        return self.plan

    def _plan_now(self) -> list[int] | None:
        """The plan from the current state, measured when the budget needs it."""
        if self.max_tokens is None:
            return None
        if self.plan is None and (self._watching() or self.produced % _EVERY == 0):
            return self._measure()
        if self.plan is not None:
            self.cost = len(self.plan)
        return self.plan

    def vet(self, token: int) -> tuple[int, list[int] | None]:
        """(token to take, its plan if computed). Near the end of the budget, a token whose
        shortest completion does not fit what will be left is swapped for the plan's.
        Where the output could end (between parallel calls) one token can commit to a
        whole new call, a jump bigger than _SLACK: those tokens are always vetted."""
        plan = self._plan_now()  # measured here too: engines without mask() (vLLM)
        if not self._watching() and not (
            self.max_tokens is not None and self.matcher.is_completed()
        ):
            return token, None
        if plan and plan[0] == token:
            return token, None
        fork = self.matcher.fork()
        if not fork.accept_token(token):
            return token, None
        lex = self.lex.copy()
        lex.feed(self.backend.vocab[token] if token < len(self.backend.vocab) else b"")
        try:
            after = [] if self.backend.is_done(fork) else self.backend.plan(fork, lex)
        except PlanError:
            after = None
        if after is not None and len(after) <= self.remaining() - 1:
            return token, after
        if plan:
            return plan[0], plan[1:]
        return token, None

    def closing_tokens(self) -> list[int]:
        """The plan from here (engines that cannot mask, e.g. vLLM, finish with it): the
        one the budget was checked against when kept, as a fresh search may differ."""
        return list(self.plan if self.plan is not None else self._measure() or [])


def compile_constraint(
    constraint: Constraint, tokenizer: Any, config: Any, budget: int | None = None
) -> GrammarMatcher:
    """Compile (cached) and start a matcher for one request. `budget` (the tokens the
    engine will really allow) overrides the constraint's max_tokens when smaller."""
    backend = _backend(tokenizer, config)
    compiled = _compiled(backend, constraint)
    max_tokens = getattr(constraint, "max_tokens", None)
    if budget is not None and max_tokens is not None:
        max_tokens = min(max_tokens, budget)
    return GrammarMatcher(backend, compiled, max_tokens)


def _compiled(
    backend: _Backend,
    constraint: Constraint,
    any_whitespace: bool = False,
    separators: tuple[str, str] | None = None,
) -> Any:
    source = getattr(constraint, "source", "response_format")
    try:
        return backend.compile(constraint, any_whitespace, separators)
    except ValueError as exc:
        raise ConstraintError(f"{source}: {exc}", param=source) from exc
    except Exception as exc:  # noqa: BLE001 - xgrammar raises several types for bad specs
        message = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        raise ConstraintError(f"{source}: cannot build a grammar: {message}", source) from exc


def check_constraint(constraint: Constraint, tokenizer: Any, config: Any) -> int:
    """Compile now, so a bad schema, or a max_tokens too small for the shortest valid
    output, is a clear error before the request is queued. Returns that shortest length."""
    backend = _backend(tokenizer, config)
    compiled = _compiled(backend, constraint)
    source = getattr(constraint, "source", "response_format")
    try:
        need = backend.min_tokens(constraint, compiled)
    except PlanError as exc:
        raise ConstraintError(
            f"{source}: no valid output of bounded length was found ({exc})", source
        ) from exc
    max_tokens = getattr(constraint, "max_tokens", None)
    if max_tokens is not None and max_tokens < need:
        raise ConstraintError(
            f"max_tokens: {max_tokens} is too small for the {source} constraint; its shortest "
            f"valid output takes {need} tokens",
            param="max_tokens",
        )
    return need
