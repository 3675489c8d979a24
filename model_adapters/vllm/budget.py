"""Grammar-constrained output on vLLM that still closes within max_tokens.

vLLM's structured outputs keep every token valid, but nothing there knows that the
budget is running out: a rambling model stops mid-object and the JSON (or tool call) does
not parse. Our transformers runtime steers to close in time (model_adapters.constrained).
Here the same GrammarMatcher follows vLLM's tokens; once it says the rest of the budget
is needed to close, the caller aborts the vLLM request and the closing tokens come from
the grammar's shortest path. Text is decoded from the token ids we keep, so tokens vLLM
produced past that point are dropped cleanly.
"""

from __future__ import annotations

import logging
from typing import Any

from model_adapters.generation import Constraint, IncrementalDecoder

log = logging.getLogger(__name__)


def wants_budget(constraint: Constraint | None) -> bool:
    """Only constraints that carry a budget (GuidedConstraint.max_tokens) are steered."""
    return constraint is not None and getattr(constraint, "max_tokens", None) is not None


def _matcher(constraint: Constraint, tokenizer: Any, config: Any, any_whitespace: bool) -> Any:
    """Our GrammarMatcher over the grammar vLLM enforces (its JSON whitespace setting is
    engine-wide, `structured_outputs_config.disable_any_whitespace`)."""
    import json

    from model_adapters.constrained import GrammarMatcher, _backend

    backend = _backend(tokenizer, config)
    if constraint.kind in ("json_schema", "json_object"):
        spec = constraint.spec if constraint.kind == "json_schema" else {"type": "object"}
        schema = spec if isinstance(spec, str) else json.dumps(spec)
        strict = constraint.kind == "json_schema"
        compiled = backend.compiler.compile_json_schema(
            schema, any_whitespace=any_whitespace, strict_mode=strict
        )
    else:
        compiled = backend.compile(constraint)
    return GrammarMatcher(backend, compiled, getattr(constraint, "max_tokens", None))


class BudgetedDecode:
    def __init__(
        self,
        constraint: Constraint,
        tokenizer: Any,
        config: Any,
        budget: int,
        any_whitespace: bool = True,
    ) -> None:
        self.matcher = _matcher(constraint, tokenizer, config, any_whitespace)
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_ids = set(self.matcher.backend.stop_ids)
        self.budget = budget
        self.produced = 0
        self.finish: str | None = None  # "stop" once the grammar is complete
        self.must_close = False  # stop following vLLM: close with the grammar now
        self.lost = False  # our grammar disagreed with vLLM's: just follow vLLM

    @property
    def following(self) -> bool:
        return self.finish is None and not self.must_close

    def _take(self, token: int) -> str:
        self.produced += 1
        if token in self.stop_ids:
            self.finish = "stop"
            return ""
        if not self.lost:
            xgr_matcher = self.matcher.matcher
            self.matcher.accept(token)
            if self.matcher.done():
                if xgr_matcher.is_terminated() or xgr_matcher.is_completed():
                    self.finish = "stop"
                else:  # rejected: vLLM's grammar differs; stop steering
                    log.warning("vllm output left our grammar; not steering this request")
                    self.lost = True
        return self.decoder.add(token)

    def feed(self, token_ids: list[int]) -> str:
        """vLLM's next tokens -> the text to emit (none past the point of closing)."""
        out = []
        for token in token_ids:
            if not self.following:
                break
            # GrammarMatcher's own budget check, as the transformers runtime uses it.
            if not self.lost and self.matcher.must_finish():
                self.must_close = True
                break
            out.append(self._take(token))
        return "".join(out)

    def close(self) -> str:
        """The grammar's shortest completion, within what is left of the budget."""
        out = []
        while self.finish is None and not self.lost and self.produced < self.budget:
            out.append(self._take(self.matcher.finish_token(self.matcher.matcher)))
        return "".join(out)
