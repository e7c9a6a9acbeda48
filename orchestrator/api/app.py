"""The FastAPI application: envelope, auth, rate limit, routers, and the service lifespan."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api import (
    admin,
    agent_jobs,
    dashboard,
    detectors,
    envelope,
    events,
    mitigation,
    pcaps,
    policy,
    scrubbing,
    signals,
)
from orchestrator.api.deps import RateLimiter
from orchestrator.core import Core
from orchestrator.jobs import JobStore
from orchestrator.metrics import registry_for
from orchestrator.nodes import NodeRegistry
from orchestrator.operators import OperatorStore
from orchestrator.pcaps import build_store
from orchestrator.policy_doc import PolicyDocument
from orchestrator.service import Service
from orchestrator.tokens import TokenStore

log = logging.getLogger("sluice.api")
API_PREFIX = "/api/v1"


def bootstrap_token(service: Service, tokens: TokenStore) -> str | None:
    """On the first start, create the admin token (from SLUICE_ADMIN_TOKEN or random)."""
    if tokens.count():
        return None
    given = service.settings.admin_token
    token, _ = tokens.create(
        "admin", "admin", actor="system", token=given.get_secret_value() if given else None
    )
    if given is None:
        # Shown once, on the console only: never in the log, never stored in clear.
        sys.stdout.write(
            "\nFirst start: created the admin API token (shown only now, store it safely):\n"
            f"  {token}\n\n"
        )
        sys.stdout.flush()
        return token
    return None


class HeadersMiddleware:
    """Plain ASGI (BaseHTTPMiddleware costs a task and a stream per request).

    * JSON is the only body this API takes: a POST/PUT/PATCH without a Content-Type (curl
      -d sends form encoding by default) is read as JSON.
    * The rate-limit headers the auth dependency computed go on every answer, errors too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if not ctype or ctype.startswith(b"application/x-www-form-urlencoded"):
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = state.get("rate_headers")
                if extra:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    message["headers"] = [
                        *message.get("headers", []),
                        *(
                            (k.lower().encode(), v.encode())
                            for k, v in extra.items()
                            if k.lower().encode() not in present
                        ),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(service: Service, *, run_scheduler: bool = True) -> FastAPI:
    tokens = TokenStore(service.engine, service.audit)
    core = Core(service, run_scheduler=run_scheduler)
    runtime = core.runtime
    policy_doc = PolicyDocument(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.start(app.state.extra_jobs)
        bootstrap_token(service, tokens)
        policy_doc.load()
        log.info("sluice ready: %d adapters", len(service.hub.records()))
        try:
            yield
        finally:
            await core.stop()

    app = FastAPI(
        title="Sluice",
        version="1",
        description="BGP mitigation orchestration (REST API v1)",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.tokens = tokens
    app.state.operators = OperatorStore(service.engine, service.audit)
    app.state.metrics = registry_for(service, runtime)
    app.state.limiter = RateLimiter(service.settings.rate_limit_per_minute)
    app.state.pcaps = build_store(service)
    app.state.extra_jobs = {"pcap-retention": (600.0, app.state.pcaps.sweep_due)}
    app.state.runtime = runtime
    app.state.policy_doc = policy_doc
    app.state.nodes = NodeRegistry(service.engine, service.audit)
    app.state.jobs = JobStore(
        service.engine,
        service.audit,
        # a node's firewall never drops its allowlisted sources (workspace + its own)
        protected_for=lambda node: [
            e.prefix
            for e in service.policy.allowlist.entries
            if e.scope == "workspace" or e.node == node
        ],
    )
    envelope.install(app)

    app.add_middleware(HeadersMiddleware)
    app.include_router(mitigation.router, prefix=API_PREFIX)
    app.include_router(admin.router, prefix=API_PREFIX)
    app.include_router(policy.router, prefix=API_PREFIX)
    app.include_router(signals.router, prefix=API_PREFIX)
    app.include_router(detectors.router, prefix=API_PREFIX)
    app.include_router(events.router, prefix=API_PREFIX)
    app.include_router(scrubbing.router, prefix=API_PREFIX)
    app.include_router(agent_jobs.router, prefix=API_PREFIX)
    app.include_router(pcaps.router, prefix=API_PREFIX)
    app.include_router(dashboard.api, prefix=API_PREFIX)
    app.include_router(dashboard.pages)
    return app
