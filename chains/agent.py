"""A tool-calling agent on LangChain's `create_agent` (a LangGraph graph), any chat model
that supports `bind_tools`.

    agent = build_agent("tiny", tools=[my_tool], kb="docs")
    for step in stream_steps(agent, "What is 6*7?"):
        print(step)   # {"type": "tool_call" | "tool_result" | "answer", ...}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from chains.rag import chat_model
from chains.tools import BUILTIN_TOOLS, kb_search_tool

if TYPE_CHECKING:
    from chatbot.settings import Settings

SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the tools when they help: the calculator for any "
    "arithmetic, current_time for dates and times, and the knowledge-base search (if "
    "available) for questions about the user's documents. Answer concisely."
)


def build_agent(
    model: BaseChatModel | str | None = None,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    *,
    kb: str | None = None,
    builtin: bool = True,
    system_prompt: str | None = SYSTEM_PROMPT,
    first_tool_choice: str | None = None,
    settings: Settings | None = None,
    **agent_kwargs: Any,
) -> Any:
    """`create_agent` with the built-in tools (calculator, current time, and KB search if
    `kb` is given) plus `tools` (LangChain tools or plain typed, documented functions).
    Returns the compiled graph: `invoke({"messages": [...]})`, `stream(...)`.

    `first_tool_choice` ("required" or a tool name) forces a tool call on the first model
    turn only - small local models rarely choose tools on their own. `settings`: where the
    KB lives (default: the process's settings)."""
    all_tools: list[BaseTool | Callable[..., Any]] = list(BUILTIN_TOOLS) if builtin else []
    if kb is not None:
        from chains.kb import read_manifest

        read_manifest(kb, settings)  # an unknown KB is an error now, not at the first question
        all_tools.append(kb_search_tool(kb, settings=settings))
    all_tools.extend(tools)
    names = [getattr(t, "name", getattr(t, "__name__", "")) for t in all_tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"tools: duplicate tool names {dupes}")
    middleware = list(agent_kwargs.pop("middleware", ()))
    if first_tool_choice is not None:
        middleware.append(_force_first_tool(first_tool_choice))
    return create_agent(
        chat_model(model),
        tools=all_tools,
        system_prompt=system_prompt,
        middleware=middleware,
        **agent_kwargs,
    )


def _force_first_tool(choice: str) -> Any:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest

    def first_turn(request: ModelRequest) -> ModelRequest:
        # Only before any tool ran: forcing every turn would loop until the step limit.
        if any(isinstance(m, ToolMessage) for m in request.messages):
            return request
        return request.override(tool_choice=choice)

    class ForceFirstTool(AgentMiddleware):
        def wrap_model_call(self, request: ModelRequest, handler: Callable) -> Any:
            return handler(first_turn(request))

        async def awrap_model_call(self, request: ModelRequest, handler: Callable) -> Any:
            return await handler(first_turn(request))

    return ForceFirstTool()


def _steps(update: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Turn one graph update (node -> new state) into readable steps."""
    for state in update.values():
        messages: list[BaseMessage] = (
            (state or {}).get("messages", []) if isinstance(state, dict) else []
        )
        for msg in messages:
            if isinstance(msg, AIMessage) and msg.tool_calls:
                for call in msg.tool_calls:
                    yield {
                        "type": "tool_call",
                        "name": call["name"],
                        "args": call["args"],
                        "id": call.get("id"),
                    }
            elif isinstance(msg, AIMessage):
                yield {"type": "answer", "content": msg.text}
            elif isinstance(msg, ToolMessage):
                yield {
                    "type": "tool_result",
                    "name": msg.name,
                    "content": msg.text,
                    "id": msg.tool_call_id,
                }


def _input(question: str | list[BaseMessage]) -> dict[str, Any]:
    return {"messages": [HumanMessage(question)] if isinstance(question, str) else question}


def stream_steps(agent: Any, question: str | list[BaseMessage]) -> Iterator[dict[str, Any]]:
    """Each step as it happens: tool calls, tool results, then the answer."""
    for update in agent.stream(_input(question), stream_mode="updates"):
        yield from _steps(update)


async def astream_steps(
    agent: Any, question: str | list[BaseMessage]
) -> AsyncIterator[dict[str, Any]]:
    async for update in agent.astream(_input(question), stream_mode="updates"):
        for step in _steps(update):
            yield step


class AgentInput(BaseModel):
    input: str = Field(min_length=1, description="The user's request.")


class AgentOutput(BaseModel):
    output: str
    steps: list[dict[str, Any]]


def agent_runnable(agent: Any) -> Runnable:
    """`{"input"}` -> `{"output", "steps"}` around the graph, for LangServe routes (their
    stream_events shows each model token and tool run as it happens)."""

    def to_state(value: Any) -> dict[str, Any]:
        text = value.get("input") if isinstance(value, dict) else getattr(value, "input", value)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("input: must be a non-empty string")
        return _input(text)

    def to_output(state: dict[str, Any]) -> dict[str, Any]:
        messages = state["messages"]
        start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        steps = [s for m in messages[start + 1 :] for s in _steps({"": {"messages": [m]}})]
        answer = messages[-1].text if isinstance(messages[-1], AIMessage) else ""
        return {"output": answer, "steps": [s for s in steps if s["type"] != "answer"]}

    # One call into the graph (not a streamed sequence): its output is the final state;
    # the config carries the callbacks, so stream_events still sees every inner step.
    def run(value: Any, config: RunnableConfig) -> dict[str, Any]:
        return to_output(agent.invoke(to_state(value), config=config))

    async def arun(value: Any, config: RunnableConfig) -> dict[str, Any]:
        return to_output(await agent.ainvoke(to_state(value), config=config))

    chain = RunnableLambda(run, afunc=arun, name="agent")
    return chain.with_types(input_type=AgentInput, output_type=AgentOutput).with_config(
        run_name="agent"
    )
