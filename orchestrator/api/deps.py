"""Request dependencies: authentication, scopes and the per-token rate limit."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from fastapi import Request

from orchestrator.api.auth import authenticate
from orchestrator.api.envelope import RateLimited
from orchestrator.operators import SCOPE_ROLE
from orchestrator.service import Service
from orchestrator.tokens import TokenInfo
from policies.errors import Forbidden


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


def require(scope: str) -> Callable[[Request], Awaitable[TokenInfo]]:
    """A dependency that authenticates the caller, checks ``scope`` and counts the request."""

    async def dependency(request: Request) -> TokenInfo:
        info = authenticate(request)  # a bearer token or an operator's session
        limiter: RateLimiter = request.app.state.limiter
        request.state.rate_headers = limiter.hit(info.token_hash)
        if not info.allows(scope):
            raise Forbidden(
                f"this caller has scope {info.scope!r} (role {SCOPE_ROLE[info.scope]}); "
                f"this endpoint needs {scope!r} (role {SCOPE_ROLE[scope]})"
            )
        return info

    return dependency
