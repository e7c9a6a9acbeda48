"""Request dependencies: authentication, scopes and the per-token rate limit.

:class:`Require` is both the dependency that authenticates an API token and the bearer
security scheme the OpenAPI document declares. A request that carries a body is
authenticated by :mod:`orchestrator.api.guard` before the body is read (FastAPI reads and
parses a body before it runs dependencies); the dependency then finds the result in the
request state instead of checking the token twice.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from orchestrator.api.auth import authenticate
from orchestrator.api.envelope import RateLimited
from orchestrator.operators import SCOPE_ROLE
from orchestrator.service import Service
from orchestrator.tokens import FailureLimiter, TokenInfo
from policies.errors import AuthError, Forbidden

_T = TypeVar("_T")

# Where an authenticated caller is kept in the ASGI scope's state for this request.
CALLER_STATE = "sluice_caller"
# Where an authenticated node (agent endpoints) is kept likewise.
NODE_STATE = "sluice_node"
BEARER_SCHEME = "apiToken"
# Agent endpoints authenticate with a node key (Authorization: Bearer + X-Node-UUID).
AGENT_PREFIX = "/api/v1/agent/"


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


def counted(app_state: Any, address: str, authenticate: Callable[[], _T]) -> _T:
    """Run ``authenticate``, counting failures per client address (429 once over the limit).

    An address over the limit is refused before its credentials are even looked at, so
    guessing stops for the rest of the window whatever it sends. A request without any
    credentials is not a guess (and costs no look-up): it gets its 401 but is not counted.
    """
    failures: FailureLimiter = app_state.auth_failures
    failures.check(address)
    try:
        return authenticate()
    except AuthError as exc:
        if exc.code != "missing_token":
            failures.failed(address)
        raise


def guarded(request: Request, authenticate: Callable[[], _T]) -> _T:
    """:func:`counted` for a request's client address."""
    return counted(request.app.state, client_address(request), authenticate)


def authorize(request: Request, scope: str) -> TokenInfo:
    """Authenticate the caller (a bearer token or an operator's login session), count the
    request, check ``scope``; remember the caller in the request state.

    The rate-limit headers go to the request state for
    :class:`~orchestrator.api.guard.RequestGuard` to add to the answer, and so does the
    caller, so a second call for the same request (guard, then dependency) costs nothing.
    Failed authentication is counted per client address.
    """
    state: dict[str, Any] = request.scope.setdefault("state", {})
    info: TokenInfo | None = state.get(CALLER_STATE)
    if info is None:
        info = guarded(request, lambda: authenticate(request))
        limiter: RateLimiter = request.app.state.limiter
        state["rate_headers"] = limiter.hit(info.token_hash)
        state[CALLER_STATE] = info
    if not info.allows(scope):
        raise Forbidden(
            f"this caller has scope {info.scope!r} (role {SCOPE_ROLE[info.scope]}); "
            f"this endpoint needs {scope!r} (role {SCOPE_ROLE[scope]})"
        )
    return info


class Require(SecurityBase):
    """Dependency: an API token (``Authorization: Bearer ...``) with at least ``scope``."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.scheme_name = BEARER_SCHEME
        self.model = HTTPBearerModel(
            description="An API token (`sluice tokens create`), scope read, write or admin.",
            bearerFormat="opaque",
        )

    async def __call__(self, request: Request) -> TokenInfo:
        return authorize(request, self.scope)


def require(scope: str) -> Require:
    """A dependency that authenticates the caller, checks ``scope`` and counts the request."""
    return Require(scope)
