"""The openai-agents SDK's default Responses model running one tool turn against the
server on the tiny model. openai-agents is installed by the quickstart's
`pip install --no-deps ... openai-agents==0.24.0 griffelib==2.4.1` (not a dev extra:
pip's resolver would downgrade websockets beside our pins); where it is missing this
test skips, and tests/test_api_responses.py drives the same requests by hand."""

from __future__ import annotations

import pytest

agents = pytest.importorskip("agents")


async def test_agent_runs_one_tool_turn(server_url):
    from openai import AsyncOpenAI

    import chatbot

    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather of a city."""
        calls.append(city)
        return "sunny, 21C"

    client = AsyncOpenAI(base_url=f"{server_url}/v1", api_key="x", max_retries=0)
    model = agents.OpenAIResponsesModel(model="tiny", openai_client=client)
    caller = agents.Agent(
        name="weather",
        tools=[get_weather],
        model=model,
        model_settings=agents.ModelSettings(tool_choice="get_weather", max_tokens=40),
        tool_use_behavior="stop_on_first_tool",
    )
    first = await agents.Runner.run(caller, "Weather in Paris?", max_turns=2)
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert first.final_output == "sunny, 21C"
    kinds = [item.type for item in first.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item"]

    # The tool's result goes back as function_call_output. The random tiny model never
    # ends by itself (a response cut by max_output_tokens is an error for the SDK): a
    # bias on its end token ends the answer at once.
    eos = min(chatbot.get_chat_model("tiny").runtime.eos_ids)
    answerer = agents.Agent(
        name="answer",
        model=model,
        model_settings=agents.ModelSettings(
            max_tokens=8, extra_body={"logit_bias": {str(eos): 100}}
        ),
    )
    second = await agents.Runner.run(answerer, first.to_input_list(), max_turns=1)
    assert second.final_output == ""
    alone = await agents.Runner.run(answerer, "Weather in Paris?", max_turns=1)
    used = second.raw_responses[0].usage.input_tokens
    assert used > alone.raw_responses[0].usage.input_tokens  # the call and its result
