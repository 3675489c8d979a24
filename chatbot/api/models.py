"""Which models the server answers for, and how a request's model name becomes a model.

Every function takes the app's `ModelCatalog` (chatbot.catalog); unknown names raise
ModelNotFoundError and load failures ModelLoadError (404 / 503 via chatbot.api.errors).

- `resolve_chat_model(catalog, name, **overrides)`: the one function that turns a
  request's `model` into something with `astream(messages, stop=..., **kwargs)`. Add
  branches here for names that are not registry entries (e.g. `rag:<kb>` chains).
- `resolve_embeddings(catalog, name)`: the same for embeddings.
- `model_card(catalog, entry, created)`: the /v1/models object for one entry.
- `chat_runnable(catalog, name)`: a Runnable that builds the model on each call (for
  LangServe), so a lazy model loads on first use, not when routes are added.
- `ModelLoader`: loads the non-lazy served models at start-up; /ready asks it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, Union

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, convert_to_messages
from langchain_core.prompt_values import ChatPromptValueConcrete, StringPromptValue
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from chains.serving import resolve_rag_model
from chatbot.api.errors import APIError, from_validation
from chatbot.catalog import ModelCatalog
from chatbot.engines import Engine
from chatbot.registry import ModelEntry
from chatbot.settings import Settings
from model_adapters.capabilities import model_capabilities

log = logging.getLogger(__name__)


# --- lookup ------------------------------------------------------------------------


async def load_engine(catalog: ModelCatalog, entry: ModelEntry) -> Engine:
    """The entry's loaded engine; loads it (off the event loop) on first use.

    Load failures are a ModelLoadError (503) for this model only; the rest go on."""
    engine = catalog.loaded().get(entry.name)
    if engine is not None:
        return engine
    return await asyncio.to_thread(catalog.load, entry)


async def resolve_chat_model(
    catalog: ModelCatalog, name: str | None, *, settings: Settings | None = None, **overrides: Any
) -> Runnable:
    """The chat model a request named, with per-request generation overrides applied;
    `settings`: the app's (where `rag:<kb>` knowledge bases live)."""
    if name and name.startswith("rag:"):  # a knowledge base: "rag:<kb>" or "rag:<kb>/<model>"
        spec = name.removeprefix("rag:")
        return await resolve_rag_model(spec, catalog, settings=settings, **overrides)
    entry = catalog.served_entry(name, "chat")
    await load_engine(catalog, entry)
    try:
        return catalog.chat_model(entry.name, **overrides)
    except ValidationError as exc:
        raise from_validation(exc.errors(include_url=False)) from None  # type: ignore[arg-type]


async def resolve_embeddings(catalog: ModelCatalog, name: str | None) -> Embeddings:
    entry = catalog.served_entry(name, "embeddings")
    await load_engine(catalog, entry)
    return catalog.embeddings(entry.name)


# --- capabilities ------------------------------------------------------------------


def supports_tools(model: Any) -> bool:
    """Whether a chat model implements bind_tools (LangChain's base class raises)."""
    explicit = getattr(model, "supports_tools", None)
    if isinstance(explicit, bool):
        return explicit
    base = BaseChatModel.bind_tools
    return isinstance(model, BaseChatModel) and type(model).bind_tools is not base


def supports_response_format(model: Any) -> bool:
    """Whether the model honours a `response_format` invoke kwarg.

    A model class may say so with a `supports_response_format` attribute; otherwise
    models that implement tool calling are assumed to (LangChain providers do).
    """
    explicit = getattr(model, "supports_response_format", None)
    if isinstance(explicit, bool):
        return explicit
    return supports_tools(model)


def capabilities(catalog: ModelCatalog, entry: ModelEntry) -> list[str]:
    if entry.kind == "embeddings":
        return ["embeddings"]
    caps = model_capabilities(entry, catalog.loaded().get(entry.name))
    extra = ("tools", "tool_choice", "json_schema", "json_object", "vision")
    return ["chat", "completions", "streaming", *(n for n in extra if getattr(caps, n))]


def context_length(catalog: ModelCatalog, entry: ModelEntry) -> int | None:
    engine = catalog.loaded().get(entry.name)
    runtime = getattr(engine, "runtime", None)
    value = getattr(runtime, "context_length", None)
    return int(value) if isinstance(value, int) else entry.options.max_model_len


def check_max_tokens(
    catalog: ModelCatalog, name: str, max_tokens: int | None, param: str = "max_tokens"
) -> None:
    """400 for max_tokens beyond the model's whole context: it can never be honoured."""
    entry = catalog.registry.entries.get(name)
    limit = context_length(catalog, entry) if entry is not None and max_tokens else None
    if limit and max_tokens and max_tokens > limit:
        raise APIError(
            400,
            f"'{param}' is {max_tokens}, more than model {name!r}'s context length of "
            f"{limit} tokens.",
            param=param,
            code="context_length_exceeded",
        )


def model_card(catalog: ModelCatalog, entry: ModelEntry, created: int) -> dict[str, Any]:
    """The /v1/models object for one registry entry: OpenAI's fields plus ours."""
    picked = catalog.picked.get(entry.name)
    loaded = entry.name in catalog.loaded()
    return {
        "id": entry.name,
        "object": "model",
        "created": created,
        "owned_by": entry.provider or "chatbot",
        "kind": entry.kind,
        "description": entry.description,
        "engines": list(entry.engines),
        "engine": picked[0] if picked else None,
        "engines_skipped": dict(picked[1]) if picked else {},
        "loaded": loaded,
        "lazy": entry.lazy,
        "capabilities": capabilities(catalog, entry),
        "context_length": context_length(catalog, entry) if loaded else entry.options.max_model_len,
        **_weights_format(entry),
    }


def _weights_format(entry: ModelEntry) -> dict[str, Any]:
    """Local entries: "format" (hf / gguf) and "quantization" (Q4_1, gptq, ...)."""
    if not entry.is_local:
        return {}
    from model_adapters.gguf import describe

    info = describe(entry.resolved_path)
    return {"format": info["format"], "quantization": info["quantization"]}


# --- LangServe ---------------------------------------------------------------------

# What a chat model takes (LanguageModelInput), spelled so that LangServe can validate
# request bodies against it: concrete prompt values (the abstract PromptValue cannot be
# built: a TypeError, a 500), and messages tried as typed messages first (else they
# validate as bare BaseMessage, which no model takes), then as tuples or dicts.
#
# LangChain's message classes raise TypeError (for a list where a message should be, a
# tool call with unknown keys, ...) from inside validation: not a validation error, so
# a 500. These wrappers make them validation errors (a 4xx) and let the union go on.
_INPUT_ERRORS = (TypeError, KeyError, AttributeError, NotImplementedError)


def _typed_message(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if not isinstance(value, BaseMessage) and not (
        isinstance(value, dict) and isinstance(value.get("type"), str)
    ):
        raise ValueError("a typed message needs a 'type'")
    try:
        return handler(value)
    except _INPUT_ERRORS as exc:
        raise ValueError(f"invalid message: {exc}") from None


def _typed_prompt(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except _INPUT_ERRORS as exc:
        raise ValueError(f"invalid prompt value: {exc}") from None


def _chat_input_error(value: Any) -> str | None:
    """Why a model could not take this input (None: it can). LangChain raises TypeError,
    NotImplementedError or KeyError for malformed messages, which would read as a 500."""
    if isinstance(value, (str, StringPromptValue, ChatPromptValueConcrete)):
        return None
    try:
        messages = convert_to_messages(value)
    except (ValueError, *_INPUT_ERRORS) as exc:
        return f"Invalid input: {exc}"
    return None if messages else "Invalid input: no messages."


def _validate_chat_input(value: Any) -> Any:
    # Checked while LangServe validates the body, so that a bad message is a 4xx before a
    # stream starts (an error inside a LangServe stream is an opaque in-band 500).
    error = _chat_input_error(value)
    if error:
        raise ValueError(error)
    return value


def _check_chat_input(value: Any) -> None:
    error = _chat_input_error(value)
    if error:
        raise APIError(400, error, param="input")


_MessageLike = Annotated[
    Union[  # noqa: UP007
        Annotated[AnyMessage, WrapValidator(_typed_message)],
        tuple[str, str],
        list[str],
        dict[str, Any],
        str,
    ],
    Field(union_mode="left_to_right"),
]
ChatInput = Annotated[
    Union[  # noqa: UP007
        str,
        StringPromptValue,
        Annotated[ChatPromptValueConcrete, WrapValidator(_typed_prompt)],
        Sequence[_MessageLike],
    ],
    Field(union_mode="left_to_right"),
    AfterValidator(_validate_chat_input),
]


def chat_runnable(catalog: ModelCatalog, name: str) -> Runnable:
    """A Runnable over registry chat model `name`, built (and loaded) per call."""

    def build(value: Any) -> Runnable:
        _check_chat_input(value)
        catalog.load(catalog.registry.get(name, "chat"))  # a failure: ModelLoadError
        return catalog.chat_model(name)

    return RunnableLambda(build, name=name).with_types(input_type=ChatInput, output_type=AIMessage)


# --- start-up loading --------------------------------------------------------------


class ModelLoader:
    """Loads every served, non-lazy model in a background thread with a progress display."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog
        self.errors: dict[str, str] = {}
        self.started_at = time.time()
        self._thread: threading.Thread | None = None

    def targets(self) -> list[ModelEntry]:
        return [e for e in self.catalog.registry.served() if not e.lazy]

    def status(self) -> dict[str, str]:
        loaded = self.catalog.loaded()
        out = {}
        for entry in self.catalog.registry.served():
            if entry.name in loaded:
                out[entry.name] = "loaded"
            elif entry.name in self.errors:
                out[entry.name] = "failed"
            elif entry.lazy:
                out[entry.name] = "lazy"
            else:
                out[entry.name] = "loading"
        return out

    def ready(self) -> bool:
        loaded = self.catalog.loaded()
        return all(e.name in loaded for e in self.targets())

    def load_all(self, show_progress: bool = True) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        targets = [e for e in self.targets() if e.name not in self.catalog.loaded()]
        if not targets:
            return
        console = Console(stderr=True)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not show_progress) as progress:
            tasks = {
                e.name: progress.add_task(f"[cyan]{e.name}[/] waiting", total=1) for e in targets
            }
            for entry in targets:
                task = tasks[entry.name]
                progress.update(task, description=f"[cyan]{entry.name}[/] loading")
                try:
                    self.catalog.engine(entry.name, entry.kind)
                except Exception as exc:  # noqa: BLE001 - one bad model must not stop the rest
                    self.errors[entry.name] = str(exc)
                    log.error("model %s failed to load: %s", entry.name, exc, exc_info=exc)
                    progress.update(task, description=f"[red]{entry.name}[/] failed: {exc}")
                else:
                    engine = self.catalog.picked.get(entry.name, ("?", {}))[0]
                    progress.update(
                        task, description=f"[green]{entry.name}[/] loaded ({engine})", completed=1
                    )

    def start(self, show_progress: bool = True) -> threading.Thread:
        self._thread = threading.Thread(
            target=self.load_all, args=(show_progress,), name="chatbot-loader", daemon=True
        )
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = [
    "APIError",
    "ModelLoader",
    "chat_runnable",
    "load_engine",
    "model_card",
    "resolve_chat_model",
    "resolve_embeddings",
    "supports_response_format",
    "supports_tools",
]
