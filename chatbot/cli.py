"""`chatbot` command line: serve, models, chat, tiny-model.

chatbot serve [--config models.yaml] [--host 127.0.0.1] [--port 8888] [--model NAME_OR_PATH ...]
chatbot deploy [--config models.yaml] [--address auto] [--host 0.0.0.0] [--delete]
chatbot models [--config models.yaml]
chatbot chat [NAME] [--system TEXT] [--temperature T] [--max-tokens N]
chatbot tiny-model DIR [--arch qwen2|llama]
chatbot quantize SRC DST [--bits 4] [--group-size 128] [--calibration FILE]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="chatbot",
    help="One model registry -> LangChain chat models, an OpenAI-compatible API and LangServe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Model registry YAML (default: $CHATBOT_CONFIG or models.yaml)."
    ),
]


def _use_settings(**values: Any) -> Any:
    """Apply command-line settings process-wide (as CHATBOT_* env vars) and return them,
    so every part of the process (factory, engines, server) sees the same values."""
    from chatbot.settings import get_settings

    for key, value in values.items():
        if value is not None:
            os.environ[f"CHATBOT_{key.upper()}"] = str(value)
    get_settings.cache_clear()
    return get_settings()


def _fail(message: str) -> typer.Exit:
    # The message is plain text (paths, brackets): no markup, highlighting or re-wrapping.
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def build_registry(config: Path, models_root: Path, models: list[str] | None = None) -> Any:
    """The registry file, narrowed to `models` when given (see `narrow_registry`); with
    only ad-hoc paths, no registry file is needed."""
    from chatbot.registry import Registry, load_registry, narrow_registry

    if config.exists() or not models:
        base = load_registry(config, models_root)
    else:  # only ad-hoc models: no registry file needed
        base = Registry({}, source=str(config))
    return narrow_registry(base, models, models_root) if models else base


def run_server(app_: Any, host: str | None = None, port: int | None = None) -> None:
    """Serve an app with uvicorn on the settings' host and port, with our logging."""
    import uvicorn

    from chatbot.api.ops import GracefulServer, configure_logging
    from chatbot.api.sse import let_streams_finish_on_shutdown
    from chatbot.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    host = host or settings.host
    port = port or settings.port
    err.print(f"[bold]chatbot[/] serving on [cyan]http://{host}:{port}[/] (OpenAI API at /v1)")
    # SIGTERM/SIGINT: stop accepting, let in-flight requests (streams too) finish for up to
    # shutdown_grace seconds, then end what is left cleanly (a final error event and the
    # stream's end; chatbot.api.drain) and exit 0.
    let_streams_finish_on_shutdown()
    config = uvicorn.Config(
        app_,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace,
    )
    state = getattr(getattr(app_, "state", None), "chatbot", None)
    GracefulServer(config, drain=getattr(state, "drain", None)).run()


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8888).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Serve only this registry entry or model directory (repeatable)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ...")] = None,
) -> None:
    """Serve the registry: OpenAI-compatible /v1, LangServe /models/{name}, /health, /metrics."""
    from chatbot import factory
    from chatbot.api import create_app
    from chatbot.registry import RegistryError

    settings = _use_settings(config=config, host=host, port=port, log_level=log_level)
    try:
        registry = build_registry(settings.config, settings.models_root, model)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    factory.set_registry(registry)
    run_server(create_app(settings), settings.host, settings.port)


@app.command()
def deploy(
    config: ConfigOpt = None,
    address: Annotated[str, typer.Option(help="Ray cluster: 'auto' or HOST:PORT.")] = "auto",
    host: Annotated[str | None, typer.Option(help="HTTP bind address on every node.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8888).")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Deploy only this entry.")
    ] = None,
    name: Annotated[str, typer.Option(help="Ray Serve application name.")] = "chatbot",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every replica.")] = 600,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the deployment.")] = False,
) -> None:
    """Deploy the registry on a Ray cluster with Ray Serve (docs/deploy.md): one
    deployment per local model (replicas and resources from its `deploy:` field) behind
    one ingress with the routes of `chatbot serve`. Returns once it runs."""
    from chatbot.registry import RegistryError

    try:
        import ray

        from chatbot.deploy import ray_serve
    except ImportError:
        raise _fail("Ray Serve is not installed: pip install 'chatbot[ray]'") from None
    settings = _use_settings(config=config, host=host, port=port)
    ray.init(address=address, log_to_driver=False)
    if delete:
        ray_serve.undeploy(name)
        console.print(f"deleted {name!r}")
        return
    try:
        registry = build_registry(settings.config, settings.models_root, model)
        url = ray_serve.deploy(
            registry,
            settings,
            app_name=name,
            host=settings.host,
            port=settings.port,
            timeout=timeout,
        )
    except (RegistryError, ray_serve.DeployError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]deployed[/] {name!r} at {url}")


def _engine_column(entry: Any) -> str:
    from chatbot import factory
    from chatbot.engines import pick_engine

    if entry.unavailable:
        return f"[red]unavailable[/]: {escape(entry.unavailable)}"
    if entry.name in factory.picked:
        name, skipped = factory.picked[entry.name]
    else:
        try:
            cls, skipped = pick_engine(entry)
        except Exception as exc:  # noqa: BLE001 - shown in the table
            return f"[red]none[/]: {exc}"
        name = cls.name or cls.__name__
    lines = [f"[green]{name}[/]"]
    lines += [f"[dim]{other}: {reason}[/]" for other, reason in skipped.items()]
    return "\n".join(lines)


def _format_column(entry: Any) -> str:
    """'gguf Q4_1', 'hf', 'hf gptq', or '' for remote providers."""
    from model_adapters.gguf import describe

    if not entry.is_local:
        return ""
    info = describe(entry.resolved_path)
    text = " ".join(str(v) for v in (info["format"], info["quantization"]) if v)
    if info.get("error"):
        text += f"\n[red]{escape(info['error'])}[/]"
    return text


@app.command()
def models(config: ConfigOpt = None) -> None:
    """List the registry: kind, engines, the engine picked here (and why others were
    skipped), served or not, loaded or not."""
    from chatbot import factory
    from chatbot.registry import RegistryError

    try:
        if config is not None:
            from chatbot.settings import get_settings

            registry = build_registry(config, get_settings().models_root)
        else:
            registry = factory.get_registry()
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    loaded = factory.loaded()
    table = Table(title=f"Models in {registry.source}")
    columns = ("name", "kind", "format", "engines", "engine picked / skipped", "served", "loaded")
    for column in columns:
        table.add_column(column)
    for entry in registry.entries.values():
        name = entry.name
        if name == registry.default_model or name == registry.default_embeddings:
            name += " [dim](default)[/]"
        if entry.lazy:
            name += " [dim](lazy)[/]"
        table.add_row(
            name,
            entry.kind,
            _format_column(entry),
            ", ".join(entry.engines),
            _engine_column(entry),
            "yes" if entry.name in registry.serve else "no",
            "yes" if entry.name in loaded else "no",
        )
    console.print(table)


@app.command()
def chat(
    name: Annotated[
        str | None, typer.Argument(help="Registry chat model (default: default_model).")
    ] = None,
    config: ConfigOpt = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Chat in the terminal, streaming the answers. /reset clears the history, /exit quits."""
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

    from chatbot import factory

    if config is not None:
        settings = _use_settings(config=config)
        factory.set_registry(build_registry(settings.config, settings.models_root))
    given = {"temperature": temperature, "max_tokens": max_tokens}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        with err.status(f"loading {name or 'the default model'}..."):
            model = factory.get_chat_model(name, **overrides)
    except (KeyError, RuntimeError, ValueError) as exc:  # ValueError: RegistryError, GGUFError
        raise _fail(str(exc).strip("'\"")) from None
    label = name or factory.get_registry().default_model
    start: list[BaseMessage] = [SystemMessage(system)] if system else []
    history = list(start)
    err.print(f"[dim]chatting with [bold]{label}[/]; /reset clears the history, /exit quits[/]")
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = list(start)
            err.print("[dim]history cleared[/]")
            continue
        if not text.strip():
            continue
        history.append(HumanMessage(text))
        console.print(f"[bold green]{label}>[/] ", end="")
        reply = ""
        try:
            for chunk in model.stream(history):
                piece = chunk.content if isinstance(chunk.content, str) else ""
                reply += piece
                console.print(piece, end="", markup=False, highlight=False)
        except KeyboardInterrupt:
            console.print("[dim] (stopped)[/]", end="")
        except Exception as exc:  # noqa: BLE001 - keep the session going
            console.print()
            err.print(f"[red]error:[/] {exc}")
            history.pop()
            continue
        console.print()
        history.append(AIMessage(reply))


@app.command("tiny-model")
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to.")],
    arch: Annotated[str, typer.Option(help="qwen2 or llama.")] = "qwen2",
    template: Annotated[str, typer.Option(help="qwen (tools) or plain (no system role).")] = "qwen",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a tiny random chat model (for trying things out offline)."""
    from chatbot.tiny_model import build_tiny_model

    if arch not in ("qwen2", "llama"):
        raise typer.BadParameter("must be 'qwen2' or 'llama'", param_hint="--arch")
    if template not in ("qwen", "plain"):
        raise typer.BadParameter("must be 'qwen' or 'plain'", param_hint="--template")
    with err.status(f"building a tiny {arch} model..."):
        path = build_tiny_model(out_dir, arch=arch, template=template, seed=seed)
    console.print(f"tiny {arch} model written to {path}")


@app.command()
def quantize(
    src: Annotated[Path, typer.Argument(help="Hugging Face model directory to quantize.")],
    dst: Annotated[Path, typer.Argument(help="Directory for the GPTQ checkpoint.")],
    bits: Annotated[int, typer.Option(help="2, 3, 4 or 8.")] = 4,
    group_size: Annotated[int, typer.Option(help="Weights per scale (-1: per column).")] = 128,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration text: .txt, .jsonl ('text') or .json.")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option()] = False,
) -> None:
    """Make a GPTQ int4 checkpoint (needs pip install '.[gptq]')."""
    from chatbot.quantize import load_calibration, run_with_progress

    if bits not in (2, 3, 4, 8):
        raise typer.BadParameter("must be 2, 3, 4 or 8", param_hint="--bits")
    texts = load_calibration(calibration) if calibration else None
    try:
        path = run_with_progress(
            str(src),
            str(dst),
            bits=bits,
            group_size=group_size,
            calibration=texts,
            trust_remote_code=trust_remote_code,
        )
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"GPTQ {bits}-bit checkpoint written to {path}")


from chatbot.kb_cli import kb_app  # noqa: E402 - sub-app, mounted after the commands above

app.add_typer(kb_app, name="kb")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
