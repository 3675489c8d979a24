"""xgrammar's view of a tokenizer's vocabulary, checked against the tokenizer itself.

The grammar masks tokens by the bytes xgrammar believes each token decodes to. If that
belief is wrong (byte-level BPE read as raw text, a SentencePiece vocabulary without its
byte fallback, a GGUF-converted tokenizer whose metadata differs from its decoder), a
token the grammar counts as `Ċ` may really print a newline, and a JSON string ends up
holding raw control characters. So the detected vocabulary is compared with the
tokenizer's own decoding on a sample; if it disagrees, every vocabulary type is tried and
the one that agrees best is used.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_SAMPLE = 3000
_TOLERANCE = 0.01


def _real_bytes(tokenizer: Any, token: int, anchor: list[int], base: str) -> bytes | None:
    """What `token` adds to the decoded text after an anchor (keeps SentencePiece's
    leading space, which decoding a lone token drops); None if not whole characters."""
    text = tokenizer.decode([*anchor, token], skip_special_tokens=False)
    if not text.startswith(base) or "\ufffd" in text:
        return None
    return text[len(base) :].encode()


def mismatches(info: Any, tokenizer: Any, vocab_size: int) -> float:
    """Share of sampled ordinary tokens whose real decoding differs from xgrammar's."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    base = tokenizer.decode(anchor, skip_special_tokens=False)
    special = set(info.special_token_ids)
    decoded = info.decoded_vocab
    limit = min(len(decoded), len(tokenizer), vocab_size)
    step = max(1, limit // _SAMPLE)
    bad = total = 0
    for token in range(0, limit, step):
        if token in special:
            continue
        real = _real_bytes(tokenizer, token, anchor, base)
        if real is None:
            continue
        total += 1
        bad += real != decoded[token]
    return bad / total if total else 0.0


def tokenizer_info(tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> Any:
    """xgrammar TokenizerInfo for `tokenizer`, verified against its real decoding."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids or None
    )
    first = mismatches(info, tokenizer, vocab_size)
    if first <= _TOLERANCE:
        return info
    encoded = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    encoded = [t if isinstance(t, str) else "" for t in encoded]
    best, best_rate = info, first
    for vocab_type in xgr.VocabType:
        for prefix in (False, True):
            candidate = xgr.TokenizerInfo(
                encoded,
                vocab_type,
                vocab_size=vocab_size,
                stop_token_ids=stop_ids or list(info.stop_token_ids),
                add_prefix_space=prefix,
            )
            rate = mismatches(candidate, tokenizer, vocab_size)
            if rate < best_rate:
                best, best_rate = candidate, rate
    log.warning(
        "xgrammar's detected vocabulary disagreed with the tokenizer on %.1f%% of tokens; "
        "using %s (%.1f%%)",
        100 * first,
        best.vocab_type.name,
        100 * best_rate,
    )
    return best
