"""`chatbot kb ...`: manage knowledge bases (ingest, list, delete)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

kb_app = typer.Typer(
    help="Knowledge bases for RAG: ingest files, list, delete.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


@kb_app.command()
def ingest(
    name: Annotated[str, typer.Argument(help="Knowledge-base name (created if new).")],
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (recursive).")],
    embeddings: Annotated[
        str | None, typer.Option(help="Embeddings model from the registry (default: its default).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (change nothing) on binary or empty files.")
    ] = False,
    lock_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for another ingest into this KB.")
    ] = 600.0,
) -> None:
    """Add or update files: txt, md, pdf, html and source code. Unchanged files are skipped,
    binary and empty ones too (with a warning) unless --strict."""
    from chains.ingest import ingest as do_ingest
    from chains.kb import KBError
    from chatbot.settings import get_settings

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"ingesting into {name} (waiting for other ingests)", total=None)

        def report(path: str, done: int, total: int) -> None:
            label = Path(path).name if path else "saving"
            bar.update(task, completed=done, total=total, description=f"{name}: {label}")

        try:
            result = do_ingest(
                name,
                paths,
                embeddings=embeddings,
                progress=report,
                strict=strict,
                lock_timeout=lock_timeout,
                settings=get_settings(),  # the CLI is an entry point: the process's
            )
        except (KBError, ValueError, KeyError, FileNotFoundError) as exc:
            _fail(str(exc).strip("'\""))
            return
    for path, reason in result.skipped.items():
        level = "[yellow]warning:[/yellow]" if "binary" in reason else "note:"
        errors.print(f"{level} skipped {path}: {reason}", highlight=False)
    console.print(
        f"{name}: {len(result.added)} added, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged, {len(result.skipped)} skipped; "
        f"{result.chunks} chunks",
        highlight=False,
    )


@kb_app.command("list")
def list_() -> None:
    """Knowledge bases with their file and chunk counts."""
    from chains.kb import list_kbs
    from chatbot.settings import get_settings

    infos = list_kbs(get_settings())
    if not infos:
        console.print("no knowledge bases yet: chatbot kb ingest NAME PATH...")
        return
    table = Table("name", "files", "chunks", "embeddings", "store")
    for info in infos:
        table.add_row(info.name, str(info.files), str(info.chunks), info.embeddings, info.store)
    console.print(table)


@kb_app.command()
def delete(
    name: Annotated[str, typer.Argument(help="Knowledge base to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a knowledge base and its index."""
    from chains.kb import KBError, delete_kb, read_manifest
    from chatbot.settings import get_settings

    settings = get_settings()
    try:
        read_manifest(name, settings)
        if not yes:
            typer.confirm(f"delete knowledge base {name!r}?", abort=True)
        delete_kb(name, settings)
    except KBError as exc:
        _fail(str(exc))
    console.print(f"deleted {name}")
