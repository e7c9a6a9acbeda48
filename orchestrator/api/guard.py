"""The request guard: what every HTTP request goes through before a handler sees it.

A plain ASGI middleware (BaseHTTPMiddleware costs a task and a stream per request):

* **Authentication before the body.** FastAPI reads and parses a request body before it
  runs a route's dependencies, so a token check in a dependency comes too late for a
  large body. The guard wraps ``receive``: the first time the application asks for the
  body, the route it was routed to is known (``scope["route"]``), and the guard checks
  that route's credential first - the API token and scope of a :class:`Require`
  dependency, or the node key of an agent endpoint. A refusal answers at once, the body
  unread, and the connection is closed.
* **A body size limit, enforced while reading** (uploads that stream their body to disk,
  PCAPs, get their own limit and deadline). A ``Content-Length`` over the limit is
  refused with 413 before anything is read; a chunked body is counted as it arrives and
  refused the moment it passes the limit. Nothing past the limit is buffered.
* **A body deadline.** Once the application starts reading, the whole body must arrive
  within ``http_body_timeout_seconds`` (408 otherwise): a client dripping a body one byte
  at a time does not hold a request open for ever. (Header timeouts are the server's job:
  :mod:`orchestrator.api.server`.)
* JSON is the only body this API takes: a POST/PUT/PATCH without a Content-Type (curl -d
  sends form encoding by default) is read as JSON.
* The rate-limit headers authentication computed go on every answer, errors too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.deps import AGENT_PREFIX, NODE_STATE, Require, authorize, counted
from orchestrator.api.envelope import EarlyRefusal, error_body
from policies.errors import SluiceError

_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length, or 0 without one and None when it is invalid; chunked or not).

    On the way, a POST/PUT/PATCH without a JSON Content-Type is made JSON.
    """
    raw = scope["headers"]
    length: int | None = 0
    chunked = False
    ctype = b""
    for key, value in raw:
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
            if length is not None and length < 0:
                length = None
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"content-type":
            ctype = value
    if scope["method"].encode() in _BODY_METHODS and (
        not ctype or ctype.startswith(b"application/x-www-form-urlencoded")
    ):
        scope["headers"] = [
            *((k, v) for k, v in raw if k != b"content-type"),
            (b"content-type", b"application/json"),
        ]
    return length, chunked


def _requirement(route: Any) -> Require | None:
    """The :class:`Require` dependency a route (or one of its dependencies) declares."""
    dependant = getattr(route, "dependant", None)
    stack = list(getattr(dependant, "dependencies", ()))
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Require):
            return dep.call
        stack.extend(dep.dependencies)
    return None


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout: float,
        large_bodies: Mapping[str, tuple[int, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``large_bodies``: path -> (size limit, deadline) for uploads that stream their
        body themselves (PCAPs), instead of ``max_body_bytes`` and ``body_timeout``."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.large_bodies = dict(large_bodies or {})
        self.clock = clock
        self._requirements: dict[int, Require | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _framing(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        limit, timeout = self.large_bodies.get(
            scope["path"], (self.max_body_bytes, self.body_timeout)
        )
        if length is None:
            error = SluiceError("invalid Content-Length", code="invalid_body")
            await self._refuse(scope, send, error, 400)
            return
        if length > limit:
            await self._refuse(scope, send, self._too_large(limit), 413)
            return
        body = _Body(has_body=length > 0 or chunked)

        async def guarded_receive() -> Message:
            if body.done:
                return await receive()
            if not body.checked:
                body.checked = True
                await self._authenticate(scope, state)
                body.deadline = self.clock() + timeout
            left = body.deadline - self.clock()
            try:
                if left > 0 and _buffered(receive):  # answered at once: no timer to set
                    message = await receive()
                else:
                    async with asyncio.timeout(max(0.0, left)):
                        message = await receive()
            except TimeoutError:
                raise EarlyRefusal(
                    SluiceError(
                        f"the request body did not arrive within {timeout:g} s",
                        code="request_timeout",
                    ),
                    408,
                ) from None
            if message["type"] == "http.request":
                body.size += len(message.get("body", b""))
                if body.size > limit:
                    raise EarlyRefusal(self._too_large(limit), 413)
                body.done = not message.get("more_body", False)
            else:
                body.done = True
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = state.get("rate_headers")
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                if extra:
                    headers += [
                        (k.lower().encode(), v.encode())
                        for k, v in extra.items()
                        if k.lower().encode() not in present
                    ]
                if body.has_body and not body.done and b"connection" not in present:
                    # answered before the body was read: do not read (or wait for) the rest
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, guarded_receive if body.has_body else receive, send_with_headers)

    async def _authenticate(self, scope: Scope, state: dict[str, Any]) -> None:
        """Check the credential of the route this request was routed to (raises EarlyRefusal)."""
        route = scope.get("route")
        key = id(route)
        if key not in self._requirements:
            self._requirements[key] = _requirement(route)
        required = self._requirements[key]
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        app_state = scope["app"].state
        try:
            if required is not None:
                # a bearer token or a login session's cookie (+ CSRF header)
                await authorize(Request(scope), required.scope)
            elif str(scope.get("path", "")).startswith(AGENT_PREFIX):
                headers = dict(scope["headers"])
                auth = headers.get(b"authorization")
                uuid = headers.get(b"x-node-uuid")
                # kept for the endpoint's own dependency, which then neither looks the key
                # up again nor counts the request twice
                state[NODE_STATE] = counted(
                    app_state,
                    address,
                    lambda: app_state.nodes.authenticate(
                        auth.decode("latin-1") if auth is not None else None,
                        uuid.decode("latin-1") if uuid is not None else None,
                    ),
                )
        except SluiceError as exc:
            raise EarlyRefusal(exc, exc.status) from None

    def _too_large(self, limit: int) -> SluiceError:
        return SluiceError(f"the request body is larger than {limit} bytes", code="body_too_large")

    async def _refuse(self, scope: Scope, send: Send, error: SluiceError, status: int) -> None:
        response = JSONResponse(
            error_body(error.code, error.message, error.field),
            status_code=status,
            headers={"Connection": "close"},
        )

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


def _buffered(receive: Receive) -> bool:
    """Whether ``receive`` answers without waiting: uvicorn's request cycle (whose bound
    method it is) already holds the message, e.g. a small body that came with the
    headers. A deadline costs more per request than the rest of the guard (a timer set
    and cancelled), and there is nothing to wait for; any other ``receive`` is waited on
    under the deadline."""
    event = getattr(getattr(receive, "__self__", None), "message_event", None)
    return isinstance(event, asyncio.Event) and event.is_set()


class _Body:
    __slots__ = ("checked", "deadline", "done", "has_body", "size")

    def __init__(self, *, has_body: bool) -> None:
        self.has_body = has_body
        self.checked = False
        self.done = not has_body
        self.size = 0
        self.deadline = 0.0
