"""Shortest completions of a grammar state, as token plans.

The budget guarantee (model_adapters.constrained) needs, from any matcher state, a short
token sequence that completes the grammar. It is found in two passes, both bounded in
steps and time so a pathological grammar fails one request, never the process:

1. text: the grammar's own jump-forward string where the path is forced, otherwise the
   first allowed character from a list ordered by how fast it closes a JSON value. The
   list depends on whether we are inside a JSON string (tracked by `JsonLex`): there `"`
   closes, while `]` or `}` are ordinary text (the bug this replaces: a run of `]]]]`
   inside a string that never ended);
2. tokens: that text cut greedily into the longest tokens the matcher accepts (outside
   strings a token may add a space the grammar allows: vocabularies merge ` {"name":`),
   plus a stop token if the grammar still allows more.
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass
from typing import Any

# Outside strings: close first, then the shortest value starts, then the rest.
_OUTSIDE = [c.encode() for c in '}],0"ntf{[1-.:'] + [b" ", b"\n"]
_INSIDE = [b'"'] + [c.encode() for c in "a0 "]
_FALLBACK = [c.encode() for c in string.printable if c not in "\x0b\x0c"]


class PlanError(ValueError):
    """No completion was found within the search bounds."""


@dataclass
class JsonLex:
    """Whether the text so far ends inside a JSON string (and after a backslash)."""

    in_str: bool = False
    escape: bool = False

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_str:
                if self.escape:
                    self.escape = False
                elif b == 0x5C:  # backslash
                    self.escape = True
                elif b == 0x22:  # quote
                    self.in_str = False
            elif b == 0x22:
                self.in_str = True

    def copy(self) -> JsonLex:
        return JsonLex(self.in_str, self.escape)


@dataclass
class Bounds:
    max_chars: int = 8192
    seconds: float = 2.0


def _step_any(sim: Any, words_of: Any, vocab: list[bytes], special: set[int]) -> bytes | None:
    """Last resort: the shortest token the grammar allows (e.g. a non-ASCII enum value)."""
    words = words_of(sim)
    best: bytes | None = None
    for word_index, word in enumerate(words.tolist()):
        word &= 0xFFFFFFFF
        while word:
            low = word & -word
            tok = word_index * 32 + low.bit_length() - 1
            word ^= low
            if tok < len(vocab) and tok not in special and vocab[tok]:
                if best is None or len(vocab[tok]) < len(best):
                    best = vocab[tok]
                    if len(best) == 1:
                        return best
    return best


# Characters tried when searching for the way out of a string (formats, patterns): one
# letter and one digit stand for their classes.
_STRING_STEPS = [c.encode() for c in "a0@.-_:+/ A1TZ"] + [
    c.encode() for c in string.punctuation if c not in '@.-_:+/"\\'
]
_STRING_NODES = 300
_FILLER = 64


def _close_string(sim: Any, deadline: float) -> bytes | None:
    """Short text (then the closing quote) that ends the current string, accepted into
    `sim`: first plain filler (minLength), then a small breadth-first search (formats,
    patterns). None when not found within the bounds. Forks only on accepted steps
    (a rejected accept_string leaves a matcher unchanged; forks are the cost here)."""
    if sim.accept_string(b'"'):
        return b'"'
    probe, text = sim.fork(), b""
    for _ in range(_FILLER):
        ch = b"a" if probe.accept_string(b"a") else b"0" if probe.accept_string(b"0") else None
        if ch is None:
            break
        text += ch
        if probe.accept_string(b'"'):
            sim.accept_string(text + b'"')
            return text + b'"'
    frontier: list[tuple[Any, bytes]] = [(sim, b"")]
    seen = 0
    while frontier and seen < _STRING_NODES and time.monotonic() < deadline:
        nxt = []
        for state, prefix in frontier:
            child = state.fork()
            for ch in _STRING_STEPS:
                if not child.accept_string(ch):
                    continue
                seen += 1
                if child.accept_string(b'"'):
                    done = prefix + ch + b'"'
                    return done if sim.accept_string(done) else None
                nxt.append((child, prefix + ch))
                child = state.fork()
        frontier = nxt
    return None


def completion_text(
    matcher: Any, lex: JsonLex, finished: Any, fallback: Any, bounds: Bounds
) -> bytes:
    """Bytes that take a fork of `matcher` to the end. `finished(sim)` says when the
    grammar is complete; `fallback(sim)` gives some allowed bytes when no listed
    character fits. Raises PlanError beyond `bounds`."""
    sim = matcher.fork()
    lex = lex.copy()
    out = bytearray()
    deadline = time.monotonic() + bounds.seconds
    while not finished(sim):
        if len(out) > bounds.max_chars or time.monotonic() > deadline:
            raise PlanError(f"no completion within {bounds.max_chars} characters")
        forced = sim.find_jump_forward_string().encode()
        if forced and sim.accept_string(forced):
            out += forced
            lex.feed(forced)
            continue
        if lex.in_str and not lex.escape:
            closing = _close_string(sim, deadline)
            if closing is not None:
                out += closing
                lex.feed(closing)
                continue
        order = _INSIDE if lex.in_str else _OUTSIDE
        for ch in (*order, *_FALLBACK):
            if sim.accept_string(ch):
                break
        else:
            ch = fallback(sim)
            if not ch or not sim.accept_string(ch):
                raise PlanError("the grammar allows no further text")
        out += ch
        lex.feed(ch)
    return bytes(out)


def _greedy_tokens(
    sim: Any, text: bytes, by_bytes: dict[bytes, int], longest: int, lex: JsonLex | None
) -> list[int]:
    """`text` cut greedily into the longest tokens `sim` accepts. With `lex` (the JSON
    state where `text` starts), a token outside strings may also carry one leading space
    the grammar allows there: SentencePiece and byte-level vocabularies merge `▁{"name":`,
    not `{"name":`, and a grammar that allows any whitespace gets a plan text without it."""
    tokens: list[int] = []
    pos = 0
    while pos < len(text):
        for n in range(min(longest, len(text) - pos), 0, -1):
            piece = text[pos : pos + n]
            spaced = lex is not None and not lex.in_str
            for word in (piece, b" " + piece) if spaced else (piece,):
                tok = by_bytes.get(word)
                if tok is not None and sim.accept_token(tok):
                    break
            else:
                continue
            tokens.append(tok)
            if lex is not None:
                lex.feed(piece)
            pos += n
            break
        else:
            raise PlanError(f"no token for {text[pos : pos + 8]!r}")
    return tokens


def tokenize_plan(
    matcher: Any,
    text: bytes,
    by_bytes: dict[bytes, int],
    longest: int,
    stop_ids: list[int],
    done: Any,
    lex: JsonLex | None = None,
) -> list[int]:
    """`text` as the fewest tokens (greedy longest match) a fork of `matcher` accepts,
    then a stop token if the grammar is not over yet. Given the JSON state `lex`, tokens
    may add a space outside strings where the grammar allows it (fewer tokens); if that
    leads nowhere, the text is cut as it is."""
    sim = matcher.fork()
    try:
        tokens = _greedy_tokens(sim, text, by_bytes, longest, lex.copy() if lex else None)
    except PlanError:
        if lex is None:
            raise
        sim = matcher.fork()
        tokens = _greedy_tokens(sim, text, by_bytes, longest, None)
    if not done(sim):
        for stop in stop_ids:
            if sim.accept_token(stop):
                tokens.append(stop)
                break
        else:
            raise PlanError("the grammar does not end after the completion")
    return tokens
