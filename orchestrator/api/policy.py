"""Escalation policy, per-host thresholds and the allowlist (Flowtriq API v1 shapes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.policy_doc import PolicyDocument, entry_id
from orchestrator.tokens import TokenInfo
from policies.errors import Conflict, NotFound
from policies.intents import parse_prefix

router = APIRouter(tags=["policy"])


async def doc_of(request: Request) -> PolicyDocument:
    doc: PolicyDocument = request.app.state.policy_doc
    return doc


Doc = Annotated[PolicyDocument, Depends(doc_of)]
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]


class SaveEscalation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thresholds: dict[str, dict[Literal["bps", "pps"], int | float | str | None]] | None = None
    ttl: int | dict[str, int] | None = None
    baseline_mode: Literal["static", "dynamic"] | None = None
    geo_lockdown: dict[str, Any] | None = None
    dry_run: bool | None = None
    tiers: list[dict[str, Any]] | None = None


class SaveThreshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_ip: Annotated[str, Field(min_length=1)]
    label: str = ""
    thresholds: dict[str, int | float | str]


class AddAllow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip_address: Annotated[str, Field(min_length=1)]
    label: str = ""
    scope: Literal["workspace", "node"] = "workspace"
    node: str | None = None


def _norm(text: str, field: str) -> str:
    try:
        return str(parse_prefix(text))
    except ValueError as exc:
        from policies.errors import ValidationFailed

        raise ValidationFailed(f"{field}: {exc}", field=field) from None


@router.get("/mitigation/escalation-policy")
async def get_escalation(doc: Doc, _: Reader) -> dict[str, Any]:
    return ok(policy=doc.escalation_view())


@router.put("/mitigation/escalation-policy")
async def save_escalation(body: SaveEscalation, doc: Doc, who: Writer) -> dict[str, Any]:
    def mutate(d: dict[str, Any]) -> None:
        esc = d.setdefault("escalation", {})
        if body.tiers is not None:
            esc["tiers"] = body.tiers
        tiers = {t["name"]: t for t in esc.get("tiers", [])}
        for name, values in (body.thresholds or {}).items():
            if name not in tiers:
                raise NotFound(
                    f"thresholds: no tier is named {name!r} (tiers: {', '.join(tiers) or 'none'})",
                    code="unknown_tier",
                    field="thresholds",
                )
            tiers[name].update(values)
        if isinstance(body.ttl, int):
            for t in tiers.values():
                t["ttl"] = body.ttl
        elif body.ttl is not None:
            for name, ttl in body.ttl.items():
                if name not in tiers:
                    raise NotFound(
                        f"ttl: no tier is named {name!r}", code="unknown_tier", field="ttl"
                    )
                tiers[name]["ttl"] = ttl
        if body.baseline_mode is not None:
            d.setdefault("baseline", {})["mode"] = body.baseline_mode
        if "geo_lockdown" in body.model_fields_set:
            d["geo_lockdown"] = body.geo_lockdown
        if body.dry_run is not None:
            d.setdefault("settings", {})["dry_run"] = body.dry_run

    doc.change(mutate, actor=who.name, what="escalation")
    return ok(policy=doc.escalation_view())


@router.get("/mitigation/thresholds")
async def list_thresholds(doc: Doc, _: Reader) -> dict[str, Any]:
    return ok(thresholds=doc.thresholds_view())


@router.post("/mitigation/thresholds")
async def save_threshold(body: SaveThreshold, doc: Doc, who: Writer) -> dict[str, Any]:
    target = _norm(body.target_ip, "target_ip")

    def mutate(d: dict[str, Any]) -> None:
        entries = [e for e in d.get("thresholds", []) if e["target_ip"] != target]
        entries.append(
            {"target_ip": target, "label": body.label, "thresholds": dict(body.thresholds)}
        )
        d["thresholds"] = entries

    doc.change(mutate, actor=who.name, what="thresholds")
    entry = next(e for e in doc.thresholds_view() if e["target_ip"] == target)
    return ok(threshold=entry)


@router.delete("/mitigation/thresholds/{threshold_id}")
async def delete_threshold(threshold_id: str, doc: Doc, who: Writer) -> dict[str, Any]:
    if not any(e["id"] == threshold_id for e in doc.thresholds_view()):
        raise NotFound(f"threshold {threshold_id} does not exist", code="threshold_not_found")

    def mutate(d: dict[str, Any]) -> None:
        d["thresholds"] = [
            e for e in d.get("thresholds", []) if entry_id(e["target_ip"]) != threshold_id
        ]

    doc.change(mutate, actor=who.name, what="thresholds")
    return ok(deleted=threshold_id)


@router.get("/allowlist")
async def list_allowlist(doc: Doc, _: Reader, node: str | None = None) -> dict[str, Any]:
    return ok(entries=doc.allowlist_view(node))


@router.post("/allowlist", status_code=201)
async def add_allowlist(body: AddAllow, doc: Doc, who: Writer) -> dict[str, Any]:
    from policies.errors import ValidationFailed

    if body.scope == "node" and not body.node:
        raise ValidationFailed(
            "node is required when scope is node", field="node", code="missing_parameter"
        )
    if body.scope == "workspace" and body.node:
        raise ValidationFailed("node is only for scope node", field="node")
    address = _norm(body.ip_address, "ip_address")
    new_id = entry_id(address, body.scope, body.node)
    if any(e["id"] == new_id for e in doc.allowlist_view(body.node)):
        raise Conflict(f"{address} is already on the allowlist", code="duplicate_entry")

    def mutate(d: dict[str, Any]) -> None:
        item: dict[str, Any] = {"ip_address": address, "label": body.label, "scope": body.scope}
        if body.node:
            item["node"] = body.node
        d.setdefault("allowlist", []).append(item)

    doc.change(mutate, actor=who.name, what="allowlist")
    return ok(entry=next(e for e in doc.allowlist_view(body.node) if e["id"] == new_id))


@router.delete("/allowlist/{entry_id_}")
async def remove_allowlist(entry_id_: str, doc: Doc, who: Writer) -> dict[str, Any]:
    entries = doc.document().get("allowlist", [])
    keep = [
        e
        for e in entries
        if entry_id(e["ip_address"], e.get("scope", "workspace"), e.get("node")) != entry_id_
    ]
    if len(keep) == len(entries):
        raise NotFound(f"allowlist entry {entry_id_} does not exist", code="entry_not_found")

    def mutate(d: dict[str, Any]) -> None:
        d["allowlist"] = keep

    doc.change(mutate, actor=who.name, what="allowlist")
    return ok(deleted=entry_id_)
