"""Request dependencies: authentication, scopes and the per-token rate limit.

:class:`Require` is both the dependency that authenticates an API token and the bearer
security scheme the OpenAPI document declares. A request that carries a body is
authenticated by :mod:`orchestrator.api.guard` before the body is read (FastAPI reads and
parses a body before it runs dependencies); the dependency then finds the result in the
request state instead of checking the token twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from fastapi import Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from sqlalchemy import Connection, Engine, create_engine, delete, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchestrator.api.auth import authenticate
from orchestrator.api.envelope import RateLimited
from orchestrator.operators import SCOPE_ROLE
from orchestrator.service import Service
from orchestrator.store.models import rate_windows
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
    """Requests per key (a token, a node) per minute.

    One instance (SQLite): a sliding one-minute window in memory. Several instances on one
    PostgreSQL (``windows`` given, see :func:`for_engine`): fixed one-minute windows
    counted in the database, so the limit holds across all instances.
    """

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.time,
        windows: SharedWindows | None = None,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.windows = windows
        self._hits: dict[str, deque[float]] = {}

    @classmethod
    def for_engine(cls, per_minute: int, engine: Engine, name: str) -> RateLimiter:
        """In memory on SQLite (one instance); in the database on PostgreSQL."""
        shared = engine.dialect.name == "postgresql"
        return cls(per_minute, windows=SharedWindows(engine, name) if shared else None)

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()

    def hit(self, key: str) -> dict[str, str]:
        now = self.clock()
        if self.windows is not None:
            hits, reset = self.windows.hit(key, self.per_minute, now)
            if hits is None:
                self._refuse(max(1, math.ceil(reset - now)), reset)
            return self._headers(self.per_minute - (hits or 0), reset)
        window = self._hits.setdefault(key, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        reset = math.ceil(window[0] + 60) if window else math.ceil(now + 60)
        if len(window) >= self.per_minute:
            self._refuse(max(1, math.ceil(window[0] + 60 - now)), reset)
        window.append(now)
        return self._headers(self.per_minute - len(window), reset)

    def _headers(self, remaining: int, reset: int) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.per_minute),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }

    def _refuse(self, retry: int, reset: int) -> NoReturn:
        headers = {"Retry-After": str(retry), **self._headers(0, reset)}
        raise RateLimited(
            f"rate limit of {self.per_minute} requests per minute exceeded; retry in {retry} s",
            headers,
        )


class SharedWindows:
    """Fixed one-minute windows in the database (table ``rate_windows``), one row per key
    and minute: a hit is one upsert that adds one while the count is under the limit and
    returns the new count (nothing once the limit is reached).

    It is one statement, one round trip: the limiter keeps a connection of its own in
    autocommit mode with ``synchronous_commit`` off (a counter lost in a database crash is
    harmless; a request does not wait for the WAL flush), deliberately outside the writer
    lock (orchestrator/cluster.py): counters need no ordering with other writes. Rows of
    past minutes are deleted by the first hit of each new minute in each process.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        # its own engine without a pool: the connection, with its session setting, is
        # never handed to other work, and closes with the limiter
        self.engine = create_engine(engine.url, poolclass=NullPool)
        self.prefix = f"{name}:"
        self._swept = -1
        self._conn: Connection | None = None
        self._mutex = threading.Lock()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("SET synchronous_commit = off"))
            self._conn = conn
        return self._conn

    def hit(self, key: str, limit: int, now: float) -> tuple[int | None, int]:
        """Count one request; returns (hits in this minute or None when over the limit,
        the time the window resets)."""
        minute = int(now // 60)
        stmt = (
            pg_insert(rate_windows)
            .values(key=self.prefix + key, minute=minute, hits=1)
            .on_conflict_do_update(
                index_elements=["key", "minute"],
                set_={"hits": rate_windows.c.hits + 1},
                where=rate_windows.c.hits < limit,
            )
            .returning(rate_windows.c.hits)
        )
        with self._mutex:
            try:
                hits = self._connection().execute(stmt).scalar_one_or_none()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                self._conn = None  # the server closed it: once more on a new connection
                hits = self._connection().execute(stmt).scalar_one_or_none()
            if minute != self._swept:
                self._swept = minute
                self._connection().execute(
                    delete(rate_windows).where(rate_windows.c.minute < minute - 1)
                )
        return (None if hits is None else int(hits)), (minute + 1) * 60

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.engine.dispose()


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
