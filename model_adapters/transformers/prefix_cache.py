"""Prefix caching for the transformers runtime: prompts that start with the same tokens (the
same system prompt, tool list or RAG instructions) reuse that prefix's KV instead of
prefilling it again.

The cache holds fixed-size blocks of prompt tokens, each keyed by a hash chained over all
blocks before it (as vLLM does), so one lookup walks a prompt block by block and stops at
the first block not cached: the longest block-aligned prefix any earlier prompt shared.
A block stores its own per-layer keys/values; eviction is least recently used, leaves of
a chain first (a lookup touches a chain back to front), under a budget in bytes.

`prefill_inputs` builds one prefill for rows with different cached prefix lengths without
breaking the batch invariant (each row's tokens a contiguous suffix of the time axis, see
model_adapters.transformers.batch): every row feeds its last `width` prompt tokens (a few
already cached ones are computed again), on top of its cached KV cut to what comes before
them and left-padded to a common width.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import DynamicCache

_ROOT = 0  # the chain hash "before" the first block


class PrefixCacheOptions(BaseModel):
    """`options.prefix_cache` of a transformers entry: true/false or these fields."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    block_size: int = Field(16, ge=1, le=4096)
    max_mb: float = Field(256, ge=0)  # KV memory of the cached blocks

    @classmethod
    def parse(cls, value: Any) -> PrefixCacheOptions:
        if value is None or isinstance(value, bool):
            return cls(enabled=value is not False)
        return cls.model_validate(value)


@dataclass
class _Block:
    parent: int  # chain hash of the block before
    tokens: tuple[int, ...]  # checked on lookup: a hash match alone is not trusted
    keys: list[torch.Tensor]  # per layer: [heads, block_size, head_dim]
    values: list[torch.Tensor]


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    cached_tokens: int = 0  # prompt tokens not prefilled again thanks to the cache


@dataclass
class Hit:
    length: int  # cached prompt tokens
    keys: list[torch.Tensor]  # per layer: [heads, length, head_dim]
    values: list[torch.Tensor]


class PrefixCache:
    def __init__(self, block_size: int = 16, max_bytes: int = 256 << 20) -> None:
        self.block_size, self.max_bytes = block_size, max_bytes
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._token_bytes = 0  # KV bytes of one token, all layers (known at the first store)
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def tokens(self) -> int:
        return len(self._blocks) * self.block_size

    @property
    def bytes(self) -> int:
        return self.tokens * self._token_bytes

    def _budget(self, cache: DynamicCache) -> int:
        """The most tokens that fit in max_bytes."""
        if not self._token_bytes:
            per_layer = (layer.keys[0, :, :1] for layer in cache.layers)
            self._token_bytes = 2 * sum(t.numel() * t.element_size() for t in per_layer)
        return int(self.max_bytes // max(self._token_bytes, 1))

    def _chain(self, ids: list[int], blocks: int) -> list[tuple[int, int, tuple[int, ...]]]:
        """(hash, parent hash, tokens) of the first `blocks` blocks of `ids`."""
        out, parent, size = [], _ROOT, self.block_size
        for b in range(blocks):
            tokens = tuple(ids[b * size : (b + 1) * size])
            key = hash((parent, tokens))
            out.append((key, parent, tokens))
            parent = key
        return out

    def lookup(self, ids: list[int]) -> Hit | None:
        """The KV of the longest cached block-aligned prefix of `ids`, leaving at least one
        token to prefill (its logits give the first new token)."""
        self.stats.lookups += 1
        found: list[tuple[int, _Block]] = []
        for key, parent, tokens in self._chain(ids, (len(ids) - 1) // self.block_size):
            block = self._blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break
            found.append((key, block))
        if not found:
            return None
        for key, _ in reversed(found):  # the chain's root ends up most recent
            self._blocks.move_to_end(key)
        blocks = [block for _, block in found]
        layers = range(len(blocks[0].keys))
        hit = Hit(
            length=len(found) * self.block_size,
            keys=[torch.cat([b.keys[i] for b in blocks], dim=1) for i in layers],
            values=[torch.cat([b.values[i] for b in blocks], dim=1) for i in layers],
        )
        self.stats.hits += 1
        self.stats.cached_tokens += hit.length
        return hit

    def store(self, ids: list[int], cache: DynamicCache, row: int) -> None:
        """Keep the full blocks of prompt `ids`, whose KV is row `row` of `cache` (its
        tokens the last len(ids) columns), and evict the oldest blocks over budget."""
        budget, size = self._budget(cache), self.block_size
        if budget < size:
            return
        start = cache.get_seq_length() - len(ids)
        chain = self._chain(ids, min(len(ids) // size, budget // size))
        for b, (key, parent, tokens) in enumerate(chain):
            block = self._blocks.get(key)
            if block is not None and block.parent == parent and block.tokens == tokens:
                continue
            cols = slice(start + b * size, start + (b + 1) * size)
            self._blocks[key] = _Block(
                parent,
                tokens,
                [layer.keys[row, :, cols].clone() for layer in cache.layers],
                [layer.values[row, :, cols].clone() for layer in cache.layers],
            )
        for key, _, _ in reversed(chain):
            self._blocks.move_to_end(key)
        while self.tokens > budget:
            self._blocks.popitem(last=False)


def prefill_inputs(
    prompts: list[list[int]],
    hits: list[Hit | None],
    pad_id: int,
    device: str,
    config: Any,
) -> dict[str, Any]:
    """Model inputs prefilling `prompts` on top of their cached prefixes (`hits`).

    With `width` = the most uncached tokens of any row, row i feeds its last
    min(len_i, width) tokens and takes its cached KV for the len_i - width tokens before
    them (always within the cached part, as its uncached tail is at most `width`).
    """
    lengths = [len(p) for p in prompts]
    width = max(n - (h.length if h else 0) for n, h in zip(lengths, hits, strict=True))
    past = [max(0, n - width) for n in lengths]
    past_width = max(past)
    total = past_width + width
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), total), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        fed = prompt[past[i] :]
        ids[i, width - len(fed) :] = torch.tensor(fed, dtype=torch.long)
        mask[i, total - lengths[i] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past_width:]
    cache = DynamicCache(config=config)
    if past_width:
        _fill(cache, hits, past, past_width)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
        "past_key_values": cache,
    }


def _fill(cache: DynamicCache, hits: list[Hit | None], past: list[int], width: int) -> None:
    """Each row's first past[i] cached tokens, left-padded with zeros (masked) to `width`."""
    template = next(h for h in hits if h is not None)
    pad = torch.nn.functional.pad
    for i, layer in enumerate(cache.layers):
        parts_k, parts_v = [], []
        for hit, n in zip(hits, past, strict=True):
            k = template.keys[i] if hit is None else hit.keys[i]
            v = template.values[i] if hit is None else hit.values[i]
            # A row without a hit has n == 0: an all-padding slice of the right shape.
            parts_k.append(pad(k[:, :n], (0, 0, width - n, 0)))
            parts_v.append(pad(v[:, :n], (0, 0, width - n, 0)))
        keys, values = torch.stack(parts_k), torch.stack(parts_v)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values


def split_by_hits(cache: PrefixCache, rows: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    """Rows that hit the cache and rows that don't, each a group prefilled on its own (a
    miss would make every hit's prefill as wide as its whole prompt). Rows asking for
    prompt logprobs need every prompt position's logits: never served from the cache."""
    hit_rows, hits, cold = [], [], []
    for row in rows:
        echo = row.request.prompt_logprobs is not None
        found = None if echo else cache.lookup(row.request.prompt_ids)
        if found is None:
            cold.append(row)
        else:
            hit_rows.append(row)
            hits.append(found)
    groups = [(hit_rows, hits), (cold, [None] * len(cold))]
    return [(g, h) for g, h in groups if g]
