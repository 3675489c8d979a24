"""The one place that maps exceptions to OpenAI error JSON and HTTP status codes.

Every error a client sees, from any route (OpenAI, LangServe, ops) and in any form (a
JSON response, or an SSE error event in the middle of a stream), is built here:

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import openai
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbot.errors import (
    AllReplicasFailed,
    ContextLengthError,
    ModelLoadError,
    ModelNotFoundError,
    PoolBusyError,
    QueueFullError,
    StreamInterrupted,
)
from model_adapters.messages import UnsupportedContentError

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# The `type` OpenAI uses for each status we answer with.
_TYPES = {
    400: INVALID_REQUEST,
    401: INVALID_REQUEST,
    403: INVALID_REQUEST,
    404: INVALID_REQUEST,
    405: INVALID_REQUEST,
    413: INVALID_REQUEST,
    415: INVALID_REQUEST,
    422: INVALID_REQUEST,
    429: "rate_limit_error",
    500: SERVER_ERROR,
    502: SERVER_ERROR,
    503: SERVER_ERROR,
    504: SERVER_ERROR,
}


# "[21:32:05] /project/cpp/json_schema_converter.cc:4944: " (xgrammar's C++ errors): our
# build's internals, not something a client can act on.
_NATIVE_SOURCE = re.compile(r"(\[\d{2}:\d{2}:\d{2}\] )?[\w./\\-]+\.(?:cc|cpp|cxx|cu|hpp|h):\d+: ")


def scrub(message: str) -> str:
    """A client-facing message without native source locations."""
    return _NATIVE_SOURCE.sub("", message).strip()


class APIError(Exception):
    """An error answered to the client as OpenAI error JSON with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = scrub(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, SERVER_ERROR if status >= 500 else INVALID_REQUEST)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


ErrorRenderer = Callable[[APIError], Response]
# An event stream's last bytes when `APIError` cuts it, given how many events were sent.
StreamEnd = Callable[[APIError, int], bytes]


class ErrorForms:
    """The one place that decides, by request path, which wire format's error JSON an
    error is answered in: OpenAI's, unless a path prefix given by the app names another
    (Anthropic's under /v1/messages). The exception handlers and every middleware that
    answers on its own (401, 413, 429, 503 at shutdown, last-resort 500) ask this."""

    def __init__(
        self,
        by_prefix: Mapping[str, ErrorRenderer] | None = None,
        stream_ends: Mapping[str, StreamEnd] | None = None,
    ) -> None:
        self.by_prefix = dict(by_prefix or {})
        self.stream_ends = dict(stream_ends or {})

    @staticmethod
    def _find(table: Mapping[str, Any], path: str) -> Any:
        for prefix, value in table.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return value
        return None

    def renderer(self, path: str) -> ErrorRenderer:
        return self._find(self.by_prefix, path) or APIError.response

    def response(self, api: APIError, path: str) -> Response:
        return self.renderer(path)(api)

    def stream_end(self, api: APIError, path: str, events_sent: int) -> bytes | None:
        """The last bytes of an event stream cut by `api` (None: OpenAI's or LangServe's,
        which the caller knows)."""
        end = self._find(self.stream_ends, path)
        return end(api, events_sent) if end is not None else None


# --- constructors for the common cases -------------------------------------------------


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str | None, kind: str = "model") -> APIError:
    return APIError(
        404,
        f"The {kind} {name!r} does not exist or is not served here (see GET /v1/models).",
        param="model",
        code="model_not_found",
    )


def model_unavailable(name: str, reason: str) -> APIError:
    return APIError(503, f"Model {name!r} is unavailable: {reason}", code="model_unavailable")


# --- validation errors -> the field they name -------------------------------------------


def loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union", "union[", "list[", "str", "dict[")):
            continue  # pydantic union-branch names, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_validation(errors: list[dict[str, Any]]) -> APIError:
    """Pydantic / FastAPI validation errors -> one 400 naming the first bad field."""
    errors = [e if isinstance(e, dict) else {"msg": str(e)} for e in errors]
    if not errors:
        return bad_request("Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(f"The request body is not valid JSON: {detail}".rstrip(": "))
    param = loc_to_param(first.get("loc", ()))
    messages = []
    for err in errors[:3]:
        where = loc_to_param(err.get("loc", ()))
        text = err.get("msg", "invalid value")
        if where is None and err.get("type") == "missing":
            text = "a JSON request body is required"
        messages.append(f"Invalid '{where}': {text}" if where else text)
    if len(errors) > 3:
        messages.append(f"... and {len(errors) - 3} more")
    return bad_request("; ".join(messages) + ".", param=param)


# --- upstream (remote provider / router) failures ------------------------------------

# Upstream 4xx that are the caller's fault (their prompt, their parameters): passed on.
# Others (401/403/404: our key or model name upstream is wrong) are the server's problem.
_CLIENT_FAULT = frozenset({400, 409, 413, 422})


def from_upstream(exc: BaseException) -> APIError | None:
    """Errors of remote providers and the router -> 4xx passthrough or 502/503/504."""
    if isinstance(exc, AllReplicasFailed):
        return APIError(
            503,
            f"No upstream could answer: {exc}",
            code="upstream_unavailable",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, StreamInterrupted):
        return APIError(502, str(exc), code="upstream_error")
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
        return APIError(504, "The upstream provider did not answer in time.", code="timeout")
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        return APIError(502, "Could not reach the upstream provider.", code="upstream_error")
    if isinstance(exc, openai.APIStatusError):
        status, message = exc.status_code, _upstream_message(exc)
        if status in _CLIENT_FAULT:
            return APIError(status, message, code="upstream_rejected")
        if status == 429:
            retry = exc.response.headers.get("retry-after", "1")
            return APIError(
                429,
                f"The upstream provider is rate limiting: {message}",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry},
            )
        if status in (408, 504):
            return APIError(504, "The upstream provider timed out.", code="timeout")
        if status == 503:
            return APIError(
                503, f"The upstream provider is unavailable: {message}", code="upstream_unavailable"
            )
        return APIError(
            502, f"The upstream provider failed ({status}): {message}", code="upstream_error"
        )
    return None


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return exc.message


# --- the mapping ----------------------------------------------------------------------


def from_exception(exc: BaseException) -> APIError:
    """Map any exception to the APIError the client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        if exc.message:
            return APIError(404, exc.message, param="model", code="model_not_found")
        kind = "embeddings model" if exc.kind == "embeddings" else "model"
        return model_not_found(exc.name, kind)
    if isinstance(exc, ModelLoadError):
        return model_unavailable(exc.name, exc.reason)
    if isinstance(exc, PoolBusyError):
        return APIError(503, str(exc), code="pool_busy", headers={"Retry-After": "5"})
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param="messages", code=ContextLengthError.code)
    if isinstance(exc, QueueFullError):
        return APIError(
            429,
            f"The server is busy: {exc}. Retry shortly.",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, UnsupportedContentError):
        return APIError(400, str(exc), param="messages", code="unsupported_content")
    if isinstance(exc, RequestValidationError):
        return from_validation(list(exc.errors()))
    if isinstance(exc, ValidationError):
        return from_validation(exc.errors(include_url=False))  # type: ignore[arg-type]
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
    upstream = from_upstream(exc)
    if upstream is not None:
        return upstream
    if isinstance(exc, RecursionError):  # json.loads of "[[[[...": the input, not a bug
        return bad_request("The request is nested too deeply.", code="nesting_too_deep")
    if isinstance(exc, TimeoutError):
        return APIError(504, "The request took longer than the server allows.", code="timeout")
    if isinstance(exc, ValueError):
        # Models raise ValueError for input they reject (e.g. a chat template refusing a
        # role order). That is the client's input, not a server fault.
        return bad_request(str(exc) or "Invalid request.", param=getattr(exc, "param", None))
    return APIError(500, "The server had an error while processing your request.", code=None)


def log_error(exc: BaseException, api: APIError) -> None:
    if api.status >= 500 and api.code is None and not isinstance(exc, APIError):
        log.error("request failed: %s", api.message, exc_info=exc)  # unexpected: a bug
    elif api.status >= 500:
        log.warning("request failed (%d): %s", api.status, api.message)
    else:
        log.info("request rejected (%d): %s", api.status, api.message)


def install_error_handlers(app: FastAPI, forms: ErrorForms | None = None) -> None:
    """Route every known exception type through `from_exception`, answered in the error
    form of the request's path."""
    forms = forms or ErrorForms()

    async def handle(request: Request, exc: Exception) -> Response:
        api = from_exception(exc)
        log_error(exc, api)
        return forms.response(api, request.url.path)

    for exc_type in (
        APIError,
        RequestValidationError,
        ValidationError,
        StarletteHTTPException,
        ContextLengthError,
        QueueFullError,
        UnsupportedContentError,
        ValueError,
        AllReplicasFailed,
        StreamInterrupted,
        openai.APIError,
        httpx.HTTPError,
    ):
        app.add_exception_handler(exc_type, handle)
