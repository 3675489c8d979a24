"""Conversation: history per session, persisted in SQLite (read back by a new process),
and trimmed to the model's context window by token count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chains.conversation import build_conversation_chain, get_history
from tests.chains_fakes import RecordingModel, data_dir  # noqa: F401 - fixture

TESTS = Path(__file__).parent


def session(sid: str) -> dict:
    return {"configurable": {"session_id": sid}}


def test_history_is_per_session(data_dir):  # noqa: F811
    model = RecordingModel()
    chat = build_conversation_chain(model, system_prompt="Be brief.")
    chat.invoke({"input": "My name is Ana."}, config=session("ana"))
    chat.invoke({"input": "I like tea."}, config=session("bob"))
    reply = chat.invoke({"input": "What is my name?"}, config=session("ana"))

    assert reply.content == "reply 3 to: What is my name?"
    seen = model.received[-1]
    assert [type(m) for m in seen] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert [m.text for m in seen[1:]] == [
        "My name is Ana.",
        "reply 1 to: My name is Ana.",
        "What is my name?",
    ]
    assert [m.text for m in get_history("bob").messages] == [
        "I like tea.",
        "reply 2 to: I like tea.",
    ]
    assert (data_dir / "chat_history.sqlite").is_file()


def test_history_survives_a_restart(data_dir):  # noqa: F811
    chat = build_conversation_chain(RecordingModel())
    chat.invoke({"input": "Remember the number 7291."}, config=session("s1"))

    script = textwrap.dedent(
        """
        import json
        from tests.chains_fakes import RecordingModel
        from chains.conversation import build_conversation_chain

        model = RecordingModel()
        chat = build_conversation_chain(model)
        chat.invoke({"input": "Which number?"}, config={"configurable": {"session_id": "s1"}})
        print(json.dumps([[m.type, m.text] for m in model.received[0]]))
        """
    )
    env = {
        **os.environ,
        "CHATBOT_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS.parent,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == [
        ["human", "Remember the number 7291."],
        ["ai", "reply 1 to: Remember the number 7291."],
        ["human", "Which number?"],
    ]
    # ...and the new process's turn was saved where this one reads it.
    assert [m.text for m in get_history("s1").messages][-1] == "reply 1 to: Which number?"


def test_history_is_trimmed_to_the_context_window(data_dir):  # noqa: F811
    model = RecordingModel()
    chat = build_conversation_chain(model, system_prompt="SYSTEM", max_input_tokens=120)
    for i in range(12):
        chat.invoke({"input": f"message {i} " + "word " * 20}, config=session("long"))
    seen = model.received[-1]
    assert isinstance(seen[0], SystemMessage)  # the system prompt is always kept
    assert isinstance(seen[1], HumanMessage)  # trimmed on a turn boundary
    assert seen[-1].text.startswith("message 11")
    assert len(seen) < 12 * 2
    assert len(get_history("long").messages) == 24  # the database keeps everything


def test_local_model_trims_with_its_own_tokenizer(data_dir):  # noqa: F811
    import chatbot

    tiny = chatbot.get_chat_model("tiny")
    window = tiny.runtime.context_length
    chat = build_conversation_chain(tiny)
    long = "tell me more about the weather " * 60
    for _ in range(8):  # ~8 x 400+ tokens of history: more than the 1024-token window
        reply = chat.invoke({"input": long}, config=session("tiny"))
        assert isinstance(reply, AIMessage)
    history = get_history("tiny").messages
    assert len(tiny.prompt_ids(history)) > window  # trimming was needed, and it worked


@pytest.mark.parametrize("sid", ["", " ", "x" * 300, None])
def test_bad_session_id(data_dir, sid):  # noqa: F811
    chat = build_conversation_chain(RecordingModel())
    with pytest.raises(ValueError, match="session_id"):
        chat.invoke({"input": "hi"}, config=session(sid))


def test_message_longer_than_the_window(data_dir):  # noqa: F811
    chat = build_conversation_chain(RecordingModel(), max_input_tokens=10)
    with pytest.raises(ValueError, match="does not fit"):
        chat.invoke({"input": "word " * 100}, config=session("x"))
    assert get_history("x").messages == []


async def test_async_invoke_uses_the_same_store(data_dir):  # noqa: F811
    chat = build_conversation_chain(RecordingModel())
    await chat.ainvoke({"input": "async hello"}, config=session("a"))
    assert [m.text for m in get_history("a").messages] == ["async hello", "reply 1 to: async hello"]


def test_streaming_saves_the_turn_when_done(data_dir):  # noqa: F811
    chat = build_conversation_chain(RecordingModel())
    stream = chat.stream({"input": "stream me", "session_id": "st"})
    first = next(stream)
    assert get_history("st").messages == []  # nothing saved mid-answer
    text = first.text + "".join(c.text for c in stream)
    assert text == "reply 1 to: stream me"
    assert [m.text for m in get_history("st").messages] == ["stream me", text]
