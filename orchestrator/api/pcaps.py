"""PCAPs: upload (agents and operators), list, packets, analysis, apply, download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import require, service_of
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import CreateRule
from orchestrator.api.signals import Agent
from orchestrator.pcaps import PcapStore
from orchestrator.pcaps.analysis import refuse_allowlisted_target
from orchestrator.service import RuleRequest, Service
from orchestrator.tokens import TokenInfo
from policies.errors import NotFound, SluiceError, ValidationFailed

router = APIRouter(tags=["pcaps"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]
Svc = Annotated[Service, Depends(service_of)]
MEDIA_TYPE = "application/vnd.tcpdump.pcap"


async def store_of(request: Request) -> PcapStore:
    store: PcapStore = request.app.state.pcaps
    return store


Store = Annotated[PcapStore, Depends(store_of)]
IncidentId = Annotated[str | None, Query(max_length=64)]
FileName = Annotated[str | None, Query(max_length=200)]
Sha = Annotated[str | None, Header(alias="X-PCAP-SHA256")]


class UnsupportedMediaType(SluiceError):
    code = "unsupported_media_type"
    status = 415


@dataclass
class Upload:
    """What both upload routes share: the raw body, its query parameters and checksum."""

    request: Request
    response: Response
    store: PcapStore
    incident_id: str | None
    filename: str | None
    sha256: str | None

    async def ingest(self, *, node: dict[str, Any] | None, actor: str) -> dict[str, Any]:
        # (curl --data-binary's default form type is fine: the body is still the raw file)
        if self.request.headers.get("content-type", "").startswith("multipart/"):
            raise UnsupportedMediaType(
                f"send the capture file's bytes as the body (Content-Type: {MEDIA_TYPE}), "
                "not a form",
            )
        length = self.request.headers.get("content-length")
        pcap, deduplicated = await self.store.ingest(
            self.request.stream(),
            incident_id=self.incident_id,
            node=node,
            actor=actor,
            filename=self.filename,
            declared_length=int(length) if length and length.isdigit() else None,
            expected_sha256=self.sha256,
        )
        self.response.status_code = 200 if deduplicated else 201
        return ok(pcap=pcap, deduplicated=deduplicated)


async def upload_of(
    *,
    request: Request,
    response: Response,
    store: Store,
    incident_id: IncidentId = None,
    filename: FileName = None,
    sha256: Sha = None,
) -> Upload:
    return Upload(
        request=request,
        response=response,
        store=store,
        incident_id=incident_id,
        filename=filename,
        sha256=sha256,
    )


# declared after the caller's identity in each route, so authentication still comes first
UploadOf = Annotated[Upload, Depends(upload_of)]


@router.post("/agent/pcaps", status_code=201)
async def agent_upload(node: Agent, upload: UploadOf) -> dict[str, Any]:
    """A node attaches the capture of one of its incidents (raw pcap/pcapng body)."""
    return await upload.ingest(node=node, actor=f"node:{node['name']}")


@router.post("/pcaps", status_code=201)
async def operator_upload(who: Writer, upload: UploadOf) -> dict[str, Any]:
    """An operator attaches a capture to an incident (raw pcap/pcapng body)."""
    return await upload.ingest(node=None, actor=who.name)


@router.get("/pcaps")
async def list_pcaps(
    store: Store,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    incident_id: IncidentId = None,
) -> dict[str, Any]:
    items, total = store.page(limit=limit, offset=offset, incident_id=incident_id)
    return ok(pcaps=items, total=total, limit=limit, offset=offset)


@router.get("/pcaps/{pcap_id}")
async def get_pcap(pcap_id: str, store: Store, _: Reader) -> dict[str, Any]:
    return ok(pcap=store.get(pcap_id))


@router.get("/pcaps/{pcap_id}/packets")
async def list_packets(
    pcap_id: str,
    store: Store,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    from starlette.concurrency import run_in_threadpool

    packets, total = await run_in_threadpool(store.packets, pcap_id, limit=limit, offset=offset)
    return ok(packets=packets, total=total, limit=limit, offset=offset)


@router.get("/pcaps/{pcap_id}/analysis")
async def get_analysis(pcap_id: str, store: Store, _: Reader) -> dict[str, Any]:
    report, cached = await store.analysis(pcap_id)
    return ok(pcap_id=pcap_id, analysis=report, cached=cached)


class ApplyRecommendation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_id: int | str
    ttl: int | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""
    dry_run: bool = False
    # bytes per second, for a rate-limit recommendation (default: the recommended rate)
    rate_limit: Annotated[float, Field(gt=0)] | None = None


@router.post("/pcaps/{pcap_id}/recommendations/{n}/apply", status_code=201)
async def apply_recommendation(
    *,
    pcap_id: str,
    n: int,
    body: ApplyRecommendation,
    store: Store,
    svc: Svc,
    who: Writer,
    response: Response,
) -> dict[str, Any]:
    """Create the rule a recommendation describes, through the normal rule path."""
    pcap = store.get(pcap_id)
    report, _ = await store.analysis(pcap_id)
    rec = next((r for r in report["recommendations"] if r["n"] == n), None)
    if rec is None:
        count = len(report["recommendations"])
        raise NotFound(
            f"capture {pcap_id} has no recommendation {n} (it has {count})",
            code="recommendation_not_found",
            field="n",
        )
    rule = dict(rec["rule"])
    if body.rate_limit is not None:
        if rule.get("action") != "rate-limit":
            raise ValidationFailed(
                "rate_limit applies only to a rate-limit recommendation; this one drops",
                field="rate_limit",
            )
        rule["rate_limit"] = body.rate_limit
    intent = CreateRule.model_validate({**rule, "adapter_id": body.adapter_id}).to_intent()
    refuse_allowlisted_target(intent, svc.policy.allowlist, store.node_of(pcap))
    result = await svc.create_rule(
        RuleRequest(
            intent=intent,
            adapter=body.adapter_id,
            ttl=body.ttl,
            reason=body.reason or f"pcap {pcap_id}: {rec['description']}",
            origin="manual",
            dry_run=body.dry_run,
            explanation=(f"PCAP {pcap_id} recommendation {n}: {rec['description']}",),
            incident_id=pcap["incident_id"],
            actor=who.name,
        )
    )
    created = result.rule
    if result.deduplicated:
        response.status_code = 200
    elif created["state"] == "pending" and svc.settings.api_wait_seconds:
        await svc.dispatcher.wait_for(created["id"], svc.settings.api_wait_seconds)
        created = svc.get_rule(created["id"])
    return ok(rule=created, deduplicated=result.deduplicated, recommendation=rec)


@router.get("/pcaps/{pcap_id}/download", response_class=FileResponse)
async def download(pcap_id: str, store: Store, _: Reader) -> FileResponse:
    path, pcap = store.download(pcap_id)
    return FileResponse(
        path,
        media_type=MEDIA_TYPE,
        filename=pcap["filename"],
        headers={"X-PCAP-SHA256": pcap["sha256"], "Cache-Control": "no-store"},
    )
