"""RAG: answers with sources, with a scripted model (content) and the tiny local model."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import SystemMessage

import chatbot
from chains import kb
from chains.ingest import ingest
from chains.rag import build_rag_chain
from tests.chains_fakes import RecordingModel, data_dir, write_pdf  # noqa: F401 - fixture
from tests.test_chains_kb import write_corpus


@pytest.fixture
def docs_kb(data_dir, tmp_path):  # noqa: F811
    ingest("docs", [write_corpus(tmp_path / "docs")], embeddings="minilm")
    return "docs"


def test_rag_returns_answer_and_sources(docs_kb):
    model = RecordingModel()
    chain = build_rag_chain(model=model, store=docs_kb, k=2)
    out = chain.invoke({"question": "Which fruit is yellow?"})

    assert out["answer"] == "reply 1 to: Which fruit is yellow?"
    first = out["sources"][0]
    assert Path(first["source"]).name == "fruit.txt"
    assert (first["page"], first["start_line"], first["end_line"]) == (None, 1, 1)
    assert "Bananas" in first["snippet"]
    assert len(out["sources"]) == 2
    # The model saw the retrieved passage, numbered and labelled with its source.
    system = model.received[0][0]
    assert isinstance(system, SystemMessage)
    assert "[1] (" in system.text and "fruit.txt, lines 1-1" in system.text
    assert "Bananas are long yellow fruit" in system.text


def test_rag_accepts_a_vector_store_and_a_plain_string(docs_kb):
    store = kb.open_store(docs_kb)
    chain = build_rag_chain(model=RecordingModel(), store=store, k=1)
    out = chain.invoke("the red planet")
    assert [Path(s["source"]).name for s in out["sources"]] == ["space.md"]


def test_rag_streams_sources_then_answer(docs_kb):
    chain = build_rag_chain(model=RecordingModel(), store=docs_kb, k=1)
    chunks = list(chain.stream({"question": "how to bake bread"}))
    assert "sources" in chunks[0] and Path(chunks[0]["sources"][0]["source"]).name == (
        "cooking.html"
    )
    answer = "".join(c.get("answer", "") for c in chunks)
    assert answer == "reply 1 to: how to bake bread"


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-plain"])
def test_rag_with_every_local_test_model(docs_kb, name):
    # tiny-plain's chat template has no system role: the context must still get through.
    chain = build_rag_chain(model=name, store=docs_kb)
    out = chain.invoke({"question": "Which fruit is yellow?"})
    assert isinstance(out["answer"], str) and out["answer"]
    assert Path(out["sources"][0]["source"]).name == "fruit.txt"


def test_rag_drops_passages_that_do_not_fit_the_context(data_dir, tmp_path):  # noqa: F811
    # The tiny model has a 1024-token window: 4 long passages cannot all fit.
    root = tmp_path / "big"
    root.mkdir()
    for i in range(4):
        (root / f"part{i}.txt").write_text(f"Topic {i} about dogs and cats. " * 25)
    ingest("big", [root], embeddings="minilm")
    tiny = chatbot.get_chat_model("tiny")
    out = build_rag_chain(model=tiny, store="big", k=4).invoke({"question": "dogs"})
    assert 1 <= len(out["sources"]) < 4
    assert out["answer"]


def test_rag_bad_input(docs_kb):
    with pytest.raises(kb.UnknownKB):
        build_rag_chain(model=RecordingModel(), store="missing")
    with pytest.raises(ValueError, match="store"):
        build_rag_chain(model=RecordingModel())
    chain = build_rag_chain(model=RecordingModel(), store=docs_kb)
    with pytest.raises(ValueError, match="question"):
        chain.invoke({"question": "  "})


def test_pdf_sources_name_the_page(data_dir, tmp_path):  # noqa: F811
    pdf = write_pdf(
        tmp_path / "book.pdf",
        [
            ["Preface.", "This book is about the animals of the forest."],
            ["Chapter 2: Birds.", "Owls hunt at night, flying in silence.", "They eat mice."],
        ],
    )
    ingest("books", [pdf], embeddings="minilm")
    out = build_rag_chain(model=RecordingModel(), store="books", k=1).invoke(
        "Which bird hunts at night?"
    )
    assert out["sources"] == [
        {
            "source": str(pdf.resolve()),
            "page": 2,
            "start_line": 1,
            "end_line": 3,
            "snippet": "Chapter 2: Birds.\nOwls hunt at night, flying in silence.\nThey eat mice.",
        }
    ]
