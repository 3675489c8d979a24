"""Optional per-key rate limits: requests/min and tokens/min (settings.rate_limit_rpm,
settings.rate_limit_tpm), as token buckets that refill continuously.

`RateLimitMiddleware` (installed by chatbot.api.ops after the key check) takes one request
from the caller's bucket and answers 429 with Retry-After when it is empty or when the
caller's token bucket is spent. Token use is only known once a model has answered, so
`charge_tokens` (called by metrics.RequestTracker.tokens) takes it afterwards: a large
answer may overdraw the bucket, and the next requests wait until it refills.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import threading
import time
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from chatbot.api.errors import APIError, ErrorForms


@dataclass
class TokenBucket:
    """`per_minute` units, refilled continuously; may go negative (charged after use)."""

    per_minute: float
    level: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.per_minute

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.per_minute, self.level + (now - self.stamp) * self.per_minute / 60)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: it is now)."""
        self._refill()
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.per_minute

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()  # token charges may come from worker threads

    def admit(self, key: str) -> float:
        """Take one request for `key`; 0 when admitted, else seconds to wait."""
        with self._lock:
            waits = []
            if self.tpm:
                tokens = self._tokens.setdefault(key, TokenBucket(self.tpm))
                waits.append(tokens.wait_for(1))  # spent (or overdrawn): wait
            if self.rpm:
                requests = self._requests.setdefault(key, TokenBucket(self.rpm))
                waits.append(requests.wait_for(1))
            wait = max(waits, default=0.0)
            if wait == 0 and self.rpm:
                self._requests[key].take(1)
            return wait

    def charge(self, key: str, tokens: int) -> None:
        if not self.tpm or tokens <= 0:
            return
        with self._lock:
            self._tokens.setdefault(key, TokenBucket(self.tpm)).take(tokens)


@dataclass
class _Caller:
    limiter: RateLimiter
    key: str


_caller: contextvars.ContextVar[_Caller | None] = contextvars.ContextVar(
    "rate_limited_caller", default=None
)


def charge_tokens(tokens: int) -> None:
    """Charge the current request's caller (no-op when limits are off)."""
    caller = _caller.get()
    if caller is not None:
        caller.limiter.charge(caller.key, tokens)


def caller_key(scope: Scope, by_key: bool) -> str:
    """A digest of the API key (never the key itself) when keys are checked, else the
    client address (an unchecked header would let a client pick a fresh budget)."""
    headers = dict((name.lower(), value) for name, value in scope.get("headers", []))
    if by_key:  # the key the check took: Bearer, else Anthropic's x-api-key
        bearer = headers.get(b"authorization", b"").partition(b" ")[2].strip()
        token = bearer or headers.get(b"x-api-key", b"").strip()
        if token:
            return "key:" + hashlib.sha256(token).hexdigest()[:16]
    client = scope.get("client") or ("?", 0)
    return f"addr:{client[0]}"


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        public_paths: frozenset[str],
        by_key: bool,
        errors: ErrorForms,
    ) -> None:
        self.app = app
        self.errors = errors  # the 429 in the error form of the path
        self.limiter = limiter
        self.public_paths = public_paths
        self.by_key = by_key  # keys are checked before this middleware runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        key = caller_key(scope, self.by_key)
        wait = self.limiter.admit(key)
        if wait > 0:
            api = APIError(
                429,
                "Rate limit reached for your API key; retry after the Retry-After delay.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
            await self.errors.response(api, str(scope.get("path", "")))(scope, receive, send)
            return
        token = _caller.set(_Caller(self.limiter, key))
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(token)
