"""The response envelope and the mapping of every error onto it.

Success: ``{"ok": true, ...named fields}``. Failure: ``{"ok": false, "error": {"code",
"message", "field"?}}`` with a machine-readable code - for our own errors, request
validation errors, unknown routes (404), wrong methods (405, with ``Allow``), unreadable
bodies (400) and anything unexpected (500, with no internals in the message).
:class:`ErrorEnvelope` is the failure shape the OpenAPI document declares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from policies.errors import SluiceError

log = logging.getLogger("sluice.api")


class RateLimited(SluiceError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.headers = dict(headers)


class EarlyRefusal(StarletteHTTPException):
    """A refusal raised while the request body is being read (by the request guard).

    An ``HTTPException`` because FastAPI passes those through its body reading untouched
    (anything else becomes a generic 400); the handler answers with ``error``'s envelope.
    """

    def __init__(self, error: SluiceError, status: int) -> None:
        super().__init__(status_code=status, detail=error.message)
        self.error = error
        self.headers = dict(getattr(error, "headers", None) or {})


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    """Every failure answer: ``{"ok": false, "error": {"code", "message", "field"?}}``."""

    ok: Literal[False]
    error: ErrorDetail


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"ok": False, "error": err}


_PYDANTIC_CODES = {
    "missing": "missing_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(SluiceError)
    async def _sluice(_: Request, exc: SluiceError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = _loc(tuple(err.get("loc", ())))
        code = _PYDANTIC_CODES.get(str(err.get("type")), "invalid_parameter")
        msg = str(err.get("msg", "invalid input")).removeprefix("Value error, ")
        if err.get("type") == "string_pattern_mismatch" and str(
            (err.get("ctx") or {}).get("pattern", "")
        ).startswith("^[^\\x00-\\x1f"):
            msg = "must not contain control characters or line breaks"
        if not field and code != "invalid_json":
            msg = "the request body must be a JSON object"
        elif code == "missing_parameter":
            msg = f"{field} is required"
        elif code == "unknown_parameter":
            msg = f"unknown parameter {field}"
        elif field:
            msg = f"{field}: {msg}"
        return JSONResponse(error_body(code, msg, field or None), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc, EarlyRefusal):
            err = exc.error
            return JSONResponse(
                error_body(err.code, err.message, err.field),
                status_code=exc.status_code,
                headers=headers,
            )
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        codes = {
            400: "invalid_body",
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
        }
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        message = {
            400: "the request body could not be read as JSON",
            404: "no such endpoint",
            405: f"method not allowed on this endpoint (allowed: {headers.get('Allow', '')})",
        }.get(exc.status_code, str(exc.detail))
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "internal error; see the service log"), status_code=500
        )


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's).

    Asked of the router itself, one method at a time, so routes included from routers are
    covered however the framework nests them. Only runs for a 405.
    """
    routes = request.app.router.routes
    allowed = [
        method
        for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    if "GET" in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return ", ".join(allowed)
