"""Knowledge-base faults (issue 17): concurrent ingests from two processes, files in other
encodings, binary files with text suffixes, empty files, and `--strict`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import filelock
import pytest
from typer.testing import CliRunner

import chains.ingest
from chains import kb
from chains.ingest import ingest
from chatbot.cli import app
from tests.chains_fakes import data_dir  # noqa: F401 - fixture

# Not UTF-8: each in a legacy encoding charset-normalizer tells apart.
LEGACY = {
    "russian.txt": (
        "Москва - столица России, крупнейший по численности населения город "
        "страны. Город расположен на реке Москве.\n",
        "cp1251",
    ),
    "japanese.md": (
        "東京は日本の首都であり、世界最大級の都市圏を形成している。"
        "多くの企業や大学が集まっている。\n",
        "shift_jis",
    ),
    "german.txt": (
        "Der Kölner Dom ist eine römisch-katholische Kirche in Köln. Er ist eines "
        "der größten Bauwerke gotischer Architektur und gehört zum Weltkulturerbe. "
        "Über sechs Millionen Besucher kommen jährlich.\n",
        "cp1252",
    ),
}


class _Ingest:
    """`chatbot kb ingest` in a subprocess, its output read as it comes."""

    def __init__(self, name: str, path: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatbot.cli",
                "kb",
                "ingest",
                name,
                str(path),
                "--embeddings",
                "minilm",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.lines: list[str] = []
        self.waiting = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "waiting for another ingest" in line:
                self.waiting.set()

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=300)
        self.reader.join(timeout=30)
        return code, "".join(self.lines)


def test_two_processes_ingesting_into_one_kb_lose_nothing(data_dir, tmp_path):  # noqa: F811
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("Owls hunt at night and see well in the dark.\n")
    two.write_text("Camels store fat in their humps and cross deserts.\n")
    kb.kb_root().mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(kb.kb_root() / ".animals.lock"):
        # Both start while the KB is locked: each says it waits, then they take turns.
        ingests = [_Ingest("animals", one), _Ingest("animals", two)]
        for ingest in ingests:
            if not ingest.waiting.wait(240):
                pytest.fail(f"never waited for the lock: {ingest.finish()}")
    results = [ingest.finish() for ingest in ingests]
    assert [code for code, _ in results] == [0, 0], results
    files = kb.read_manifest("animals").files
    assert {Path(f).name for f in files} == {"one.txt", "two.txt"}, results
    assert "Camels" in kb.search("animals", "desert animal", k=1)[0].page_content
    assert "Owls" in kb.search("animals", "night bird", k=1)[0].page_content


def test_a_locked_kb_fails_clearly_after_the_timeout(data_dir, tmp_path):  # noqa: F811
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text.\n")
    kb.kb_root().mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(kb.kb_root() / ".busy.lock"):
        with pytest.raises(kb.KBError, match="being changed by another process"):
            ingest("busy", [doc], embeddings="minilm", lock_timeout=0.2)
        result = CliRunner().invoke(
            app,
            ["kb", "ingest", "busy", str(doc), "--embeddings", "minilm", "--lock-timeout", "0.2"],
        )
    assert result.exit_code == 1 and "another process" in result.output, result.output
    assert kb.list_kbs() == []


def _mixed(root: Path) -> Path:
    root.mkdir()
    for name, (text, encoding) in LEGACY.items():
        (root / name).write_bytes(text.encode(encoding))
    (root / "utf16.md").write_bytes("# Köln\n\nDer Dom steht in Köln.\n".encode("utf-16"))
    (root / "plain.txt").write_text("Penguins cannot fly but swim fast.\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_text("  \n\n")
    (root / "blob.py").write_bytes(bytes(range(256)) * 40)  # binary with a text suffix
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(512))
    return root


def test_encodings_binaries_and_empty_files(data_dir, tmp_path):  # noqa: F811
    root = _mixed(tmp_path / "mixed")
    report = ingest("mixed", [root], embeddings="minilm")
    added = sorted(Path(p).name for p in report.added)
    assert added == ["german.txt", "japanese.md", "plain.txt", "russian.txt", "utf16.md"]
    skipped = {Path(p).name: why for p, why in report.skipped.items()}
    assert set(skipped) == {"empty.txt", "blank.md", "blob.py", "image.txt"}
    assert "binary" in skipped["blob.py"] and "binary" in skipped["image.txt"]
    assert "no text" in skipped["empty.txt"] and "no text" in skipped["blank.md"]
    texts = {
        Path(d.metadata["source"]).name: d.page_content for d in kb.search("mixed", "city", k=10)
    }
    for name, (text, _) in LEGACY.items():
        assert texts[name] == text.strip(), (name, texts[name])
    assert "Der Dom steht in Köln." in texts["utf16.md"]


def test_strict_keeps_all_or_nothing(data_dir, tmp_path):  # noqa: F811
    root = _mixed(tmp_path / "mixed")
    with pytest.raises(kb.IngestError, match="blank.md|blob.py|empty.txt|image.txt"):
        ingest("strict", [root], embeddings="minilm", strict=True)
    assert kb.list_kbs() == []
    result = CliRunner().invoke(
        app, ["kb", "ingest", "strict", str(root), "--embeddings", "minilm", "--strict"]
    )
    assert result.exit_code == 1 and "error:" in result.output
    result = CliRunner().invoke(
        app, ["kb", "ingest", "lenient", str(root), "--embeddings", "minilm"]
    )
    assert result.exit_code == 0, result.output
    assert "5 added" in result.output and "4 skipped" in result.output
    assert "warning: skipped" in result.output and "blob.py" in result.output
    assert "note: skipped" in result.output and "empty.txt" in result.output


def test_big_file_is_split_in_blocks_with_right_line_numbers(data_dir, tmp_path, monkeypatch):  # noqa: F811
    from chains import loaders

    monkeypatch.setattr(loaders, "BLOCK_CHARS", 4096)  # many blocks from a small file
    lines = [f"line {i}: the number {i} squared is {i * i}." for i in range(1, 3001)]
    doc = tmp_path / "numbers.txt"
    doc.write_text("\n".join(lines) + "\n")
    chunks = loaders.load_and_split(doc)
    assert len(chunks) > 100
    for chunk in chunks:
        first = int(chunk.page_content.split(":", 1)[0].split()[1])
        assert chunk.metadata["start_line"] == first, chunk.metadata
        last_line = chunk.page_content.rstrip("\n").splitlines()[-1]
        assert chunk.metadata["end_line"] == int(last_line.split(":", 1)[0].split()[1])
    monkeypatch.setattr(chains.ingest, "BATCH", 16)  # several batches per file
    report = ingest("numbers", [doc], embeddings="minilm")
    assert report.chunks == len(chunks)
    ids = kb.read_manifest("numbers").files[str(doc.resolve())].ids
    assert len(ids) == len(set(ids)) == len(chunks)
