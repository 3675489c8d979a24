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


class CompletionWire:
    """OpenAI text completions on the wire (the serving.WireFormat of this route)."""

    def __init__(self, name: str, echo: dict[int, str]) -> None:
        self.name = name
        self.echo = echo
        self.id = random_id("cmpl")
        self.created = int(time.time())

    def _frame(self, index: int, text: str, finish: str | None = None) -> CompletionResponse:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish)
        return CompletionResponse(
            id=self.id, created=self.created, model=self.name, choices=[choice]
        )

    def opening(self, job: Job) -> list[Any]:
        return [self._frame(job.index, self.echo[job.index])] if self.echo.get(job.index) else []

    def delta(self, job: Job, chunk: AIMessageChunk) -> list[Any]:
        text = content_text(chunk.content)
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
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server.", param="logprobs")
    if body.best_of not in (None, 1, n):
        raise bad_request("'best_of' other than n is not supported.", param="best_of")
    prompts = _prompts(body.prompt)
    name = state.catalog.default_name(body.model)
    model: Any = await resolve_chat_model(state.catalog, body.model, **body.generation_overrides())
    check_max_tokens(state.catalog, name, body.max_tokens)
    stop = body.stop_sequences()
    raw = getattr(model, "astream_prompt", None)  # a local model: no chat template
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
            return partial(raw, inputs[i], stop)
    else:
        if any(not isinstance(p, str) for p in prompts):
            raise bad_request(f"Model {name!r} takes text prompts, not token ids.", param="prompt")
        texts = [str(p) for p in prompts] if body.echo else []

        def opener(i: int) -> Any:
            return partial(model.astream, [HumanMessage(content=prompts[i])], stop=stop)

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
    return await serve(serving, CompletionWire(name, echo), bool(body.stream))
