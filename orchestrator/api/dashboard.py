"""The dashboard: its static page, operator logins, and the few queries only it needs.

The page (``/ui/``) is plain HTML with one hand-written script and stylesheet served from
the package; it talks to the same JSON API as everyone else, authenticated by the login
session cookie (see :mod:`orchestrator.api.auth`), and follows the event log's stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, asc, desc, func, or_, select
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import COOKIE, authenticate
from orchestrator.api.deps import guarded, require, service_of
from orchestrator.api.envelope import ok
from orchestrator.events import view as event_view
from orchestrator.lifecycle import LIVE
from orchestrator.operators import (
    ROLE_SCOPE,
    SCOPE_ROLE,
    SESSION_SECONDS,
    OperatorStore,
)
from orchestrator.service import Service
from orchestrator.store.models import audit_log, events, incidents, rules
from orchestrator.tokens import TokenInfo
from orchestrator.views import rule_view
from policies.errors import AuthError, NotFound, ValidationFailed

STATIC = Path(__file__).resolve().parent.parent / "dashboard" / "static"

api = APIRouter(tags=["dashboard"])  # under /api/v1
pages = APIRouter(include_in_schema=False)  # at the root
Svc = Annotated[Service, Depends(service_of)]
Reader = Annotated[TokenInfo, Depends(require("read"))]
Admin = Annotated[TokenInfo, Depends(require("admin"))]


async def operators_of(request: Request) -> OperatorStore:
    store: OperatorStore = request.app.state.operators
    return store


Operators = Annotated[OperatorStore, Depends(operators_of)]


# ---------------------------------------------------------------- login sessions


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Annotated[str, Field(min_length=1, max_length=100)]
    password: Annotated[str, Field(min_length=1, max_length=1000)]


class NewOperator(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Annotated[str, Field(min_length=1, max_length=100)]
    password: Annotated[str, Field(min_length=1, max_length=1000)]
    role: Literal["viewer", "operator", "admin"] = "viewer"


@api.post("/auth/login")
async def login(
    body: Login, store: Operators, svc: Svc, request: Request, response: Response
) -> dict[str, Any]:
    # a wrong password counts as a failed authentication of this address (429 past the limit)
    sid, sess = guarded(request, lambda: store.login(body.username, body.password))
    response.set_cookie(
        COOKIE,
        sid,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return ok(
        username=sess.username,
        role=sess.role,
        kind="session",
        csrf=sess.csrf,
        last_event_id=svc.events.last_id(),
    )


@api.post("/auth/logout")
async def logout(store: Operators, request: Request, response: Response) -> dict[str, Any]:
    sid = request.cookies.get(COOKIE)
    if sid and not request.headers.get("authorization"):
        try:
            authenticate(request)  # a logout through the cookie needs the CSRF header too
        except AuthError as exc:
            if exc.code == "csrf_failed":
                raise
        else:
            store.logout(sid)
    response.delete_cookie(COOKIE, path="/")
    return ok(logged_out=True)


@api.get("/auth/me")
async def me(who: Reader, store: Operators, svc: Svc, request: Request) -> dict[str, Any]:
    """Who the caller is, and for a login session its CSRF token (a reload forgets it).

    ``last_event_id`` is where the page starts following the event log's stream: what
    came before is in the page's first queries, so a load never replays the whole log.
    """
    sid = request.cookies.get(COOKIE)
    csrf = store.session(sid).csrf if sid and who.id < 0 else None
    return ok(
        username=who.name,
        role=SCOPE_ROLE[who.scope],
        scope=who.scope,
        kind="session" if who.id < 0 else "token",
        csrf=csrf,
        last_event_id=svc.events.last_id(),
    )


@api.get("/workspace/operators")
async def list_operators(store: Operators, _: Admin) -> dict[str, Any]:
    return ok(operators=store.list(), roles=ROLE_SCOPE)


@api.post("/workspace/operators", status_code=201)
async def create_operator(body: NewOperator, store: Operators, who: Admin) -> dict[str, Any]:
    return ok(operator=store.create(body.username, body.password, body.role, actor=who.name))


class ChangeOperator(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["viewer", "operator", "admin"] | None = None
    password: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    disabled: bool | None = None


@api.patch("/workspace/operators/{username}")
async def change_operator(
    username: str, body: ChangeOperator, store: Operators, who: Admin
) -> dict[str, Any]:
    """Change an operator's role, password or enabled state (its sessions end): all of
    the patch or, when any part is refused, nothing."""
    changed = store.change(
        username, role=body.role, password=body.password, disabled=body.disabled, actor=who.name
    )
    return ok(operator=changed)


@api.delete("/workspace/operators/{username}")
async def disable_operator(username: str, store: Operators, who: Admin) -> dict[str, Any]:
    store.disable(username, actor=who.name)
    return ok(disabled=username)


# ---------------------------------------------------------------- dashboard queries

SORTS = {
    "id": rules.c.id,
    "target": rules.c.target,
    "state": rules.c.state,
    "created_at": rules.c.created_at,
    "expires_at": rules.c.expires_at,
    "adapter": rules.c.adapter_id,
}


@api.get("/dashboard/overview")
async def overview(svc: Svc, _: Reader, request: Request) -> dict[str, Any]:
    with svc.engine.connect() as conn:
        by = conn.execute(
            select(rules.c.state, rules.c.adapter_id, func.count())
            .where(rules.c.state.in_([s.value for s in LIVE]) | (rules.c.state == "failed"))
            .group_by(rules.c.state, rules.c.adapter_id)
        ).all()
        open_rows = conn.execute(
            select(incidents)
            .where(incidents.c.resolved_at.is_(None))
            .order_by(incidents.c.opened_at.desc())
            .limit(50)
        ).all()
    counts: dict[str, dict[str, int]] = {}
    for state, adapter_id, n in by:
        counts.setdefault(svc.hub.name_of(adapter_id), {})[str(state)] = int(n)
    adapters = []
    for rec in svc.hub.records():
        seen = svc.sessions.get(rec.id)
        view = rec.to_api()
        adapters.append(
            {
                "id": rec.id,
                "name": rec.name,
                "adapter_type": rec.adapter_type,
                "status": view["status"],
                "sessions": dict(seen.states) if seen else {},
            }
        )
    last = svc.events.last_id()
    return ok(
        rules_by_adapter=counts,
        adapters=adapters,
        open_incidents=[
            {
                "id": r.id,
                "target_ip": r.target,
                "status": r.status,
                "attack_family": r.attack_family,
                "severity": r.severity,
                "opened_at": r.opened_at.isoformat(),
                "tier": r.tier,
            }
            for r in open_rows
        ],
        recent_events=svc.events.after(max(0, last - 30), 30),
        last_event_id=last,
    )


@api.get("/dashboard/rules")
async def dashboard_rules(
    *,
    svc: Svc,
    _: Reader,
    state: str = "live",
    q: Annotated[str, Query(max_length=100)] = "",
    adapter_id: int | None = None,
    sort: str = "id",
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Rules filtered (state, adapter, a text in target/reason/intent), sorted and paged."""
    if sort not in SORTS:
        raise ValidationFailed(
            f"sort must be one of {', '.join(SORTS)}", code="invalid_parameter", field="sort"
        )
    cond: list[ColumnElement[bool]] = []
    if state == "live":
        cond.append(rules.c.state.in_([s.value for s in LIVE]))
    elif state != "all":
        cond.append(rules.c.state == state)
    if adapter_id is not None:
        cond.append(rules.c.adapter_id == adapter_id)
    if q:
        like = f"%{q}%"
        cond.append(
            or_(rules.c.target.like(like), rules.c.reason.like(like), rules.c.intent.like(like))
        )
    where = and_(*cond) if cond else None
    direction = asc if order == "asc" else desc
    with svc.engine.connect() as conn:
        count = select(func.count()).select_from(rules)
        query = select(rules)
        if where is not None:
            count, query = count.where(where), query.where(where)
        total = conn.execute(count).scalar_one()
        rows = conn.execute(
            query.order_by(direction(SORTS[sort]), direction(rules.c.id))
            .limit(limit)
            .offset(offset)
        ).all()
    items = [rule_view(r._asdict(), svc.hub.name_of(r.adapter_id)) for r in rows]
    return ok(rules=items, total=int(total), limit=limit, offset=offset)


@api.get("/dashboard/incidents/{incident_id}/timeline")
async def incident_timeline(incident_id: str, svc: Svc, _: Reader) -> dict[str, Any]:
    """An incident's rules with their time to the wire, and its events from the log."""
    with svc.engine.connect() as conn:
        opened = conn.execute(
            select(incidents.c.opened_at).where(incidents.c.id == incident_id)
        ).scalar()
        if opened is None:
            raise NotFound(
                f"incident {incident_id} does not exist",
                code="incident_not_found",
                field="incident_id",
            )
        made = conn.execute(
            select(rules).where(rules.c.incident_id == incident_id).order_by(rules.c.id)
        ).all()
        ids = [r.id for r in made]
        cond = events.c.incident_id == incident_id
        if ids:
            cond = cond | events.c.rule_id.in_(ids)
        evs = conn.execute(select(events).where(cond).order_by(events.c.id).limit(2000)).all()
    out = []
    for r in made:
        view = rule_view(r._asdict(), svc.hub.name_of(r.adapter_id))
        view["to_wire_seconds"] = (
            (r.activated_at - opened).total_seconds() if r.activated_at is not None else None
        )
        out.append(view)
    return ok(rules=out, events=[event_view(e) for e in evs])


@api.get("/audit")
async def audit_entries(
    svc: Svc,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The audit log, newest first (verify it with ``GET /audit/verify``)."""
    with svc.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
        rows = conn.execute(
            select(audit_log).order_by(audit_log.c.id.desc()).limit(limit).offset(offset)
        ).all()
    return ok(
        entries=[
            {
                "id": r.id,
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "detail": r.detail,
                "hash": r.hash,
            }
            for r in rows
        ],
        total=int(total),
    )


# ---------------------------------------------------------------- the page and /metrics


@pages.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@pages.get("/ui/static/{name}")
async def asset(name: str) -> FileResponse:
    files = {p.name: p for p in STATIC.iterdir() if p.name != "index.html"}
    if name not in files:
        raise NotFound(f"no dashboard asset {name!r}", code="not_found")
    return FileResponse(files[name], headers={"Cache-Control": "no-cache"})


@pages.get("/ui/")
@pages.get("/ui/{page:path}")
async def page(page: str = "overview") -> FileResponse:
    """Every page is the one document; its script draws the page the path names."""
    return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)


_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Everything comes from this origin: no script, style or connection anywhere else.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@pages.get("/metrics", response_class=PlainTextResponse)
async def root_metrics(request: Request) -> PlainTextResponse:
    """Prometheus text; without a token only when ``SLUICE_METRICS_PUBLIC`` allows it."""
    svc: Service = request.app.state.service
    if not svc.settings.metrics_public:
        await require("read")(request)
    from orchestrator.api.admin import metrics_text

    return await run_in_threadpool(metrics_text, request)
