"""Files -> chunks: LangChain document loaders and text splitters, with source locations.

Every chunk carries `source` (absolute path), `page` (1-based, PDFs only) and
`start_line`/`end_line` (1-based, within the page for PDFs) so answers can cite them.
"""

from __future__ import annotations

from pathlib import Path

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


def _load(path: Path) -> list[Document]:
    from langchain_community.document_loaders import BSHTMLLoader, PyPDFLoader, TextLoader

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
    docs = TextLoader(str(path), autodetect_encoding=True).load()
    for doc in docs:
        doc.metadata = {}
    return docs


def splitter_for(path: Path) -> RecursiveCharacterTextSplitter:
    lang = _CODE.get(path.suffix.lower())
    kwargs = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "add_start_index": True}
    if lang is not None:
        return RecursiveCharacterTextSplitter.from_language(lang, **kwargs)
    return RecursiveCharacterTextSplitter(**kwargs)


def load_and_split(path: Path) -> list[Document]:
    """Chunks of one file with source locations; LoadError if unreadable or empty."""
    try:
        pages = _load(path)
    except Exception as exc:  # loaders wrap OS/decoding errors in their own types
        cause = exc.__cause__ or exc
        raise LoadError(f"{path}: cannot read: {cause}") from exc
    chunks: list[Document] = []
    for page in pages:
        text = page.page_content
        for chunk in splitter_for(path).split_documents([page]):
            start = int(chunk.metadata.pop("start_index", 0))
            first = text.count("\n", 0, max(start, 0)) + 1
            chunk.metadata.update(
                source=str(path),
                start_line=first,
                end_line=first + chunk.page_content.count("\n"),
            )
            chunk.metadata.setdefault("page", None)
            chunks.append(chunk)
    if not any(c.page_content.strip() for c in chunks):
        raise LoadError(f"{path}: no text found")
    return chunks
