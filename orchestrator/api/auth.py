"""Who is calling: an API token (``Authorization: Bearer``) or an operator's login session.

A session comes from the ``sluice_session`` cookie (HttpOnly, SameSite=Strict). A request
that changes something (any method but GET/HEAD/OPTIONS) made with the cookie must also
carry the session's CSRF token in ``X-CSRF-Token``; a bearer token needs none (a browser
never adds it by itself). Either way the caller is a :class:`TokenInfo` whose scope is the
role's (viewer=read, operator=write, admin=admin), so every endpoint checks one ladder.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from orchestrator.operators import OperatorStore
from orchestrator.tokens import TokenInfo, TokenStore
from policies.errors import Forbidden

COOKIE = "sluice_session"


def _authorization(request: Request) -> str | None:
    """The Authorization header, as ``request.headers.get`` finds it (the first one; ASGI
    header names are lower case), without building the request's header map."""
    for key, value in request.scope["headers"]:
        if key == b"authorization":
            return bytes(value).decode("latin-1")
    return None


CSRF_HEADER = "x-csrf-token"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate(request: Request) -> TokenInfo:
    header = _authorization(request)
    # a bearer token wins: the cookies are parsed only without one
    sid = None if header else request.cookies.get(COOKIE)
    if header or not sid:
        store: TokenStore = request.app.state.tokens
        return store.authenticate(header)
    operators: OperatorStore = request.app.state.operators
    sess = operators.session(sid)
    if request.method not in SAFE:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
            raise Forbidden(
                "missing or wrong X-CSRF-Token header for a change made with a login session",
                code="csrf_failed",
            )
    return TokenInfo(
        -sess.operator_id, sess.username, sess.scope, "session:" + sess.id_hash, sess.expires_at
    )
