"""Domain errors, below every other module: models, the catalog, chains and the HTTP
layer all raise or map these, so none of them imports another layer for an exception
class. Each names what went wrong in terms of the request, not of HTTP; the HTTP layer
(chatbot.api.errors) maps them to statuses.
"""

from __future__ import annotations

from collections.abc import Sequence


class ContextLengthError(ValueError):
    """The prompt (plus requested tokens) does not fit the model's context window."""

    code = "context_length_exceeded"


class QueueFullError(RuntimeError):
    """The engine's request queue is full; retry later (HTTP 429)."""


class PoolBusyError(RuntimeError):
    """No room for a model: every resident model is busy for longer than the wait limit."""


class ModelNotFoundError(LookupError):
    """A request named a model that is not served (or not of the kind asked for)."""

    def __init__(self, name: str | None, kind: str = "chat", message: str | None = None) -> None:
        self.name = name
        self.kind = kind
        self.message = message  # said to the client as it is, when given
        super().__init__(message or f"model {name!r} ({kind}) is not served")


class ModelLoadError(RuntimeError):
    """A served model failed to load; the server and other models go on."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"model {name!r}: {reason}")


class AllReplicasFailed(RuntimeError):
    """Every replica (and every fallback) failed. The message names each one tried."""

    status_code = 503  # for HTTP layers: the upstreams are unavailable, not the request bad

    def __init__(
        self,
        model: str,
        tried: Sequence[tuple[str, BaseException]],
        cooling: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.tried = [name for name, _ in tried]
        parts = [f"{name} ({type(exc).__name__}: {exc})" for name, exc in tried]
        message = f"model {model!r}: all replicas failed; tried: " + "; ".join(parts or ["none"])
        if cooling:
            message += f"; in cooldown, not tried: {', '.join(cooling)}"
        super().__init__(message)


class StreamInterrupted(RuntimeError):
    """A replica failed after the first token was sent: too late to fail over."""

    status_code = 502
