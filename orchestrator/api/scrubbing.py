"""Scrubbing endpoints: cloud scrubbing integrations (Flowtriq API v1, Scrubbing section).

An integration is an adapter of one of the scrubbing types; announce and withdraw create
and withdraw ordinary ``scrubbing`` rules for it. Errors: an unknown id, or the id of an
adapter that is not an integration, is 404 ``scrubbing_not_found``; a non-scrubbing
``type`` is 422 ``not_a_scrubbing_type``; bodies are checked like every other endpoint.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import Field, SecretStr

from adapters.base import AdapterConfig
from orchestrator import scrubbing
from orchestrator.api.deps import require, service_of
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import MAX_ID, Body, Id, Mapping, Name, PathId
from orchestrator.service import Service
from orchestrator.tokens import TokenInfo

router = APIRouter(prefix="/scrubbing", tags=["scrubbing"])

Svc = Annotated[Service, Depends(service_of)]
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]
# Adapters name what the service (root, beside the routers) connects to and touches:
# creating, changing or deleting one is an admin action, not a write.
Admin = Annotated[TokenInfo, Depends(require("admin"))]
Reason = Annotated[str, Field(max_length=1000)]
TargetIp = Annotated[str, Field(min_length=1, max_length=64)]


class UpsertIntegration(Body):
    id: Id | None = None
    type: Annotated[str, Field(min_length=1, max_length=50)]
    name: Name
    endpoint: Annotated[str, Field(max_length=1000)] = ""
    # write-only; left out on update: kept
    auth_token: Annotated[SecretStr, Field(max_length=8192)] | None = None
    config: Mapping = Field(default_factory=dict)


class Announce(Body):
    target_ip: TargetIp | None = None  # default: every prefix the integration is configured with
    # seconds; none given (or 0): diverted until withdrawn, as the reference's enable does
    ttl: Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)] | None = None
    reason: Reason = ""


class Withdraw(Body):
    target_ip: TargetIp | None = None  # default: every scrubbing rule of the integration
    reason: Reason = ""


@router.get("")
async def list_integrations(svc: Svc, _: Reader) -> dict[str, Any]:
    return ok(
        integrations=await scrubbing.list_integrations(svc),
        integration_types=list(scrubbing.INTEGRATION_TYPES),
    )


@router.post("")
async def upsert_integration(
    body: UpsertIntegration, svc: Svc, who: Admin, response: Response
) -> dict[str, Any]:
    config = AdapterConfig(
        name=body.name,
        adapter_type=body.type,
        endpoint=body.endpoint,
        auth_token=body.auth_token,
        config=body.config,
    )
    view, created = await scrubbing.upsert(svc, config, integration_id=body.id, actor=who.name)
    response.status_code = 201 if created else 200
    return ok(integration=view, created=created)


@router.delete("/{integration_id}")
async def delete_integration(integration_id: PathId, svc: Svc, who: Admin) -> dict[str, Any]:
    return ok(deleted=await scrubbing.delete(svc, integration_id, who.name))


@router.get("/{integration_id}/status")
async def integration_status(integration_id: PathId, svc: Svc, _: Reader) -> dict[str, Any]:
    return ok(**await scrubbing.status(svc, integration_id))


@router.post("/{integration_id}/test")
async def test_integration(integration_id: PathId, svc: Svc, _: Writer) -> dict[str, Any]:
    return ok(test=await scrubbing.check_connection(svc, integration_id))


@router.post("/{integration_id}/announce", status_code=201)
async def announce(
    integration_id: PathId, svc: Svc, who: Writer, response: Response, body: Announce | None = None
) -> dict[str, Any]:
    body = body or Announce()
    result = await scrubbing.announce(
        svc,
        integration_id,
        target_ip=body.target_ip,
        ttl=body.ttl,
        reason=body.reason,
        actor=who.name,
    )
    if not result["created"]:
        response.status_code = 200  # every rule was already held: deduplicated
    return ok(**result)


@router.post("/{integration_id}/withdraw")
async def withdraw(
    integration_id: PathId, svc: Svc, who: Writer, body: Withdraw | None = None
) -> dict[str, Any]:
    body = body or Withdraw()
    return ok(
        **await scrubbing.withdraw(
            svc, integration_id, target_ip=body.target_ip, reason=body.reason, actor=who.name
        )
    )
