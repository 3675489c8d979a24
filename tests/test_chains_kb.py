"""Knowledge bases: retrieval with real MiniLM embeddings, idempotent ingest, write-then-swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_community.vectorstores import FAISS
from langchain_core.vectorstores import InMemoryVectorStore

from chains import kb
from chains.ingest import ingest
from tests.chains_fakes import data_dir  # noqa: F401 - fixture

CORPUS = {
    "fruit.txt": "Bananas are long yellow fruit. They are rich in potassium and grow in "
    "tropical climates.\n",
    "space.md": "# Mars\n\nMars is the fourth planet from the Sun, a cold red desert world "
    "with two small moons.\n",
    "cooking.html": "<html><head><title>Bread</title></head><body><h1>Baking bread</h1>"
    "<p>Knead the dough with flour, water, yeast and salt, then bake it in a hot oven.</p>"
    "</body></html>",
    "net.py": 'def open_socket(host: str, port: int):\n    """Open a TCP network connection '
    'to a server."""\n    import socket\n    return socket.create_connection((host, port))\n',
}


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (root / name).write_text(text)
    return root


def live_version(name: str) -> str:
    return (kb.kb_root() / name / "CURRENT").read_text()


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Which fruit is yellow?", "fruit.txt"),
        ("the red planet and its moons", "space.md"),
        ("how do I bake a loaf with yeast", "cooking.html"),
        ("connect to a TCP server in Python", "net.py"),
    ],
)
def test_retrieval_finds_the_right_document(data_dir, tmp_path, query, expected):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    if not kb.kb_root().joinpath("docs").exists():
        ingest("docs", [corpus], embeddings="minilm")
    top = kb.search("docs", query, k=1)[0]
    assert Path(top.metadata["source"]).name == expected
    assert (
        top.metadata["start_line"] >= 1 and top.metadata["end_line"] >= top.metadata["start_line"]
    )


def test_line_ranges_point_at_the_passage(data_dir, tmp_path):  # noqa: F811
    lines = [f"Line {i}: filler text about nothing in particular, padding." for i in range(1, 60)]
    lines[47] = "Line 48: The secret launch code of the rocket is ALPHA-7."
    doc = tmp_path / "long.txt"
    doc.write_text("\n".join(lines) + "\n")
    ingest("long", [doc], embeddings="minilm")
    hit = kb.search("long", "What is the rocket's secret launch code?", k=1)[0]
    start, end = hit.metadata["start_line"], hit.metadata["end_line"]
    assert start > 1 and start <= 48 <= end
    file_lines = doc.read_text().splitlines()[start - 1 : end]
    assert "\n".join(file_lines).strip() == hit.page_content.strip()


def test_reingest_is_idempotent_and_updates_changed_files(data_dir, tmp_path):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    first = ingest("docs", [corpus], embeddings="minilm")
    assert len(first.added) == 4 and not first.unchanged
    version = live_version("docs")

    again = ingest("docs", [corpus])
    assert not again.added and not again.updated and len(again.unchanged) == 4
    assert again.chunks == first.chunks
    assert live_version("docs") == version  # nothing rewritten

    (corpus / "fruit.txt").write_text("Strawberries are small red berries with seeds outside.\n")
    third = ingest("docs", [corpus / "fruit.txt"])
    assert third.updated == [str((corpus / "fruit.txt").resolve())]
    store = kb.open_store("docs")
    assert isinstance(store, FAISS) and store.index.ntotal == third.chunks == first.chunks
    texts = [d.page_content for d in store.docstore._dict.values()]
    assert not any("Bananas" in t for t in texts)
    assert sum("Strawberries" in t for t in texts) == 1
    top = kb.search("docs", "red berries", k=1)[0]
    assert "Strawberries" in top.page_content


def test_failed_ingest_keeps_the_old_index(data_dir, tmp_path):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    ingest("docs", [corpus], embeddings="minilm")
    version, manifest = live_version("docs"), kb.read_manifest("docs")

    good = tmp_path / "new.txt"
    good.write_text("Penguins live in Antarctica and cannot fly.\n")
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(kb.IngestError, match="broken.pdf"):
        ingest("docs", [good, broken])

    assert live_version("docs") == version
    assert kb.read_manifest("docs") == manifest
    assert str(good.resolve()) not in kb.read_manifest("docs").files
    assert sorted(p.name for p in (kb.kb_root() / "docs").iterdir()) == ["CURRENT", version]
    assert Path(kb.search("docs", "Which fruit is yellow?", k=1)[0].metadata["source"]).name == (
        "fruit.txt"
    )


def test_crash_while_saving_keeps_the_old_index(data_dir, tmp_path, monkeypatch):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    ingest("docs", [corpus], embeddings="minilm")
    version = live_version("docs")
    (corpus / "space.md").write_text("# Venus\n\nVenus is the hottest planet.\n")

    def disk_full(self, folder_path, index_name="index"):
        Path(folder_path, "index.faiss").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FAISS, "save_local", disk_full)
    with pytest.raises(OSError, match="No space"):
        ingest("docs", [corpus])
    monkeypatch.undo()

    assert live_version("docs") == version
    assert sorted(p.name for p in (kb.kb_root() / "docs").iterdir()) == ["CURRENT", version]
    assert "Mars" in kb.search("docs", "planet", k=1)[0].page_content


def test_list_and_delete(data_dir, tmp_path):  # noqa: F811
    assert kb.list_kbs() == []
    corpus = write_corpus(tmp_path / "docs")
    ingest("a", [corpus / "fruit.txt"], embeddings="minilm")
    ingest("b", [corpus], embeddings="minilm")
    assert [(i.name, i.files) for i in kb.list_kbs()] == [("a", 1), ("b", 4)]
    kb.delete_kb("a")
    assert [i.name for i in kb.list_kbs()] == ["b"]
    assert not (kb.kb_root() / "a").exists()
    with pytest.raises(kb.UnknownKB, match="'a'.*known: \\['b'\\]"):
        kb.open_store("a")


def test_bad_input_gives_clear_errors(data_dir, tmp_path):  # noqa: F811
    with pytest.raises(kb.UnknownKB, match="unknown knowledge base 'nope'"):
        kb.search("nope", "anything")
    with pytest.raises(kb.KBError, match="invalid knowledge-base name"):
        ingest("../escape", [tmp_path])
    with pytest.raises(kb.IngestError, match="no such file"):
        ingest("x", [tmp_path / "missing.txt"])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(kb.IngestError, match="unsupported file type '.png'"):
        ingest("x", [tmp_path / "image.png"])
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(kb.IngestError, match="empty.txt: no text found"):
        ingest("x", [tmp_path / "empty.txt"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(kb.IngestError, match="no supported files"):
        ingest("x", [tmp_path / "sub"])
    assert kb.list_kbs() == []  # none of the failures created a KB


def test_empty_kb_is_an_error(data_dir, tmp_path):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    ingest("docs", [corpus / "fruit.txt"], embeddings="minilm")
    live = kb.kb_root() / "docs" / live_version("docs")
    manifest = json.loads((live / "manifest.json").read_text())
    manifest["files"] = {}
    (live / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(kb.EmptyKB, match="'docs' is empty"):
        kb.open_store("docs")


# A server-grade store through LangChain's VectorStore interface: settings.vector_store.
_MEMORY: dict[str, InMemoryVectorStore] = {}


def memory_store(collection, embeddings):
    return _MEMORY.setdefault(collection, InMemoryVectorStore(embeddings))


def test_external_vector_store(data_dir, tmp_path, monkeypatch):  # noqa: F811
    from chatbot.settings import get_settings

    monkeypatch.setenv("CHATBOT_VECTOR_STORE", "tests.test_chains_kb:memory_store")
    get_settings.cache_clear()
    _MEMORY.clear()
    corpus = write_corpus(tmp_path / "docs")
    report = ingest("ext", [corpus], embeddings="minilm")
    assert kb.read_manifest("ext").store == "external"
    assert len(_MEMORY["ext"].store) == report.chunks
    assert not list((kb.kb_root() / "ext").glob("*/index.faiss"))
    assert Path(kb.search("ext", "yellow fruit", k=1)[0].metadata["source"]).name == "fruit.txt"

    (corpus / "fruit.txt").write_text("Cherries are small round red fruit.\n")
    ingest("ext", [corpus])
    texts = [d["text"] for d in _MEMORY["ext"].store.values()]
    assert len(texts) == report.chunks and not any("Bananas" in t for t in texts)
    kb.delete_kb("ext")
    assert len(_MEMORY["ext"].store) == 0
    get_settings.cache_clear()


def test_external_store_failed_ingest_leaves_no_orphans(data_dir, tmp_path, monkeypatch):  # noqa: F811
    from chatbot.settings import get_settings

    monkeypatch.setenv("CHATBOT_VECTOR_STORE", "tests.test_chains_kb:memory_store")
    get_settings.cache_clear()
    _MEMORY.clear()
    corpus = write_corpus(tmp_path / "docs")
    ingest("ext2", [corpus / "fruit.txt"], embeddings="minilm")
    before = dict(_MEMORY["ext2"].store)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not a pdf")
    with pytest.raises(kb.IngestError, match="broken.pdf"):
        ingest("ext2", [corpus / "space.md", broken])  # space.md is added, then rolled back
    assert dict(_MEMORY["ext2"].store) == before
    assert list(kb.read_manifest("ext2").files) == [str((corpus / "fruit.txt").resolve())]
    get_settings.cache_clear()


def test_kbs_live_where_the_callers_settings_say(data_dir, tmp_path):  # noqa: F811
    # The chains take the caller's settings (the CLI's, an app's); the process's settings
    # are only the default. Two data dirs hold two separate sets of knowledge bases.
    from chatbot.settings import get_settings

    other = get_settings().model_copy(update={"data_dir": tmp_path / "elsewhere"})
    corpus = write_corpus(tmp_path / "docs")
    report = ingest("mine", [corpus / "fruit.txt"], embeddings="minilm", settings=other)
    assert report.chunks >= 1
    assert (tmp_path / "elsewhere" / "kb" / "mine" / "CURRENT").is_file()
    assert [i.name for i in kb.list_kbs(other)] == ["mine"]
    assert "mine" not in [i.name for i in kb.list_kbs()]
    with pytest.raises(kb.UnknownKB):
        kb.read_manifest("mine")
    found = kb.search("mine", "yellow fruit", k=1, settings=other)
    assert Path(found[0].metadata["source"]).name == "fruit.txt"
    kb.delete_kb("mine", other)
    assert kb.list_kbs(other) == []
