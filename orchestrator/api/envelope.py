"""The response envelope and the mapping of every error onto it.

Success: ``{"ok": true, ...named fields}``. Failure: ``{"ok": false, "error": {"code",
"message", "field"?}}`` with a machine-readable code - for our own errors, request
validation errors, unknown routes (404), wrong methods (405) and anything unexpected (500,
with no internals in the message).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from policies.errors import SluiceError

log = logging.getLogger("sluice.api")


class RateLimited(SluiceError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.headers = dict(headers)


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
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse(
            error_body(code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "internal error; see the service log"), status_code=500
        )
