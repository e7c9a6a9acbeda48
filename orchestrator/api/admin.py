"""Workspace endpoints: tokens, the audit log, health and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from orchestrator.api.deps import require, service_of
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import CreateToken, PathId
from orchestrator.operators import ROLE_SCOPE, SCOPE_ROLE
from orchestrator.service import Service
from orchestrator.tokens import TokenInfo, TokenStore

router = APIRouter(tags=["workspace"])
# /health alone: the application tries it first (orchestrator.api.app)
health_router = APIRouter(tags=["workspace"])
Svc = Annotated[Service, Depends(service_of)]


async def tokens_of(request: Request) -> TokenStore:
    store: TokenStore = request.app.state.tokens
    return store


Tokens = Annotated[TokenStore, Depends(tokens_of)]
Admin = Annotated[TokenInfo, Depends(require("admin"))]
Reader = Annotated[TokenInfo, Depends(require("read"))]


@health_router.get("/health")
async def health(svc: Svc) -> dict[str, Any]:
    """Liveness and readiness, without authentication (for load balancers)."""
    return ok(ready=svc.started, queued=svc.dispatcher.pending_jobs())


def metrics_text(request: Request) -> PlainTextResponse:
    """The process's own series (adapter operations, batches) and the service's."""
    text = generate_latest() + generate_latest(request.app.state.metrics)
    return PlainTextResponse(text.decode(), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request, _: Reader) -> PlainTextResponse:
    # the scrape queries the store: off the event loop, so requests are not held up
    return await run_in_threadpool(metrics_text, request)


@router.get("/workspace/tokens")
async def list_tokens(store: Tokens, _: Admin) -> dict[str, Any]:
    return ok(tokens=[{**t, "role": SCOPE_ROLE.get(str(t["scope"]))} for t in store.list()])


@router.post("/workspace/tokens", status_code=201)
async def create_token(body: CreateToken, store: Tokens, who: Admin) -> dict[str, Any]:
    scope = ROLE_SCOPE.get(body.scope, body.scope)  # a role name is taken for its scope
    token, info = store.create(body.name, scope, actor=who.name, expires_in=body.expires_in)
    return ok(
        token=token,
        id=info.id,
        name=info.name,
        scope=info.scope,
        role=SCOPE_ROLE[info.scope],
        expires_at=info.expires_at.isoformat() if info.expires_at else None,
    )


@router.delete("/workspace/tokens/{token_id}")
async def revoke_token(token_id: PathId, store: Tokens, who: Admin) -> dict[str, Any]:
    store.revoke(token_id, actor=who.name)
    return ok(revoked=token_id)


@router.get("/audit/verify")
async def audit_verify(svc: Svc, _: Reader) -> dict[str, Any]:
    res = svc.verify_audit()
    return ok(
        valid=res.ok,
        entries=res.entries,
        first_bad_id=res.first_bad_id,
        problem=res.problem or None,
        code=str(res.code),
        head=res.head,
    )
