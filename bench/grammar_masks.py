"""Token-mask cost of our JSON grammars against xgrammar's own, side by side in one run.

The strings of json_schema and json_object replies are patterns over explicit character
ranges (model_adapters.call_schema); this prints ms per token to fill the next-token mask
while a reply is accepted token by token, for each grammar, and the ratio to xgrammar's
plain rule for the same kind.

    python bench/grammar_masks.py [--model tiny|PATH|NAME] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import model_dir

REPLY = {"name": 'Zürich 東京 said "hi"\n', "tags": ["a b", "c"], "n": {"deep": "x" * 40}}
STR = {"type": "string"}
OBJ = lambda props: {"type": "object", "properties": props, "required": list(props)}  # noqa: E731
FREE = OBJ({"name": STR, "tags": {"type": "array", "items": STR}, "n": OBJ({"deep": STR})})


def per_token_ms(backend, compiled, ids: list[int], rounds: int) -> float:
    import xgrammar as xgr

    best = float("inf")
    for _ in range(rounds):
        matcher = xgr.GrammarMatcher(compiled)
        start = time.perf_counter()
        for token in ids:
            backend.words(matcher)
            assert matcher.accept_token(token), "the reply left the grammar"
        best = min(best, (time.perf_counter() - start) / len(ids) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoConfig, AutoTokenizer

    from model_adapters.constrained import GuidedConstraint, _backend

    with model_dir(args.model) as folder:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        backend = _backend(tokenizer, AutoConfig.from_pretrained(folder))
    plain = backend.compiler.compile_json_schema
    ours = lambda kind, spec: backend.compile(GuidedConstraint(kind, spec))  # noqa: E731
    rows = [
        ("json_object", plain('{"type": "object"}'), ours("json_object", None)),
        ("json_schema", plain(json.dumps(FREE)), ours("json_schema", FREE)),
    ]
    print(f"{'kind':12} {'xgrammar ms/tok':>16} {'ours ms/tok':>12} {'ratio':>6}")
    text = json.dumps(REPLY, ensure_ascii=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for kind, theirs, mine_g in rows:
        base = per_token_ms(backend, theirs, ids, args.rounds)
        mine = per_token_ms(backend, mine_g, ids, args.rounds)
        print(f"{kind:12} {base:16.3f} {mine:12.3f} {mine / base:6.2f}")


if __name__ == "__main__":
    main()
