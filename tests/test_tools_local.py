"""Tool calling on the tiny local models (random weights): forced calls are grammar-made,
so they are valid calls whatever the weights; round trips go through the chat template."""

from __future__ import annotations

import jsonschema
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

import chatbot
from model_adapters.tools import normalize_tools

MAX = 48  # a forced call in the hermes format needs ~30 tokens from a random model


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city."""
    return f"sunny, 21 degrees {unit} in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TOOLS = [get_weather, add]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in normalize_tools(TOOLS)}


def assert_valid_calls(message: AIMessage, names: set[str]) -> None:
    assert message.tool_calls, (message.content, message.invalid_tool_calls)
    assert not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] in names
        jsonschema.validate(call["args"], SCHEMAS[call["name"]])
        assert call["id"]


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-plain"])
def test_named_tool_choice_forces_a_valid_call(name):
    model = chatbot.get_chat_model(name, max_tokens=MAX)
    reply = model.bind_tools(TOOLS, tool_choice="add").invoke("what is 2 + 3?")
    assert_valid_calls(reply, {"add"})
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    # Tool execution works on the parsed call.
    assert isinstance(add.invoke(reply.tool_calls[0]), ToolMessage)


@pytest.mark.parametrize(
    "choice", ["required", "any", True, {"type": "function", "function": {"name": "get_weather"}}]
)
def test_required_and_openai_style_choices(choice):
    model = chatbot.get_chat_model("tiny", max_tokens=MAX, temperature=1.0, seed=7)
    tools = TOOLS if choice is not True else [get_weather]
    reply = model.bind_tools(tools, tool_choice=choice).invoke("weather in Paris?")
    assert_valid_calls(reply, {"get_weather", "add"})


def test_tool_forms_pydantic_function_and_openai_dict():
    class Lookup(BaseModel):
        """Look a word up."""

        word: str = Field(description="the word")

    def multiply(x: int, y: int) -> int:
        """Multiply two integers."""
        return x * y

    as_dict = {
        "type": "function",
        "function": {
            "name": "echo",
            "description": "Echo text.",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    }
    model = chatbot.get_chat_model("tiny", max_tokens=MAX)
    for schema, name in [(Lookup, "Lookup"), (multiply, "multiply"), (as_dict, "echo")]:
        reply = model.bind_tools([schema], tool_choice=name).invoke("go")
        assert [c["name"] for c in reply.tool_calls] == [name]
        jsonschema.validate(
            reply.tool_calls[0]["args"], normalize_tools([schema])[0]["function"]["parameters"]
        )


def test_stream_yields_tool_call_chunks_as_generated_and_matches_invoke():
    model = chatbot.get_chat_model("tiny", max_tokens=MAX).bind_tools(
        TOOLS, tool_choice="get_weather"
    )
    chunks = list(model.stream("weather in Paris?"))
    with_calls = [c for c in chunks if c.tool_call_chunks]
    assert len(with_calls) >= 3  # header first, then argument pieces
    assert with_calls[0].tool_call_chunks[0]["name"] == "get_weather"
    assert chunks.index(with_calls[0]) < len(chunks) - 1  # before the stream ended
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    reply = model.invoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        (c["name"], c["args"]) for c in reply.tool_calls
    ]
    assert full.response_metadata["finish_reason"] == "tool_calls"


async def test_async_paths_match_sync():
    model = chatbot.get_chat_model("tiny", max_tokens=MAX).bind_tools(TOOLS, tool_choice="add")
    sync = model.invoke("2+2")
    reply = await model.ainvoke("2+2")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        (c["name"], c["args"]) for c in sync.tool_calls
    ]
    full = None
    async for chunk in model.astream("2+2"):
        full = chunk if full is None else full + chunk
    assert [c["args"] for c in full.tool_calls] == [c["args"] for c in sync.tool_calls]


def test_forced_call_that_cannot_fit_max_tokens_is_refused_up_front():
    model = chatbot.get_chat_model("tiny", max_tokens=12)
    with pytest.raises(ValueError, match="max_tokens: 12 is too small") as info:
        model.bind_tools(TOOLS, tool_choice="get_weather").invoke("weather?")
    assert info.value.param == "max_tokens"


def test_call_cut_by_length_is_an_invalid_tool_call_never_a_call():
    """A call cut off (auto tool choice, the budget ran out) is an invalid_tool_call with
    its error for LangChain, and no call (its partial text) in OpenAI's format."""
    from chatbot.api.openai.convert import message_to_openai
    from model_adapters.chat_output import ChatOutput as _Output
    from model_adapters.generation import Delta
    from model_adapters.tool_parsers import get_parser

    output = _Output("tiny", get_parser("hermes", tool_names=["get_weather"]))
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    chunks = output.chunks(Delta(text=text))
    chunks += output.chunks(Delta(finish_reason="length", prompt_tokens=3, completion_tokens=9))
    reply = output.result(chunks).generations[0].message
    assert reply.response_metadata["finish_reason"] == "length"
    assert not reply.tool_calls
    (bad,) = reply.invalid_tool_calls
    assert "unterminated" in bad["error"] and '"get_weather"' in bad["args"]
    wire = message_to_openai(reply)
    assert wire.tool_calls is None and '"get_weather"' in wire.content
    streamed = [c for chunk in chunks for c in chunk.message.tool_call_chunks]
    assert all(c.get("name") for c in streamed if c.get("id"))  # no nameless call headers


@pytest.mark.parametrize("parser", ["hermes", "llama3", "mistral"])
def test_forced_calls_in_each_parser_format_stream_and_parse(parser):
    model = chatbot.get_chat_model("tiny", max_tokens=MAX, tool_parser=parser)
    bound = model.bind_tools(TOOLS, tool_choice="add")
    reply = bound.invoke("2 + 3?")
    assert_valid_calls(reply, {"add"})
    full = None
    for chunk in bound.stream("2 + 3?"):
        assert "[TOOL_CALLS]" not in chunk.content and "<tool_call>" not in chunk.content
        full = chunk if full is None else full + chunk
    assert [c["args"] for c in full.tool_calls] == [c["args"] for c in reply.tool_calls]


def test_unknown_tool_parser_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tool_parser"):
        chatbot.get_chat_model("tiny", tool_parser="nope")
    assert chatbot.get_chat_model("tiny", tool_parser="llama3").tool_parser == "llama3"


def test_tool_choice_none_and_auto_answer_in_text():
    model = chatbot.get_chat_model("tiny", max_tokens=8)
    for choice in ("none", "auto"):
        reply = model.bind_tools(TOOLS, tool_choice=choice).invoke("hello")
        assert not reply.tool_calls and isinstance(reply.content, str)
        assert reply.response_metadata["finish_reason"] in ("stop", "length")


def test_bad_tools_and_tool_choice_are_clear_errors():
    model = chatbot.get_chat_model("tiny")
    with pytest.raises(ValueError, match="tool_choice: no tool named 'nope'"):
        model.bind_tools(TOOLS, tool_choice="nope")
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        model.bind_tools([42])
    with pytest.raises(ValueError, match="tool_choice"):
        model.invoke("hi", tools=[], tool_choice="required")


def _history(model_name: str) -> tuple[list, str]:
    model = chatbot.get_chat_model(model_name, max_tokens=MAX)
    question = HumanMessage("what is the weather in Paris?")
    call = model.bind_tools(TOOLS, tool_choice="get_weather").invoke([question])
    result = get_weather.invoke(call.tool_calls[0])
    return [SystemMessage("be brief"), question, call, result], result.content


@pytest.mark.parametrize("name", ["tiny", "tiny-plain"])
def test_round_trip_tool_calls_and_results_go_back_through_the_template(name):
    model = chatbot.get_chat_model(name, max_tokens=8)
    history, result = _history(name)
    prompt = model.runtime.tokenizer.decode(model.prompt_ids(history, normalize_tools(TOOLS)))
    assert '"name": "get_weather"' in prompt  # the assistant's call, rendered
    assert result in prompt  # the tool's answer
    assert "add" in prompt and "be brief" in prompt  # the tool list and the system text
    if name == "tiny":
        assert "<tool_response>" in prompt and "<tool_call>" in prompt
    else:  # no tool support in the template: tools described in the system prompt
        assert "# Tools" in prompt and "Tool result:" in prompt
    reply = model.bind_tools(TOOLS, tool_choice="none").invoke(history)
    assert isinstance(reply.content, str) and not reply.tool_calls


def test_agent_with_two_tools_forced_call_then_answer():
    """Done-when of issue 4: a LangChain agent runs a forced call and a follow-up answer."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call

    @wrap_model_call
    def force_first_call(request, handler):
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "get_weather"))

    agent = create_agent(
        chatbot.get_chat_model("tiny", max_tokens=MAX), tools=TOOLS, middleware=[force_first_call]
    )
    state = agent.invoke({"messages": [HumanMessage("what is the weather in Paris?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    call, result, answer = state["messages"][1:]
    assert_valid_calls(call, {"get_weather"})
    assert result.tool_call_id == call.tool_calls[0]["id"]
    assert result.content.startswith("sunny, 21 degrees")
    assert not answer.tool_calls and answer.content

    # LangGraph's token stream sees the call as it is generated (callbacks get the chunks).
    streamed = [
        msg
        for msg, _ in agent.stream(
            {"messages": [HumanMessage("weather in Paris?")]}, stream_mode="messages"
        )
    ]
    assert sum(bool(getattr(m, "tool_call_chunks", None)) for m in streamed) >= 3
