"""`chatbot kb ingest|list|delete` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from chains import kb
from chatbot.kb_cli import kb_app
from tests.chains_fakes import data_dir  # noqa: F401 - fixture
from tests.test_chains_kb import write_corpus

runner = CliRunner()


def test_kb_ingest_list_delete(data_dir, tmp_path):  # noqa: F811
    corpus = write_corpus(tmp_path / "docs")
    result = runner.invoke(kb_app, ["ingest", "docs", str(corpus), "--embeddings", "minilm"])
    assert result.exit_code == 0, result.output
    assert "docs: 4 added, 0 updated, 0 unchanged, 0 skipped; 4 chunks" in result.output
    assert [i.name for i in kb.list_kbs()] == ["docs"]

    again = runner.invoke(kb_app, ["ingest", "docs", str(corpus / "fruit.txt")])
    assert again.exit_code == 0 and "0 added, 0 updated, 1 unchanged" in again.output

    listing = runner.invoke(kb_app, ["list"])
    assert listing.exit_code == 0
    assert "docs" in listing.output and "minilm" in listing.output and "faiss" in listing.output

    refused = runner.invoke(kb_app, ["delete", "docs"], input="n\n")
    assert refused.exit_code != 0 and kb.list_kbs()
    deleted = runner.invoke(kb_app, ["delete", "docs", "--yes"])
    assert deleted.exit_code == 0 and "deleted docs" in deleted.output
    assert kb.list_kbs() == []
    assert "no knowledge bases yet" in runner.invoke(kb_app, ["list"]).output


def test_kb_cli_errors(data_dir, tmp_path):  # noqa: F811
    missing = runner.invoke(kb_app, ["ingest", "docs", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 1
    assert "error:" in missing.output and "nope.txt: no such file" in missing.output
    assert "Traceback" not in missing.output

    unknown = runner.invoke(kb_app, ["delete", "ghost", "--yes"])
    assert unknown.exit_code == 1 and "unknown knowledge base 'ghost'" in unknown.output

    bad_emb = runner.invoke(
        kb_app, ["ingest", "docs", str(write_corpus(tmp_path / "d")), "--embeddings", "nope"]
    )
    assert bad_emb.exit_code == 1 and "no embeddings model named 'nope'" in bad_emb.output
    assert kb.list_kbs() == []


def test_kb_is_mounted_in_the_chatbot_cli(data_dir, tmp_path):  # noqa: F811
    from chatbot.cli import app

    corpus = write_corpus(tmp_path / "docs")
    result = runner.invoke(app, ["kb", "ingest", "notes", str(corpus / "space.md")])
    assert result.exit_code == 0, result.output
    assert "notes: 1 added" in result.output
    assert "notes" in runner.invoke(app, ["kb", "list"]).output
