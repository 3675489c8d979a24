"""POST /v1/completions, the legacy prompt API (openai 0.28's `Completion.create`).

Served by the one serving path (chatbot.api.openai.serving), through the same chat model
object as chat completions: a local model (`ChatLocal.astream_prompt`) generates straight
from the raw prompt (no chat template); other models get the prompt as one user message.
`CompletionWire` writes OpenAI's text completion objects.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from langchain_core.messages import AIMessageChunk, HumanMessage

from chatbot.api.errors import bad_request
from chatbot.api.models import check_max_tokens, resolve_chat_model
from chatbot.api.openai.convert import content_text, finish_reason
from chatbot.api.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    random_id,
)
from chatbot.api.openai.serving import Choice, Deadline, Job, Serving, app_state, serve
from chatbot.api.sampling import sampling_kwargs
from chatbot.errors import ContextLengthError

router = APIRouter(tags=["openai"])  # included under /v1 by chatbot.api.openai.routes


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def legacy_logprobs(items: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """Chat logprobs items -> OpenAI's legacy `logprobs` object; `offset`: where the first
    token's text starts in the choice's text."""
    if items is None:
        return None
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item["token"])
    return {
        "tokens": [i["token"] for i in items],
        "token_logprobs": [i["logprob"] for i in items],
        "top_logprobs": [_top(i["top_logprobs"]) for i in items],
        "text_offset": offsets,
    }


def _top(items: list[dict[str, Any]] | None) -> dict[str, float] | None:
    return None if items is None else {t["token"]: t["logprob"] for t in items}


class CompletionWire:
    """OpenAI text completions on the wire (the serving.WireFormat of this route).
    With logprobs and echo, the prompt comes as one piece with its tokens' logprobs."""

    def __init__(self, name: str, echo: dict[int, str], logprobs: bool = False) -> None:
        self.name = name
        self.echo = echo
        self.logprobs = logprobs
        self.offsets: dict[int, int] = {}  # per choice: text offset of its next token
        self.id = random_id("cmpl")
        self.created = int(time.time())

    def _frame(
        self, index: int, text: str, finish: str | None = None, logprobs: Any = None
    ) -> CompletionResponse:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
        return CompletionResponse(
            id=self.id, created=self.created, model=self.name, choices=[choice]
        )

    def opening(self, job: Job) -> list[Any]:
        if not self.echo.get(job.index) or self.logprobs:  # with logprobs: the prompt piece
            return []
        return [self._frame(job.index, self.echo[job.index])]

    def delta(self, job: Job, chunk: AIMessageChunk) -> list[Any]:
        text = content_text(chunk.content)
        meta = chunk.response_metadata
        prompt = (meta.get("prompt_logprobs") or {}).get("content")
        items = prompt if prompt is not None else (meta.get("logprobs") or {}).get("content")
        if self.logprobs and items:
            if prompt is not None:
                text = self.echo.get(job.index, "")
            offset = self.offsets.get(job.index, 0)
            self.offsets[job.index] = offset + sum(len(i["token"]) for i in items)
            return [self._frame(job.index, text, logprobs=legacy_logprobs(items, offset))]
        return [self._frame(job.index, text)] if text else []

    def closing(self, choice: Choice) -> list[Any]:
        return [self._frame(choice.index, "", finish_reason(choice.raw_finish, legacy=True))]

    def usage(self, usage: UsageInfo) -> list[Any]:
        return [
            CompletionResponse(
                id=self.id, created=self.created, model=self.name, choices=[], usage=usage
            )
        ]

    def response(self, choices: list[Choice], usage: UsageInfo) -> Any:
        out = [
            CompletionChoice(
                index=c.index,
                text=self.echo.get(c.index, "") + c.text,
                logprobs=legacy_logprobs(
                    (c.prompt_logprobs or []) + (c.logprobs or []) if self.logprobs else None
                ),
                finish_reason=finish_reason(c.raw_finish, legacy=True),
            )
            for c in sorted(choices, key=lambda c: c.index)
        ]
        return CompletionResponse(
            id=self.id, created=self.created, model=self.name, choices=out, usage=usage
        )


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = app_state(request)
    n = body.n or 1
    if body.suffix:
        raise bad_request("'suffix' is not supported by this server.", param="suffix")
    if body.best_of not in (None, 1, n):
        raise bad_request("'best_of' other than n is not supported.", param="best_of")
    prompts = _prompts(body.prompt)
    name = state.catalog.default_name(body.model)
    model: Any = await resolve_chat_model(
        state.catalog, body.model, settings=state.settings, **body.generation_overrides()
    )
    check_max_tokens(state.catalog, name, body.max_tokens)
    stop = body.stop_sequences()
    raw = getattr(model, "astream_prompt", None)  # a local model: no chat template
    sampling = sampling_kwargs(body.sampling(), model, name)
    if body.logprobs is not None:
        if raw is None:
            raise bad_request(
                f"Model {name!r} does not support legacy 'logprobs'.", param="logprobs"
            )
        sampling["logprobs"] = body.logprobs
        if body.echo:
            sampling["prompt_logprobs"] = body.logprobs
    if raw is not None:
        try:
            # Tokenized in the preparation pool, off the event loop; a text prompt too
            # long for the context is refused before tokenizing (a 400).
            inputs: list[Any] = [await model.aencode_prompt(p) for p in prompts]
        except ContextLengthError:
            raise  # its own error code (context_length_exceeded)
        except ValueError as exc:
            raise bad_request(str(exc), param="prompt") from None
        texts = [model.decode_prompt(p) for p in prompts] if body.echo else []

        def opener(i: int) -> Any:
            return partial(raw, inputs[i], stop, **sampling)
    else:
        if any(not isinstance(p, str) for p in prompts):
            raise bad_request(f"Model {name!r} takes text prompts, not token ids.", param="prompt")
        texts = [str(p) for p in prompts] if body.echo else []

        def opener(i: int) -> Any:
            return partial(model.astream, [HumanMessage(content=prompts[i])], stop=stop, **sampling)

    jobs = [
        Job(index=i * n + j, prompt=i, open=opener(i))
        for i in range(len(prompts))
        for j in range(n)
    ]
    echo = {job.index: texts[job.prompt] for job in jobs} if body.echo else {}
    serving = Serving(
        name=name,
        jobs=jobs,
        deadline=Deadline(state.settings.request_timeout),
        tracker=state.metrics.track(name, "completions"),
        include_usage=body.include_usage(),
    )
    return await serve(
        serving, CompletionWire(name, echo, body.logprobs is not None), bool(body.stream)
    )
