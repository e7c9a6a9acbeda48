"""Mitigation endpoints: rules and adapters (Flowtriq API v1, Mitigation section)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import SecretStr, ValidationError

from adapters.base import AdapterConfig, Capability
from orchestrator.api.deps import require, service_of
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import (
    MAX_ID,
    CreateRule,
    Offset,
    PathId,
    UpsertAdapter,
    WithdrawRule,
)
from orchestrator.service import RuleRequest, Service
from orchestrator.tokens import TokenInfo
from policies.errors import ValidationFailed

router = APIRouter(prefix="/mitigation", tags=["mitigation"])

Svc = Annotated[Service, Depends(service_of)]
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]
# Adapters name what the service (root, beside the routers) connects to and touches:
# creating, changing or deleting one is an admin action, not a write.
Admin = Annotated[TokenInfo, Depends(require("admin"))]


@router.get("/rules")
async def list_rules(
    *,
    svc: Svc,
    _: Reader,
    adapter_id: Annotated[int, Query(ge=1, le=MAX_ID)] | None = None,
    intent_type: Annotated[str, Query(max_length=32)] | None = None,
    state: Annotated[str, Query(max_length=16)] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Offset = 0,
) -> dict[str, Any]:
    rules, total = svc.list_active(
        adapter_id=adapter_id, intent_type=intent_type, state=state, limit=limit, offset=offset
    )
    return ok(rules=rules, total=total, limit=limit, offset=offset)


@router.get("/rules/history")
async def rule_history(
    svc: Svc,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    rules, total = svc.history(limit=limit, offset=offset)
    return ok(rules=rules, total=total, limit=limit, offset=offset)


@router.get("/rules/{rule_id}")
async def get_rule(rule_id: PathId, svc: Svc, _: Reader) -> dict[str, Any]:
    return ok(rule=svc.get_rule(rule_id))


@router.post("/rules", status_code=201)
async def create_rule(
    body: CreateRule, svc: Svc, who: Writer, response: Response
) -> dict[str, Any]:
    intent = body.to_intent()
    result = await svc.create_rule(
        RuleRequest(
            intent=intent,
            adapter=body.adapter_id,
            ttl=body.ttl,
            reason=body.reason,
            origin="manual",
            dry_run=body.dry_run,
            actor=who.name,
        )
    )
    rule = result.rule
    if result.deduplicated:
        response.status_code = 200
    elif rule["state"] == "pending" and svc.settings.api_wait_seconds:
        await svc.dispatcher.wait_for(rule["id"], svc.settings.api_wait_seconds)
        rule = svc.get_rule(rule["id"])
    return ok(rule=rule, deduplicated=result.deduplicated)


@router.delete("/rules/{rule_id}")
async def withdraw_rule(rule_id: PathId, svc: Svc, who: Writer, request: Request) -> dict[str, Any]:
    reason = ""
    if await request.body():
        try:
            reason = WithdrawRule.model_validate_json(await request.body()).reason
        except ValidationError as exc:
            raise ValidationFailed(f"invalid body: {exc.errors()[0]['msg']}") from None
    return ok(rule=await svc.withdraw_rule(rule_id, who.name, reason))


@router.get("/adapters")
async def list_adapters(svc: Svc, _: Reader) -> dict[str, Any]:
    return ok(adapters=[r.to_api() for r in svc.hub.records()], adapter_types=svc.registry.names())


@router.post("/adapters")
async def upsert_adapter(
    body: UpsertAdapter, svc: Svc, who: Admin, response: Response
) -> dict[str, Any]:
    try:
        caps = tuple(Capability(c) for c in body.capabilities) if body.capabilities else None
    except ValueError:
        raise ValidationFailed(
            f"capabilities must be among {', '.join(c.value for c in Capability)}",
            field="capabilities",
        ) from None
    config = AdapterConfig(
        name=body.name,
        adapter_type=body.adapter_type,
        endpoint=body.endpoint,
        auth_token=SecretStr(body.auth_token) if body.auth_token else None,
        config=body.config,
        capabilities=caps,
    )
    adapter, created = await svc.upsert_adapter(config, adapter_id=body.id, actor=who.name)
    response.status_code = 201 if created else 200
    return ok(adapter=adapter, created=created)


@router.delete("/adapters/{adapter_id}")
async def delete_adapter(
    adapter_id: PathId, svc: Svc, who: Admin, force: bool = False
) -> dict[str, Any]:
    """Withdraw the adapter's rules and delete it; ``force`` retires a dead one."""
    return ok(deleted=await svc.delete_adapter(adapter_id, who.name, force=force))


@router.post("/adapters/{adapter_id}/test")
async def test_adapter(adapter_id: PathId, svc: Svc, _: Writer) -> dict[str, Any]:
    return ok(test=await svc.test_adapter(adapter_id))
