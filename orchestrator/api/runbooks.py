"""Runbooks over HTTP: list, get, create, update (partial), delete, toggle, test, executions.

Bodies are checked by :mod:`orchestrator.runbooks.steps` (codes such as
``unknown_action_type``, ``invalid_expression``, ``wait_too_long``, ``unknown_channel``,
``unknown_integration``, ``unknown_severity``); a refused body saves nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.automation import Automation
from orchestrator.runbooks.engine import RunbookEngine
from orchestrator.tokens import TokenInfo
from policies.errors import ValidationFailed

router = APIRouter(tags=["runbooks"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]


async def engine_of(request: Request) -> RunbookEngine:
    auto: Automation = request.app.state.automation
    return auto.runbooks


Engine = Annotated[RunbookEngine, Depends(engine_of)]
Json = Annotated[dict[str, Any], Body()]


@router.get("/runbooks")
async def list_runbooks(eng: Engine, _: Reader) -> dict[str, Any]:
    items = eng.list_all()
    return ok(runbooks=items, total=len(items))


@router.post("/runbooks", status_code=201)
async def create_runbook(body: Json, eng: Engine, who: Writer) -> dict[str, Any]:
    return ok(runbook=eng.create(body, actor=who.name))


@router.get("/runbooks/{runbook_id}")
async def get_runbook(runbook_id: str, eng: Engine, _: Reader) -> dict[str, Any]:
    return ok(runbook=eng.get(runbook_id))


@router.patch("/runbooks/{runbook_id}")
async def update_runbook(runbook_id: str, body: Json, eng: Engine, who: Writer) -> dict[str, Any]:
    return ok(runbook=eng.update(runbook_id, body, actor=who.name))


@router.delete("/runbooks/{runbook_id}")
async def delete_runbook(runbook_id: str, eng: Engine, who: Writer) -> dict[str, Any]:
    return ok(**eng.delete(runbook_id, actor=who.name))


@router.post("/runbooks/{runbook_id}/toggle")
async def toggle_runbook(runbook_id: str, eng: Engine, who: Writer) -> dict[str, Any]:
    return ok(runbook=eng.toggle(runbook_id, actor=who.name))


@router.post("/runbooks/{runbook_id}/test")
async def test_runbook(
    runbook_id: str,
    eng: Engine,
    who: Writer,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    body = body or {}
    for k in body:
        if k not in ("node", "execute"):
            raise ValidationFailed(f"unknown field {k!r}", field=k, code="unknown_field")
    node = body.get("node")
    if node is not None and not isinstance(node, str):
        raise ValidationFailed("node must be a node UUID or name", field="node")
    execute = body.get("execute", False)
    if not isinstance(execute, bool):
        raise ValidationFailed("execute must be true or false", field="execute")
    return ok(execution=await eng.test_run(runbook_id, node=node, execute=execute, actor=who.name))


@router.get("/runbooks/{runbook_id}/executions")
async def list_executions(
    runbook_id: str,
    eng: Engine,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    items = eng.executions(runbook_id, limit)
    return ok(executions=items, total=len(items))
