"""model_adapters.vllm.budget without vLLM: BudgetedDecode follows the tokens vLLM
would sample (here: a roomy, whitespace-rich reply) and must take over in time to close
within max_tokens, even at max_tokens = the shortest valid reply. vLLM never calls the
matcher's mask(), so the plan has to be measured as tokens are accepted (the bug: it was
first measured with 16 tokens left, too late for a nested object: the reply was cut in
`</tool_`)."""

from __future__ import annotations

import json

import jsonschema
import pytest

import chatbot
from model_adapters.constrained import GuidedConstraint
from model_adapters.tool_parsers import get_parser
from model_adapters.tools import forcing_constraint
from model_adapters.vllm.budget import BudgetedDecode
from tests.structured_cases import SCHEMAS, TOOL, shortest, tool_for

ROOMY = '{ "user": { "name": "Alice Smith", "home": { "city": "Paris" } } }'


@pytest.mark.parametrize("mode", ["json_schema", "tool"])
@pytest.mark.parametrize("extra", [0, 1, 5])
def test_budgeted_decode_closes_within_max_tokens(mode, extra):
    chat = chatbot.get_chat_model("tiny")
    tokenizer, config = chat.runtime.tokenizer, chat.runtime.model.config
    schema = SCHEMAS["nested"]
    need = shortest(chat, schema, mode)
    budget = need + extra
    parser = get_parser(chat.tool_parser, tokenizer, [TOOL])
    if mode == "json_schema":
        constraint = GuidedConstraint("json_schema", schema, max_tokens=budget)
        text = ROOMY
    else:
        constraint = forcing_constraint([tool_for(schema)], TOOL, parser, budget, False)
        text = parser.calls_prefix + parser.call_begin(TOOL) + ROOMY + parser.call_end()
    decode = BudgetedDecode(constraint, tokenizer, config, budget)
    out = ""
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        if not decode.following:
            break
        out += decode.feed([token])
    assert decode.must_close  # the roomy reply does not fit: the grammar took over
    out += decode.close()
    assert decode.finish == "stop" and decode.produced <= budget
    if mode == "json_schema":
        jsonschema.validate(json.loads(out), schema)
    else:
        (call,) = parser.parse(out).tool_calls
        assert call["name"] == TOOL
        jsonschema.validate(call["args"], schema)


# json_object: xgrammar 0.2.8's free-form JSON rule still puts ", " between members with
# separators (",", ":") (the xgrammar bug vLLM's backend notes), so one member per object.
@pytest.mark.parametrize(
    "kind, compact",
    [
        ("json_schema", '{"user":{"name":"Al","home":{"city":"Rome"}}}'),
        ("json_object", '{"user":{"home":{"city":"Rome"}}}'),
    ],
)
def test_compact_mode_follows_vllms_compact_grammar(kind, compact):
    """With vLLM's `disable_any_whitespace`, vLLM compiles with separators (",", ":");
    xgrammar's compact default is (", ", ": "). Our matcher must take vLLM's text (the
    bug: it rejected `{"user":{...`, stopped steering, and tight budgets ended cut)."""
    chat = chatbot.get_chat_model("tiny")
    tokenizer, config = chat.runtime.tokenizer, chat.runtime.model.config
    spec = SCHEMAS["nested"] if kind == "json_schema" else None
    budget = 64
    constraint = GuidedConstraint(kind, spec, max_tokens=budget)
    decode = BudgetedDecode(constraint, tokenizer, config, budget, any_whitespace=False)
    out = decode.feed(tokenizer(compact, add_special_tokens=False)["input_ids"])
    assert not decode.lost and out == compact
    assert decode.matcher.matcher.is_completed()
    spaced = BudgetedDecode(constraint, tokenizer, config, budget, any_whitespace=False)
    spaced.feed(tokenizer('{"user": {', add_special_tokens=False)["input_ids"])
    assert spaced.lost  # vLLM's compact grammar never emits this space either
