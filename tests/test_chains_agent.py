"""Agent: calls tools (built-in and user) and uses their results; safe calculator."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, ToolMessage

from chains import kb
from chains.agent import agent_runnable, astream_steps, build_agent, stream_steps
from chains.ingest import ingest
from chains.tools import calculator, current_time, evaluate
from tests.chains_fakes import ScriptedToolModel, data_dir  # noqa: F401 - fixture
from tests.test_chains_kb import write_corpus


def test_agent_calls_the_calculator_and_uses_its_result():
    model = ScriptedToolModel(tool_name="calculator", tool_args={"expression": "(17 + 4) * 2"})
    agent = build_agent(model)
    steps = list(stream_steps(agent, "What is (17 + 4) * 2?"))

    assert [s["type"] for s in steps] == ["tool_call", "tool_result", "answer"]
    assert steps[1] == {
        "type": "tool_result",
        "name": "calculator",
        "content": "42",
        "id": "call_1",
    }
    assert steps[2]["content"] == "The tool says: 42"
    assert {"calculator", "current_time"} <= set(model.bound_tools)
    # The model's second turn had the tool's real output in front of it.
    assert isinstance(model.received[1][-1], ToolMessage) and model.received[1][-1].text == "42"


def test_agent_uses_a_user_tool():
    def order_status(order_id: str) -> str:
        """Look up the shipping status of an order."""
        return f"order {order_id} shipped on 2024-05-01"

    model = ScriptedToolModel(tool_name="order_status", tool_args={"order_id": "A17"})
    agent = build_agent(model, tools=[order_status], builtin=False)
    result = agent.invoke({"messages": [HumanMessage("Where is order A17?")]})
    assert result["messages"][-1].text == "The tool says: order A17 shipped on 2024-05-01"
    assert model.bound_tools == ["order_status"]


def test_agent_searches_a_knowledge_base(data_dir, tmp_path):  # noqa: F811
    ingest("docs", [write_corpus(tmp_path / "docs")], embeddings="minilm")
    model = ScriptedToolModel(
        tool_name="search_knowledge_base", tool_args={"query": "yellow fruit"}
    )
    answer = list(stream_steps(build_agent(model, kb="docs"), "Tell me about bananas"))[-1]
    assert "Bananas are long yellow fruit" in answer["content"]
    assert "fruit.txt, lines 1-1" in answer["content"]


def test_agent_runnable_for_serving():
    model = ScriptedToolModel(tool_name="calculator", tool_args={"expression": "2 ** 10"})
    out = agent_runnable(build_agent(model)).invoke({"input": "2 to the 10th?"})
    assert out["output"] == "The tool says: 1024"
    assert [s["type"] for s in out["steps"]] == ["tool_call", "tool_result"]
    with pytest.raises(ValueError, match="input"):
        agent_runnable(build_agent(model)).invoke({"input": ""})


async def test_agent_streams_steps_async():
    model = ScriptedToolModel(tool_name="current_time", tool_args={"timezone": "UTC"})
    steps = [s async for s in astream_steps(build_agent(model), "What time is it?")]
    assert steps[1]["name"] == "current_time" and steps[1]["content"][:2] == "20"
    assert steps[-1]["content"].startswith("The tool says: 20")


def test_agent_bad_input():
    model = ScriptedToolModel(tool_name="calculator", tool_args={})
    with pytest.raises(ValueError, match="duplicate tool names"):
        build_agent(model, tools=[calculator])


def test_agent_unknown_kb(data_dir):  # noqa: F811
    with pytest.raises(kb.UnknownKB):
        build_agent(ScriptedToolModel(tool_name="x", tool_args={}), kb="nope")


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ^ 10", 1024),
        ("-7 // 2", -4),
        ("7 % 4", 3),
        ("sqrt(16)", 4.0),
        ("round(pi, 2)", 3.14),
        ("max(3, 9, 4)", 9),
        ("1 / 4", 0.25),
    ],
)
def test_calculator(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    "expression, error",
    [
        ("__import__('os').system('id')", "unsupported"),
        ("().__class__", "unsupported"),
        ("open('/etc/passwd')", "unsupported"),
        ("x + 1", "unsupported"),
        ("2 +", "not an arith"),
        ("10 ** 100000", "exponent"),
        ("(10 ** 5000) ** 9000", "too large"),
        ("factorial(10 ** 6)", "factorial"),
        ("1" * 600, "longer than"),
    ],
)
def test_calculator_refuses_unsafe_or_huge(expression, error):
    with pytest.raises(ValueError, match=error):
        evaluate(expression)
    assert calculator.invoke({"expression": expression}).startswith("error:")


def test_calculator_tool_errors_are_results():
    assert calculator.invoke({"expression": "1 / 0"}) == "error: division by zero"
    assert current_time.invoke({"timezone": "Mars/Olympus"}).startswith("error: unknown time zone")
    assert current_time.invoke({"timezone": "Europe/Paris"})[-6:] in ("+01:00", "+02:00")


@pytest.mark.parametrize("use_async", [False, True])
async def test_agent_on_the_tiny_local_model_with_a_forced_tool(use_async):
    import chatbot

    # Random weights: forcing the first call (grammar-constrained) makes the tool call
    # certain; the model's second turn then has the calculator's real output.
    class Inputs(BaseCallbackHandler):
        seen: list = []

        def on_chat_model_start(self, serialized, messages, **kwargs):
            self.seen.append(messages[0])

    inputs = Inputs()
    tiny = chatbot.get_chat_model("tiny", max_tokens=48, callbacks=[inputs])
    agent = build_agent(tiny, first_tool_choice="calculator")
    if use_async:
        steps = [s async for s in astream_steps(agent, "What is 6 * 7?")]
    else:
        steps = list(stream_steps(agent, "What is 6 * 7?"))
    assert steps[0]["type"] == "tool_call" and steps[0]["name"] == "calculator"
    assert isinstance(steps[0]["args"]["expression"], str)
    result = steps[1]
    assert result["type"] == "tool_result" and result["name"] == "calculator"
    assert result["content"] == calculator.invoke(steps[0]["args"])
    # The model's second turn was given the tool's real output.
    assert len(inputs.seen) >= 2
    fed_back = [m for m in inputs.seen[1] if isinstance(m, ToolMessage)]
    assert fed_back and fed_back[-1].text == result["content"]
