"""The FastAPI application: envelope, auth, rate limit, routers, and the service lifespan."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.api import (
    admin,
    agent_jobs,
    bulk,
    channels,
    dashboard,
    detectors,
    envelope,
    events,
    mitigation,
    openapi,
    pcaps,
    policy,
    runbooks,
    scrubbing,
    signals,
)
from orchestrator.api.deps import RateLimiter
from orchestrator.api.guard import RequestGuard
from orchestrator.automation import Automation
from orchestrator.core import Core
from orchestrator.jobs import JobStore
from orchestrator.metrics import registry_for
from orchestrator.nodes import NodeRegistry
from orchestrator.operators import OperatorStore
from orchestrator.pcaps import build_store
from orchestrator.policy_doc import PolicyDocument
from orchestrator.service import Service
from orchestrator.tokens import FailureLimiter, TokenStore

log = logging.getLogger("sluice.api")
API_PREFIX = "/api/v1"
DOCS_URL = f"{API_PREFIX}/docs"
PCAP_UPLOAD_SECONDS = 600.0
# Swagger UI's files, from a Python package: the docs work where there is no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


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
        # what start-up built lives as long as the process: out of the collector's way,
        # so a collection under load walks only what requests allocate; and collections
        # less often (a bulk request allocates a lot that is freed by reference counting:
        # collections took 10-20 % of its CPU at the default thresholds, 4 % at these)
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        log.info("sluice ready: %d adapters", len(service.hub.records()))
        try:
            yield
        finally:
            await core.stop()
            app.state.limiter.close()
            app.state.agent_limiter.close()

    app = FastAPI(
        title="Sluice",
        version="1",
        description="BGP mitigation orchestration (REST API v1)",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # FastAPI's OpenTelemetry instrumentation, unused here (metrics are Prometheus'):
        # left on, it asked the global OTel providers (and the environment) whether to
        # trace, on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.state.tokens = tokens
    app.state.operators = OperatorStore(service.engine, service.audit)
    app.state.metrics = registry_for(service, runtime)
    settings, engine = service.settings, service.engine
    app.state.limiter = RateLimiter.for_engine(settings.rate_limit_per_minute, engine, "api")
    app.state.agent_limiter = RateLimiter.for_engine(
        settings.agent_rate_limit_per_minute, engine, "agent"
    )
    app.state.auth_failures = FailureLimiter(service.settings.auth_failures_per_minute)
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
    app.state.automation = Automation(service, app.state.jobs)
    core.consumers.append(app.state.automation)
    envelope.install(app)
    openapi.install(app)

    app.add_middleware(
        RequestGuard,
        max_body_bytes=service.settings.max_body_bytes,
        body_timeout=service.settings.http_body_timeout_seconds,
        # PCAP uploads stream to disk under the store's own size limit (pcap_too_large);
        # the guard is only a backstop above it, with 10 minutes for a slow link
        large_bodies=dict.fromkeys(
            (f"{API_PREFIX}/pcaps", f"{API_PREFIX}/agent/pcaps"),
            (
                service.settings.pcap_max_bytes + service.settings.max_body_bytes,
                PCAP_UPLOAD_SECONDS,
            ),
        ),
    )
    # Routing tries the routes in order, each router's in turn: the hot paths first, each
    # in a router of its own (/health, then every detector's POST /incidents, which came
    # after FastAPI's OpenAPI route, the docs and the admin router: matching took 62 us
    # for it and 18 us for /health, now 21 and 9.5 on a loaded 2-core machine). No two
    # routers share a path.
    for router in (
        admin.health_router,
        signals.intake_router,
        admin.router,
        signals.router,
        mitigation.router,
        policy.router,
        bulk.router,
        detectors.router,
        events.router,
        scrubbing.router,
        agent_jobs.router,
        pcaps.router,
        runbooks.router,
        channels.router,
        dashboard.api,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(dashboard.pages)
    _install_docs(app)
    # the route FastAPI made for the OpenAPI document (first of all) goes last
    app.router.routes.sort(key=lambda route: getattr(route, "path", None) == app.openapi_url)
    return app


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at ``/api/v1/docs``, every file served from here (no CDN)."""
    static = f"{DOCS_URL}/static"
    app.mount(static, StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{API_PREFIX}/openapi.json",
            title="Sluice API",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
