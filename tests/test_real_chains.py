"""Chains on the real model: RAG over the README's two notes, a conversation that
remembers, and an agent that calls a tool and answers with its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from chains.agent import build_agent
from chains.conversation import build_conversation_chain, get_history
from chains.ingest import ingest
from chains.rag import build_rag_chain
from tests.chains_fakes import data_dir  # noqa: F401 - fixture

pytestmark = pytest.mark.real_model


def test_rag_answers_from_the_readme_notes(data_dir, tmp_path, smol_engine, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # as in the README: `chatbot kb ingest docs notes/`
    notes = Path("notes")
    notes.mkdir()
    # The README's example notes, as written there.
    (notes / "fruit.md").write_text(
        "# Fruit\n\nBananas are long yellow fruit, rich in potassium.\n"
    )
    (notes / "space.txt").write_text(
        "Mars is the fourth planet from the Sun.\nIt has two small moons.\n"
    )
    ingest("docs", [notes], embeddings="minilm")
    chain = build_rag_chain(
        model=smol_engine.chat_model(temperature=0, max_tokens=40), store="docs"
    )
    out = chain.invoke({"question": "Which fruit is yellow?"})
    assert Path(out["sources"][0]["source"]).name == "fruit.md"
    # The prompt names the files relative to the working directory (chains.rag._where):
    # with the temporary folder's absolute path in it, greedy SmolLM2-135M looped ("the
    # fruit of the fruit of ...") or answered depending on the folder's name.
    assert "banana" in out["answer"].lower(), out["answer"]


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.prompts.append(messages[0])


def test_conversation_recalls_a_name_from_two_turns_earlier(data_dir, smol_engine):  # noqa: F811
    chain = build_conversation_chain(smol_engine.chat_model(temperature=0, max_tokens=24))
    session = {"session_id": "real-1"}
    chain.invoke({"input": "Hi! My name is Alice.", **session})
    chain.invoke({"input": "I live in a small town by the sea.", **session})
    seen = PromptRecorder()
    reply = chain.invoke({"input": "What is my name?", **session}, {"callbacks": [seen]})
    assert len(get_history("real-1").messages) == 6  # three turns kept
    assert any("My name is Alice." in m.content for m in seen.prompts[-1])  # it was told
    if "Alice" not in reply.content:
        # The chain did its part (the history above is in the prompt); the 135M model
        # does not use it. Measured greedily on the same weights, 3 turns of 24 tokens:
        # 1 of 20 combinations of system prompt (none / "Use the user's name when you
        # know it."), introduction ("My name is Alice." / "Hi, I am Alice. ...") and
        # question ("What is my name?", "... Answer with just my name.", "Do you know my
        # name? Tell me.", "Who am I?", "What name did I give you?") names Alice; the
        # usual answer is "... My name is Emily." (the model's own persona).
        pytest.xfail(f"SmolLM2-135M does not recall the name: {reply.content!r}")
    assert "Alice" in reply.content


def lookup_order(order_id: str) -> str:
    """Look up the delivery status of a customer order by its id."""
    return f"Order {order_id} was delivered on 12 March to locker 4781."


def test_agent_calls_a_tool_then_answers_with_its_result(smol_engine):
    # The GGUF's template has no tool support: the tools go in the system prompt.
    # Under tool_choice="auto" this 135M model echoes the tool list instead of calling
    # (seen: "You can use the tool ... # Tools ..."): the first turn is forced, which is
    # what first_tool_choice is for (grammar-constrained, so the call is valid).
    agent = build_agent(
        smol_engine.chat_model(temperature=0, max_tokens=200),
        tools=[lookup_order],
        builtin=False,
        first_tool_choice="lookup_order",
    )
    out = agent.invoke({"messages": [("user", "Where is my order A-17?")]})
    messages = out["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert calls[0]["name"] == "lookup_order" and calls[0]["args"] == {"order_id": "A-17"}
    assert any(isinstance(m, ToolMessage) and "4781" in m.content for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    # The template has no tool roles: the call is shown as prose ("I called
    # lookup_order(...)") and the result as a "Tool result: ..." user turn
    # (model_adapters.messages.fold_tools); shown the bare JSON call, the model repeated it.
    assert "4781" in final.content, final.content
