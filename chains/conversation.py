"""Chat with memory: history per session id, persisted (SQLite in data_dir by default).

    chat = build_conversation_chain("tiny", system_prompt="You are terse.")
    chat.invoke({"input": "Hi, I'm Ana", "session_id": "ana"})
    for chunk in chat.stream({"input": "Who am I?", "session_id": "ana"}): ...

The whole history is kept in the database; what the model sees is trimmed to its
context window by token count (newest turns first, the system prompt always kept).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    BaseMessageChunk,
    HumanMessage,
    SystemMessage,
    message_chunk_to_message,
    trim_messages,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator, RunnableLambda
from pydantic import BaseModel, Field

from chains.rag import chat_model
from chains.tokens import DEFAULT_CONTEXT, context_window, output_reserve, token_counter
from chatbot.settings import Settings, get_settings

_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()
MAX_SESSION_ID = 256


def history_url(settings: Settings | None = None) -> str:
    """settings.history_db, or a SQLite file in settings.data_dir (default settings: the
    process's)."""
    settings = settings or get_settings()
    if settings.history_db:
        return settings.history_db
    data = Path(settings.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data / 'chat_history.sqlite'}"


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    with _engines_lock:  # one connection pool per database, shared by all sessions
        if url not in _engines:
            _engines[url] = create_engine(url)
        return _engines[url]


@functools.cache
def _sql_history_class() -> type:
    from langchain_community.chat_message_histories import SQLChatMessageHistory

    class SQLHistory(SQLChatMessageHistory):
        """LangChain's SQL history; its async methods need an async engine, so with a
        sync engine they run the sync ones in a thread (the server calls them)."""

        async def aget_messages(self) -> list[BaseMessage]:
            if self.async_mode:
                return await super().aget_messages()
            return await asyncio.to_thread(lambda: self.messages)

        async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
            if self.async_mode:
                return await super().aadd_messages(messages)
            await asyncio.to_thread(self.add_messages, messages)

        async def aclear(self) -> None:
            if self.async_mode:
                return await super().aclear()
            await asyncio.to_thread(self.clear)

    return SQLHistory


def check_session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not session_id.strip():
        raise ValueError("session_id: must be a non-empty string")
    if len(session_id) > MAX_SESSION_ID:
        raise ValueError(f"session_id: at most {MAX_SESSION_ID} characters")
    return session_id


def get_history(session_id: str, url: str | None = None) -> BaseChatMessageHistory:
    """The persisted history of one session (created on first use)."""
    check_session_id(session_id)
    engine = _engine(url or history_url())
    with _engines_lock:  # its constructor creates the table if missing: not concurrently
        return _sql_history_class()(session_id=session_id, connection=engine)


class ConversationInput(BaseModel):
    input: str = Field(min_length=1, description="The user's message.")
    session_id: str | None = Field(
        None, description="Conversation id (or config['configurable']['session_id'])."
    )


class _Conversation(RunnableGenerator):
    """Streams like a generator; invoke returns one AIMessage (not a merged chunk)."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return message_chunk_to_message(super().invoke(input, config, **kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return message_chunk_to_message(await super().ainvoke(input, config, **kwargs))


def build_conversation_chain(
    model: BaseChatModel | str | None = None,
    *,
    system_prompt: str | None = None,
    get_session_history: Callable[[str], BaseChatMessageHistory] = get_history,
    max_input_tokens: int | None = None,
) -> Runnable:
    """A chat chain with memory. Input `{"input": "...", "session_id": "..."}` (or the
    session id in `config["configurable"]["session_id"]`); output the model's AIMessage.
    The turn is saved once the answer is complete (a failed turn leaves no trace)."""
    llm = chat_model(model)
    budget = max_input_tokens or (context_window(llm) or DEFAULT_CONTEXT) - output_reserve(llm)
    if budget <= 0:
        raise ValueError(f"max_input_tokens: the model leaves no room for input ({budget})")
    trim = trim_messages(
        max_tokens=budget,
        token_counter=token_counter(llm),
        strategy="last",
        start_on="human",  # never start with a dangling AI or tool message
        include_system=True,
        allow_partial=False,
    )

    def fit(messages: Any) -> list[BaseMessage]:
        kept = trim.invoke(messages)
        if not any(isinstance(m, HumanMessage) for m in kept):
            raise ValueError(
                f"input: the message does not fit the model's context window "
                f"({budget} tokens for input)"
            )
        return kept

    head = [SystemMessage(system_prompt)] if system_prompt else []
    prompt = ChatPromptTemplate.from_messages(
        [*head, MessagesPlaceholder("history"), ("human", "{input}")]
    )
    answer: Runnable = prompt | RunnableLambda(fit, name="trim_to_context") | llm

    def turn(value: Any, config: RunnableConfig) -> tuple[str, BaseChatMessageHistory]:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        data = value if isinstance(value, dict) else {"input": value}
        text = data.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("input: must be a non-empty string")
        sid = data.get("session_id") or (config.get("configurable") or {}).get("session_id")
        return text, get_session_history(check_session_id(sid))

    def run(inputs: Iterator[Any], config: RunnableConfig) -> Iterator[BaseMessageChunk]:
        text, history = turn(list(inputs)[-1], config)
        reply = None
        for chunk in answer.stream({"input": text, "history": history.messages}, config):
            reply = chunk if reply is None else reply + chunk
            yield chunk
        history.add_messages([HumanMessage(text), message_chunk_to_message(reply)])

    async def arun(
        inputs: AsyncIterator[Any], config: RunnableConfig
    ) -> AsyncIterator[BaseMessageChunk]:
        text, history = turn([v async for v in inputs][-1], config)
        reply = None
        past = await history.aget_messages()
        async for chunk in answer.astream({"input": text, "history": past}, config):
            reply = chunk if reply is None else reply + chunk
            yield chunk
        await history.aadd_messages([HumanMessage(text), message_chunk_to_message(reply)])

    return _Conversation(run, arun, name="conversation").with_types(
        input_type=ConversationInput, output_type=AIMessage
    )


# --- listing (the web page's sidebar) ----------------------------------------------


class SessionInfo(BaseModel):
    session_id: str
    title: str = Field(description="The start of the first user message.")
    messages: int


def list_sessions(url: str | None = None, limit: int = 200) -> list[SessionInfo]:
    """Stored conversations, most recently active first."""
    import json

    from sqlalchemy import text

    get_history("-", url)  # creates the table if there is none yet
    query = text(
        "SELECT session_id, COUNT(*) AS n, MAX(id) AS last, "
        "(SELECT message FROM message_store f WHERE f.session_id = m.session_id "
        " ORDER BY id LIMIT 1) AS first "
        "FROM message_store m GROUP BY session_id ORDER BY last DESC LIMIT :limit"
    )
    with _engine(url or history_url()).connect() as conn:
        rows = conn.execute(query, {"limit": limit}).fetchall()
    out = []
    for sid, count, _, first in rows:
        try:
            content = json.loads(first)["data"]["content"]
        except (ValueError, KeyError, TypeError):
            content = ""
        title = content if isinstance(content, str) else str(content)
        out.append(SessionInfo(session_id=sid, title=title[:80], messages=count))
    return out
