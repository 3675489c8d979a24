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

# vLLM's xgrammar backend compiles JSON with these when `disable_any_whitespace` is set
# (vllm/v1/structured_output/backend_xgrammar.py); xgrammar's own compact default is
# (", ", ": "), and the two grammars reject each other's text.
VLLM_COMPACT_SEPARATORS = (",", ":")


def wants_budget(constraint: Constraint | None) -> bool:
    """Only constraints that carry a budget (GuidedConstraint.max_tokens) are steered."""
    return constraint is not None and getattr(constraint, "max_tokens", None) is not None


def _matcher(
    constraint: Constraint, tokenizer: Any, config: Any, any_whitespace: bool, budget: int
) -> Any:
    """Our GrammarMatcher over the grammar vLLM enforces (its JSON whitespace setting is
    engine-wide, `structured_outputs_config.disable_any_whitespace`)."""
    from model_adapters.constrained import GrammarMatcher, _backend, _compiled

    backend = _backend(tokenizer, config)
    separators = None if any_whitespace else VLLM_COMPACT_SEPARATORS
    compiled = _compiled(backend, constraint, any_whitespace, separators)
    max_tokens = getattr(constraint, "max_tokens", None)
    return GrammarMatcher(backend, compiled, min(budget, max_tokens or budget))


class BudgetedDecode:
    """Follows vLLM's tokens with our matcher; a token our matcher would swap (its
    shortest completion no longer fits the budget) ends vLLM's part: we close from there."""

    def __init__(
        self,
        constraint: Constraint,
        tokenizer: Any,
        config: Any,
        budget: int,
        any_whitespace: bool = True,
    ) -> None:
        self.matcher = _matcher(constraint, tokenizer, config, any_whitespace, budget)
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

    def _take(self, token: int) -> tuple[int, str]:
        """Accept `token` (or the matcher's swap for it); returns (token taken, text)."""
        self.produced += 1
        if token in self.stop_ids:
            self.finish = "stop"
            return token, ""
        if not self.lost:
            xgr_matcher = self.matcher.matcher
            token = self.matcher.accept(token)
            if self.matcher.done():
                if xgr_matcher.is_terminated() or xgr_matcher.is_completed():
                    self.finish = "stop"
                else:  # rejected: vLLM's grammar differs; stop steering
                    log.warning("vllm output left our grammar; not steering this request")
                    self.lost = True
        return token, self.decoder.add(token)

    def feed(self, token_ids: list[int]) -> str:
        """vLLM's next tokens -> the text to emit (none past the point of closing)."""
        out = []
        for token in token_ids:
            if not self.following:
                break
            taken, text = self._take(token)
            out.append(text)
            if taken != token:  # swapped to keep room for closing: vLLM's part is over
                self.must_close = self.finish is None
                break
        return "".join(out)

    def close(self) -> str:
        """The grammar's shortest completion, within what is left of the budget."""
        out = []
        if self.finish is None and not self.lost:
            for token in self.matcher.closing_tokens():
                if self.finish is not None or self.produced >= self.budget:
                    break
                out.append(self._take(token)[1])
        return "".join(out)
