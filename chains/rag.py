"""Retrieval-augmented answers that say where they come from.

    chain = build_rag_chain(model="tiny", store="docs")       # a knowledge base by name
    out = chain.invoke({"question": "What does the CLI do?"})
    out["answer"], out["sources"]  # sources: [{"source", "page", "start_line", "end_line", ...}]

`stream()` yields `{"sources": [...]}` first, then `{"answer": "<token>"}` chunks.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import VectorStore
from pydantic import BaseModel, Field

from chains.tokens import context_window, output_reserve, token_counter

SYSTEM_PROMPT = (
    "Answer the user's question using only the numbered context below, and cite the "
    "passages you used as [1], [2], ... If the context does not contain the answer, say "
    "that you don't know.\n\nContext:\n{context}"
)


class Source(BaseModel):
    """Where a passage of the answer's context comes from."""

    source: str = Field(description="File path (or URL) of the document.")
    page: int | None = Field(None, description="1-based page, for PDFs.")
    start_line: int | None = None
    end_line: int | None = None
    snippet: str = Field("", description="The start of the passage.")


class RagInput(BaseModel):
    question: str = Field(min_length=1)


class RagOutput(BaseModel):
    answer: str
    sources: list[Source]


def to_sources(docs: list[Document]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        meta = doc.metadata
        out.append(
            Source(
                source=str(meta.get("source", "")),
                page=meta.get("page"),
                start_line=meta.get("start_line"),
                end_line=meta.get("end_line"),
                snippet=doc.page_content[:200],
            ).model_dump()
        )
    return out


def _label(doc: Document) -> str:
    meta = doc.metadata
    where = str(meta.get("source", "?"))
    if meta.get("page"):
        where += f", page {meta['page']}"
    if meta.get("start_line"):
        where += f", lines {meta['start_line']}-{meta.get('end_line', meta['start_line'])}"
    return where


def format_context(docs: list[Document]) -> str:
    return "\n\n".join(f"[{i}] ({_label(d)})\n{d.page_content}" for i, d in enumerate(docs, 1))


def fit_docs(model: BaseChatModel, docs: list[Document], question: str) -> list[Document]:
    """Drop the lowest-ranked passages until the prompt fits the model's context window."""
    window = context_window(model)
    if window is None:
        return docs
    budget = window - output_reserve(model)
    count = token_counter(model)
    kept = list(docs)
    while kept:
        system = SystemMessage(SYSTEM_PROMPT.format(context=format_context(kept)))
        if count([system, HumanMessage(question)]) <= budget:
            break
        kept.pop()
    return kept


def chat_model(model: BaseChatModel | str | None) -> BaseChatModel:
    if isinstance(model, BaseChatModel):
        return model
    from chatbot.factory import get_chat_model

    return get_chat_model(model)


def retriever_for(
    store: VectorStore | BaseRetriever | str,
    embeddings: Embeddings | str | None = None,
    k: int = 4,
) -> BaseRetriever:
    """A retriever from a vector store, a retriever, or a knowledge-base name."""
    if isinstance(store, BaseRetriever):
        return store
    if isinstance(store, str):
        from chains.kb import open_store

        store = open_store(store, embeddings)
    if isinstance(store, VectorStore):
        return store.as_retriever(search_kwargs={"k": k})
    raise TypeError(f"store: expected a VectorStore, retriever or KB name, got {type(store)}")


def build_rag_chain(
    model: BaseChatModel | str | None = None,
    embeddings: Embeddings | str | None = None,
    store: VectorStore | BaseRetriever | str | None = None,
    *,
    k: int = 4,
) -> Runnable:
    """retrieve -> prompt -> answer; input `{"question"}` (or a string), output
    `{"answer", "sources"}`. `model`: a chat model or registry name (default model);
    `store`: a VectorStore, a retriever or a knowledge-base name; `embeddings`: overrides
    the KB's recorded embeddings model when `store` is a name."""
    if store is None:
        raise ValueError("store: give a knowledge-base name, a VectorStore or a retriever")
    llm = chat_model(model)
    retriever = retriever_for(store, embeddings, k)
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", "{question}")])

    def normalize(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"question": value}
        if isinstance(value, BaseModel):
            value = value.model_dump()
        question = value.get("question") if isinstance(value, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question: must be a non-empty string")
        return {"question": question}

    def fit(x: dict[str, Any]) -> list[Document]:
        return fit_docs(llm, x["docs"], x["question"])

    chain = (
        RunnableLambda(normalize)
        | RunnablePassthrough.assign(docs=itemgetter("question") | retriever)
        | RunnablePassthrough.assign(docs=RunnableLambda(fit))
        | RunnablePassthrough.assign(
            context=lambda x: format_context(x["docs"]), sources=lambda x: to_sources(x["docs"])
        )
        | RunnablePassthrough.assign(answer=prompt | llm | StrOutputParser())
    ).pick(["answer", "sources"])
    return chain.with_types(input_type=RagInput, output_type=RagOutput).with_config(run_name="rag")
