"""The running batch of the transformers runtime: one row per request, one shared KV cache.

Invariant: each row's real tokens are a contiguous suffix of the cache's time axis
(padding only on the left). A row is then described by its length alone, the attention
mask and position ids are rebuilt from lengths each step, and rows can be merged (pad the
shorter cache on the left) or dropped (select rows, then cut columns no row uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from model_adapters.generation import (
    GenerationRequest,
    IncrementalDecoder,
    Sink,
    StopMatcher,
    TokenLogprob,
    token_logprob,
)


@dataclass
class Row:
    """One request in the running batch and its decoding state."""

    request: GenerationRequest
    sink: Sink
    budget: int  # tokens it may still produce (max_tokens capped by the context window)
    stops: StopMatcher
    decoder: IncrementalDecoder
    constraint: Any = None
    generator: torch.Generator | None = None
    length: int = 0  # real (non-padding) tokens in the cache
    produced: int = 0
    next_token: int = -1  # sampled but not yet fed to the model
    finish: str | None = None  # set when the row must leave the batch
    output_ids: list[int] = field(default_factory=list)  # for the penalties
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent


def supports_merging(config: Any) -> bool:
    """Only plain full-attention caches can be padded and merged (not sliding/linear)."""
    cache = DynamicCache(config=config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Batch:
    """Rows plus their shared, left-padded DynamicCache."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def step_inputs(self) -> dict[str, Any]:
        """Model inputs that feed each row's pending token (one new column)."""
        lengths = torch.tensor([r.length for r in self.rows], device=self.device)
        cols = self.width + 1
        # Row i's real tokens (and the new one) are its last length_i + 1 columns.
        start = (cols - lengths - 1).unsqueeze(1)
        mask = (torch.arange(cols, device=self.device).unsqueeze(0) >= start).long()
        tokens = [[r.next_token] for r in self.rows]
        return {
            "input_ids": torch.tensor(tokens, dtype=torch.long, device=self.device),
            "attention_mask": mask,
            "position_ids": lengths.unsqueeze(1),
            "past_key_values": self.cache,
        }

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows; drop cache columns that no remaining row uses."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache = None
        if self.cache is None:
            return
        index = torch.tensor(indices, device=self.device)
        cut = self.width - max(r.length for r in self.rows)
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:, :]
            layer.values = layer.values[index, :, cut:, :]

    def merge(self, rows: list[Row], cache: DynamicCache) -> None:
        """Add freshly prefilled rows (with their own left-padded cache) to the batch."""
        if not rows:
            return
        if self.cache is None:
            self.rows, self.cache = list(rows), cache
            return
        mine, theirs = self.width, cache.get_seq_length()
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat(_pad_to(old.keys, new.keys, mine, theirs), dim=0)
            old.values = torch.cat(_pad_to(old.values, new.values, mine, theirs), dim=0)
        self.rows.extend(rows)


def _pad_to(a: torch.Tensor, b: torch.Tensor, len_a: int, len_b: int) -> tuple[torch.Tensor, ...]:
    """Left-pad the shorter of two [batch, heads, time, dim] tensors with zeros (masked)."""
    width = max(len_a, len_b)
    pad = torch.nn.functional.pad
    return pad(a, (0, 0, width - len_a, 0)), pad(b, (0, 0, width - len_b, 0))


def take_logprobs(row: Row) -> list[TokenLogprob] | None:
    """The logprobs of the tokens since the last delta (None when not asked for)."""
    if row.request.logprobs is None:
        return None
    taken, row.logprobs = row.logprobs, []
    return taken


def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it (the first has none).
    `logits`: [prompt_len, vocab], the prefill's logits of this prompt's positions."""
    out: list[TokenLogprob | None] = [None]
    for position, token in enumerate(prompt[1:]):
        out.append(token_logprob(logits[position], token, top))
    return out
