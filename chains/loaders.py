"""Files -> chunks: LangChain document loaders and text splitters, with source locations.

Every chunk carries `source` (absolute path), `page` (1-based, PDFs only) and
`start_line`/`end_line` (1-based, within the page for PDFs) so answers can cite them.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import charset_normalizer
from langchain_core.documents import Document
from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

CHUNK_SIZE = 800
CHUNK_OVERLAP = 100

_CODE = {
    ".py": Language.PYTHON,
    ".js": Language.JS,
    ".jsx": Language.JS,
    ".ts": Language.TS,
    ".tsx": Language.TS,
    ".java": Language.JAVA,
    ".kt": Language.KOTLIN,
    ".go": Language.GO,
    ".rs": Language.RUST,
    ".c": Language.C,
    ".h": Language.C,
    ".cc": Language.CPP,
    ".cpp": Language.CPP,
    ".hpp": Language.CPP,
    ".cs": Language.CSHARP,
    ".rb": Language.RUBY,
    ".php": Language.PHP,
    ".scala": Language.SCALA,
    ".swift": Language.SWIFT,
    ".lua": Language.LUA,
    ".md": Language.MARKDOWN,
    ".markdown": Language.MARKDOWN,
    ".rst": Language.RST,
    ".tex": Language.LATEX,
}
_PLAIN = {".txt", ".text", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".csv", ".sh"}
_HTML = {".html", ".htm"}
SUPPORTED = frozenset({*_CODE, *_PLAIN, *_HTML, ".pdf"})


class LoadError(ValueError):
    """A file that cannot be read or holds no text. The message names the file."""


def collect_files(paths: list[str | Path]) -> list[Path]:
    """Expand directories (recursively, supported types only); explicit files must be supported."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and child.suffix.lower() in SUPPORTED and not hidden:
                    found[child.resolve()] = None
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                raise LoadError(
                    f"{path}: unsupported file type {path.suffix or '(none)'!r} "
                    f"(supported: {' '.join(sorted(SUPPORTED))})"
                )
            found[path.resolve()] = None
        else:
            raise LoadError(f"{path}: no such file or directory")
    return list(found)


class SkippedFile(LoadError):
    """A file with nothing to ingest: binary, or no text in it. Ingest skips it with a
    warning (or fails, with `strict`)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# Text is split in blocks of about this many characters (cut at a line end), so a huge
# file yields its chunks as it goes instead of all at once.
BLOCK_CHARS = 1 << 20
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: Path) -> str:
    """A text file's content in whatever encoding it is in (UTF-8 first, else detected by
    charset-normalizer); SkippedFile for binary or empty files."""
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    if not data.strip():
        raise SkippedFile(path, "no text found (empty file)")
    if b"\0" in data[:8192]:
        raise SkippedFile(path, "binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise SkippedFile(path, "binary file, not text (no text encoding fits it)")
    return str(best)


def _load(path: Path) -> list[Document]:
    from langchain_community.document_loaders import BSHTMLLoader, PyPDFLoader

    suffix = path.suffix.lower()
    if suffix == ".pdf":
        docs = PyPDFLoader(str(path)).load()
        for doc in docs:  # pypdf pages are 0-based; people count from 1
            doc.metadata = {"page": int(doc.metadata.get("page", 0)) + 1}
        return docs
    if suffix in _HTML:
        # The stdlib parser: BeautifulSoup's default (lxml) is not a dependency.
        html = BSHTMLLoader(
            str(path), bs_kwargs={"features": "html.parser"}, get_text_separator="\n"
        )
        docs = html.load()
        for doc in docs:
            doc.metadata = {"title": doc.metadata.get("title") or ""}
        return docs
    return list(_text_blocks(read_text(path)))


def _text_blocks(text: str) -> Iterator[Document]:
    """`text` as documents of about BLOCK_CHARS, cut at line ends; each knows its first line."""
    start, line = 0, 1
    while start < len(text):
        end = len(text)
        if end - start > BLOCK_CHARS:
            cut = text.rfind("\n", start, start + BLOCK_CHARS)
            end = cut + 1 if cut > start else start + BLOCK_CHARS
        block = text[start:end]
        yield Document(page_content=block, metadata={"first_line": line})
        line += block.count("\n")
        start = end


def splitter_for(path: Path) -> RecursiveCharacterTextSplitter:
    lang = _CODE.get(path.suffix.lower())
    kwargs = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "add_start_index": True}
    if lang is not None:
        return RecursiveCharacterTextSplitter.from_language(lang, **kwargs)
    return RecursiveCharacterTextSplitter(**kwargs)


def iter_chunks(path: Path) -> Iterator[Document]:
    """Chunks of one file with source locations, as they are split (text files block by
    block). LoadError if unreadable; SkippedFile if binary or without text."""
    try:
        pages = _load(path)
    except LoadError:
        raise
    except Exception as exc:  # loaders wrap OS/decoding errors in their own types
        cause = exc.__cause__ or exc
        raise LoadError(f"{path}: cannot read: {cause}") from exc
    splitter = splitter_for(path)
    found = 0
    while pages:
        page = pages.pop(0)  # dropped once split: memory holds one block's chunks
        text = page.page_content
        first_line = int(page.metadata.pop("first_line", 1))
        pos, line = 0, first_line  # lines counted incrementally: linear in the text size
        for chunk in splitter.split_documents([page]):
            start = max(int(chunk.metadata.pop("start_index", 0)), 0)
            if start < pos:
                pos, line = 0, first_line
            line += text.count("\n", pos, start)
            pos = start
            if not chunk.page_content.strip():
                continue
            chunk.metadata.update(
                source=str(path),
                start_line=line,
                end_line=line + chunk.page_content.count("\n"),
            )
            chunk.metadata.setdefault("page", None)
            found += 1
            yield chunk
    if not found:
        raise SkippedFile(path, "no text found")


def load_and_split(path: Path) -> list[Document]:
    """All chunks of one file (see iter_chunks)."""
    return list(iter_chunks(path))
