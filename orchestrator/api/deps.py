"""Request dependencies: authentication, scopes and the per-token rate limit.

:class:`Require` is both the dependency that authenticates an API token and the bearer
security scheme the OpenAPI document declares. A request that carries a body is
authenticated by :mod:`orchestrator.api.guard` before the body is read (FastAPI reads and
parses a body before it runs dependencies); the dependency then finds the result in the
request state instead of checking the token twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute
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
        self._limit_text = str(per_minute)
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
        """Count one request (blocking: on PostgreSQL one round trip)."""
        now = self.clock()
        if self.windows is not None:
            return self._answer(self.windows.hit(key, self.per_minute, now), now)
        return self._memory(key, now)

    async def ahit(self, key: str) -> dict[str, str]:
        """Count one request without blocking the event loop: on PostgreSQL the hits of
        concurrent requests are counted together off the loop (:meth:`SharedWindows.ahit`)."""
        now = self.clock()
        if self.windows is not None:
            return self._answer(await self.windows.ahit(key, self.per_minute, now), now)
        return self._memory(key, now)

    def _answer(self, counted: tuple[int | None, int], now: float) -> dict[str, str]:
        hits, reset = counted
        if hits is None:
            self._refuse(max(1, math.ceil(reset - now)), reset)
        return self._headers(self.per_minute - (hits or 0), reset)

    def _memory(self, key: str, now: float) -> dict[str, str]:
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
            "X-RateLimit-Limit": self._limit_text,
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

    The API counts through :meth:`ahit`: the round trips run on a thread of the limiter's
    own, never on the event loop, and the hits that arrive while one is under way are
    counted together, one statement per key for all of them (:meth:`_count`), so the
    database sees one round trip per key and batch however many requests arrive.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        # its own engine without a pool: the connection, with its session setting, is
        # never handed to other work, and closes with the limiter
        self.engine = create_engine(engine.url, poolclass=NullPool)
        self.prefix = f"{name}:"
        self._swept = -1
        self._conn: Connection | None = None
        self._mutex = threading.Lock()
        # hits waiting for the thread: (key, limit, now, future, loop)
        self._pending: list[tuple[str, int, float, asyncio.Future[tuple[int | None, int]]]] = []
        self._draining = False
        self._plock = threading.Lock()  # guards _pending and _draining (loop and thread)
        self._pool: ThreadPoolExecutor | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("SET synchronous_commit = off"))
            self._conn = conn
        return self._conn

    def _add(self, key: str, minute: int, n: int, limit: int) -> int | None:
        """Add ``n`` hits to the key's minute if they all fit under ``limit`` (one
        statement: the row's lock makes it exact across instances); the new count, or
        None when they do not all fit (nothing added then)."""
        stmt = (
            pg_insert(rate_windows)
            .values(key=self.prefix + key, minute=minute, hits=n)
            .on_conflict_do_update(
                index_elements=["key", "minute"],
                set_={"hits": rate_windows.c.hits + n},
                where=rate_windows.c.hits + n <= limit,
            )
            .returning(rate_windows.c.hits)
        )
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
        return None if hits is None else int(hits)

    def hit(self, key: str, limit: int, now: float) -> tuple[int | None, int]:
        """Count one request; returns (hits in this minute or None when over the limit,
        the time the window resets)."""
        minute = int(now // 60)
        with self._mutex:
            hits = self._add(key, minute, 1, limit)
        return hits, (minute + 1) * 60

    def _count(self, key: str, minute: int, n: int, limit: int) -> list[int | None]:
        """Count ``n`` requests of one key and minute together: per request (in order) its
        count in the minute, or None when over the limit. One statement when they all
        fit; near the limit, one per request until the first refusal."""
        fits = min(n, limit)
        last = self._add(key, minute, fits, limit) if fits else None
        if last is not None:
            first = last - fits + 1
            return [first + i for i in range(fits)] + [None] * (n - fits)
        out: list[int | None] = []
        for _ in range(n):
            hits = None if out and out[-1] is None else self._add(key, minute, 1, limit)
            out.append(hits)
        return out

    async def ahit(self, key: str, limit: int, now: float) -> tuple[int | None, int]:
        """:meth:`hit` off the event loop, counted together with the hits that arrive
        while the limiter's thread is busy."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int | None, int]] = loop.create_future()
        with self._plock:
            self._pending.append((key, limit, now, future))
            start = not self._draining
            self._draining = True
        if start:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-ratelimit")
            loop.run_in_executor(self._pool, self._drain, loop)
        return await future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the limiter's thread: count what is pending, again until nothing is."""
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self._count_batch(loop, batch)
            except BaseException as exc:  # never leave a request waiting
                _reply(loop, _fail, [b[3] for b in batch], RuntimeError(str(exc)))
                with self._plock:
                    self._draining = False
                raise

    def _count_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[str, int, float, asyncio.Future[tuple[int | None, int]]]],
    ) -> None:
        groups: dict[tuple[str, int, int], list[asyncio.Future[tuple[int | None, int]]]]
        groups = {}
        for key, limit, now, future in batch:
            groups.setdefault((key, int(now // 60), limit), []).append(future)
        for (key, minute, limit), futures in groups.items():
            try:
                with self._mutex:
                    counts = self._count(key, minute, len(futures), limit)
            except Exception as exc:  # every request of the group gets the error
                _reply(loop, _fail, futures, exc)
                continue
            reset = (minute + 1) * 60
            _reply(loop, _answer, futures, [(c, reset) for c in counts])

    def _take(
        self,
    ) -> list[tuple[str, int, float, asyncio.Future[tuple[int | None, int]]]]:
        """The pending hits (none: the drain ends, the next hit starts another)."""
        with self._plock:
            out = self._pending
            self._pending = []
            if not out:
                self._draining = False
            return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.engine.dispose()


def _reply(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(fn, *args)


def _answer(
    futures: list[asyncio.Future[tuple[int | None, int]]], results: list[tuple[int | None, int]]
) -> None:
    for future, result in zip(futures, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(futures: list[asyncio.Future[tuple[int | None, int]]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


# The accessors are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread,
# a hand-off that cost more than the attribute read itself on every request.
async def service_of(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def client_address(request: Request) -> str:
    # from the scope: Request.client builds an Address tuple on every call
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


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


async def authorize(request: Request, scope: str) -> TokenInfo:
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
        state["rate_headers"] = await limiter.ahit(info.token_hash)
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
        return await authorize(request, self.scope)


def require(scope: str) -> Require:
    """A dependency that authenticates the caller, checks ``scope`` and counts the request."""
    return Require(scope)


def _lean_plan(dependant: Dependant) -> tuple[str, list[tuple[str, str]]] | None:
    """(the request parameter's name, [(parameter name, scope)] of its :class:`Require`
    dependencies) when that is all an endpoint takes; None otherwise."""
    if (
        dependant.request_param_name is None
        or dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.http_connection_param_name
        or dependant.websocket_param_name
    ):
        return None
    requires: list[tuple[str, str]] = []
    for dep in dependant.dependencies:
        if not isinstance(dep.call, Require) or dep.name is None:
            return None
        requires.append((dep.name, dep.call.scope))
    return dependant.request_param_name, requires


class LeanRoute(APIRoute):
    """A route for a hot endpoint that takes only the request and :class:`Require`
    dependencies and returns its own :class:`Response` (``POST /incidents``).

    Its handler calls :func:`authorize` for each requirement, exactly as the dependency
    would (same authentication, failure counting, rate limit and scope check), then the
    endpoint: FastAPI's general dependency solver, built for any signature, cost as much
    per request as the authentication itself. The route is declared as usual (the
    OpenAPI document, the request guard's look-up of its requirement and the exception
    handlers are unchanged); an endpoint with any other parameter, or an application with
    dependency overrides (tests), gets FastAPI's own handler.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        general = super().get_route_handler()
        plan = _lean_plan(self.dependant)
        call = self.dependant.call
        if plan is None or call is None:
            return general
        request_name, requires = plan
        endpoint: Callable[..., Awaitable[Any]] = call

        async def handler(request: Request) -> Response:
            if getattr(request.app, "dependency_overrides", None):
                return await general(request)
            kwargs: dict[str, Any] = {request_name: request}
            for name, scope in requires:
                kwargs[name] = await authorize(request, scope)
            response = await endpoint(**kwargs)
            if not isinstance(response, Response):
                raise TypeError(f"{self.path}: a LeanRoute endpoint returns a Response")
            return response

        return handler
