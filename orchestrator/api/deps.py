"""Request dependencies: authentication, scopes and the per-token rate limit."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from orchestrator.api.envelope import RateLimited
from orchestrator.service import Service
from orchestrator.tokens import FailureLimiter, TokenInfo, TokenStore
from policies.errors import AuthError, Forbidden

_T = TypeVar("_T")


class RateLimiter:
    """A sliding one-minute window per token."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> dict[str, str]:
        now = self.clock()
        window = self._hits.setdefault(key, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        reset = math.ceil(window[0] + 60) if window else math.ceil(now + 60)
        if len(window) >= self.per_minute:
            retry = max(1, math.ceil(window[0] + 60 - now))
            headers = {
                "Retry-After": str(retry),
                "X-RateLimit-Limit": str(self.per_minute),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            }
            raise RateLimited(
                f"rate limit of {self.per_minute} requests per minute exceeded; retry in {retry} s",
                headers,
            )
        window.append(now)
        return {
            "X-RateLimit-Limit": str(self.per_minute),
            "X-RateLimit-Remaining": str(self.per_minute - len(window)),
            "X-RateLimit-Reset": str(reset),
        }


# The accessors are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread,
# a hand-off that cost more than the attribute read itself on every request.
async def service_of(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def guarded(request: Request, authenticate: Callable[[], _T]) -> _T:
    """Run ``authenticate``, counting failures per client address (429 once over the limit).

    An address over the limit is refused before its credentials are even looked at, so
    guessing stops for the rest of the window whatever it sends. A request without any
    credentials is not a guess (and costs no look-up): it gets its 401 but is not counted.
    """
    failures: FailureLimiter = request.app.state.auth_failures
    address = client_address(request)
    failures.check(address)
    try:
        return authenticate()
    except AuthError as exc:
        if exc.code != "missing_token":
            failures.failed(address)
        raise


def require(scope: str) -> Callable[[Request], Awaitable[TokenInfo]]:
    """A dependency that authenticates the caller, checks ``scope`` and counts the request."""

    async def dependency(request: Request) -> TokenInfo:
        store: TokenStore = request.app.state.tokens
        info = guarded(request, lambda: store.authenticate(request.headers.get("authorization")))
        limiter: RateLimiter = request.app.state.limiter
        request.state.rate_headers = limiter.hit(info.token_hash)
        if not info.allows(scope):
            raise Forbidden(f"this token has scope {info.scope!r}; this endpoint needs {scope!r}")
        return info

    return dependency
