"""The OpenAPI document: FastAPI's, completed with every error answer the API gives.

FastAPI documents the success answer and a 422 of its own shape. Here each operation also
gets the failure statuses it can answer, each with the one envelope schema
(``ErrorEnvelope``), derived from what the operation is:

* authenticated by an API token (:class:`~orchestrator.api.deps.Require`, declared as the
  ``apiToken`` bearer scheme): 401, 403, 429;
* an agent endpoint (node key, the ``nodeKey`` bearer scheme): 401, 429;
* takes parameters or a body: 422; takes a body (any method but GET): 400 (not JSON),
  408 (body too slow), 413 (body too large);
* names an object in its path: 404; changes something: 404 (a named object is missing)
  and 409 (conflicts with the current state, or managed by the policy directory);
* talks to a backend (:data:`BACKEND_OPERATIONS`): 502;
* and 500, which should never be seen.

Wrong methods answer 405 with ``Allow``; that answer belongs to no operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from orchestrator.api.deps import AGENT_PREFIX, BEARER_SCHEME

ERROR_SCHEMA = "ErrorEnvelope"
NODE_SCHEME = "nodeKey"
# (method, path) of operations whose answer depends on a backend (adapter, provider).
# the dashboard's login and logout take no token: a password (failures counted per
# address, 429 past the limit) or the session cookie (its CSRF header, 403 without)
SESSION_OPERATIONS = {("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/logout")}
BACKEND_OPERATIONS = {
    ("post", "/api/v1/mitigation/rules"),
    ("delete", "/api/v1/mitigation/rules/{rule_id}"),
    ("post", "/api/v1/mitigation/adapters"),
    ("delete", "/api/v1/mitigation/adapters/{adapter_id}"),
    ("post", "/api/v1/mitigation/adapters/{adapter_id}/test"),
    ("post", "/api/v1/scrubbing"),
    ("delete", "/api/v1/scrubbing/{integration_id}"),
    ("get", "/api/v1/scrubbing/{integration_id}/status"),
    ("post", "/api/v1/scrubbing/{integration_id}/test"),
    ("post", "/api/v1/scrubbing/{integration_id}/announce"),
    ("post", "/api/v1/scrubbing/{integration_id}/withdraw"),
}
# What an operation's error status means beyond the general description.
NOTES = {
    ("post", "/api/v1/incidents/bulk"): {
        413: "The body is larger than the configured limit, or it holds more signals than "
        "`bulk_max_signals` (`batch_too_large`).",
        422: 'The body is not `{"signals": [...]}` with at least one signal '
        "(`empty_batch`, ...). A bad signal inside the list does not refuse the request: "
        "its error is its item of `results`.",
    },
}
# Operations whose success answer is a stream, not the JSON envelope.
STREAMS = {("get", "/api/v1/events/stream"): "text/event-stream"}
_DESCRIPTIONS = {
    400: "The body is not readable JSON.",
    401: "Missing, invalid or expired credentials.",
    403: "The token's scope does not allow this operation.",
    404: "The named object (or one the request refers to) does not exist.",
    408: "The request body did not arrive in time.",
    409: "The request conflicts with the current state, or the object is read-only.",
    413: "The request body is larger than the configured limit.",
    422: "A parameter or body field is invalid (`error.field` names it).",
    429: "Rate limit exceeded; retry after `Retry-After` seconds.",
    500: "Unexpected error (see the service log).",
    502: "The backend (adapter or provider) failed or refused.",
}
_ENVELOPE: dict[str, Any] = {
    "title": ERROR_SCHEMA,
    "type": "object",
    "required": ["ok", "error"],
    "properties": {
        "ok": {"type": "boolean", "const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable error code"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the input to blame, if one is"},
            },
        },
    },
}
_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": text}
    for name, text in (
        ("Retry-After", "seconds until a request will be accepted again"),
        ("X-RateLimit-Limit", "requests allowed per minute"),
        ("X-RateLimit-Remaining", "requests left in the current window"),
        ("X-RateLimit-Reset", "when the window resets (Unix time)"),
    )
}


def _statuses(method: str, path: str, op: dict[str, Any]) -> set[int]:
    security = op.get("security", [])
    params = op.get("parameters", [])
    has_body = "requestBody" in op
    statuses = {500}
    if any(BEARER_SCHEME in req for req in security):
        statuses |= {401, 403, 429}
    if path.startswith(AGENT_PREFIX):
        statuses |= {401, 429}
    if params or has_body or method != "get":
        statuses.add(422)  # (some handlers read their body themselves: POST /incidents)
    if has_body or method != "get":
        statuses |= {400, 408, 413}
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)
    if method != "get":
        statuses |= {404, 409}
    if (method, path) in BACKEND_OPERATIONS:
        statuses.add(502)
    if (method, path) in SESSION_OPERATIONS:
        statuses |= {401, 403, 429}
    return statuses


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers, the envelope schema and the node-key scheme (idempotent)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = _ENVELOPE
    schemes = components.setdefault("securitySchemes", {})
    schemes[NODE_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A node key (returned once by POST /nodes), sent with X-Node-UUID.",
    }
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if path.startswith(AGENT_PREFIX):
                op["security"] = [{NODE_SCHEME: []}]
            responses = op["responses"]
            stream = STREAMS.get((method, path))
            if stream is not None:
                responses["200"]["content"] = {stream: {"schema": {"type": "string"}}}
            for status in sorted(_statuses(method, path, op)):
                answer: dict[str, Any] = {
                    "description": NOTES.get((method, path), {}).get(status, _DESCRIPTIONS[status]),
                    "content": {"application/json": {"schema": ref}},
                }
                if status == 429:
                    answer["headers"] = _RATE_HEADERS
                responses[str(status)] = answer
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def install(app: FastAPI) -> None:
    """Serve the completed document at the app's ``openapi_url``."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        return complete(generate())

    app.openapi = openapi  # type: ignore[method-assign]
