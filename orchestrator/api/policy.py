"""Escalation policy, per-host thresholds and the allowlist (Flowtriq API v1 shapes).

What the policy files declare is read-only here (``read_only``); everything else is
created in the API's layer over the files (see :mod:`orchestrator.policy_doc`).
Accepted shapes besides our own: flat ``{"tier1_bps": 1000000, "tier2_pps": 50000}``
thresholds (per host and for the workspace tiers), ``ttl`` as one number or per tier,
``geo_lockdown`` with ``countries`` and an ``action``, ``carpet_bombing`` as in the policy
files, and the ``escalation`` timing block that GET shows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml_rs
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import Address, Body, Label, Name
from orchestrator.policy_doc import PolicyDocument, entry_id
from orchestrator.policy_export import to_yaml
from orchestrator.tokens import TokenInfo
from policies.engine import Decision
from policies.errors import Conflict, NotFound, PolicyInvalid, ReadOnly, ValidationFailed
from policies.intents import canonical, parse_prefix
from policies.layer import allow_key, threshold_key
from policies.replay import Timed, plan, plan_each
from policies.signals import Signal

router = APIRouter(tags=["policy"])


async def doc_of(request: Request) -> PolicyDocument:
    doc: PolicyDocument = request.app.state.policy_doc
    return doc


Doc = Annotated[PolicyDocument, Depends(doc_of)]
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]
RateValue = int | float | Annotated[str, Field(max_length=32)]
Adapters = Annotated[list[Name], Field(max_length=32)]
GeoAction = Literal["block", "allow_only"]


class Timing(BaseModel):
    """The ``escalation`` block: how the engine moves between tiers."""

    model_config = ConfigDict(extra="forbid")
    hold_down_seconds: int | None = None
    hysteresis: float | None = None
    deescalate_after_seconds: int | None = None
    episode_timeout_seconds: int | None = None
    escalate_during_cooldown: bool | None = None


class Geo(BaseModel):
    """Geo lockdown: ``countries`` (ISO 3166-1 alpha-2) and an ``action``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    countries: Annotated[
        list[Annotated[str, Field(max_length=2)]], Field(min_length=1, max_length=250)
    ]
    action: GeoAction | None = None
    mode: GeoAction | None = None  # our name for action
    # no database here: a file path is the service's configuration (geoip_database), never
    # a write token's to choose
    from_tier: Name | None = None  # default: the first tier
    rule_budget: int | None = None
    only_seen_countries: bool | None = None
    adapters: Adapters | None = None
    ttl: int | None = None


TIERS = 32  # at most this many tiers (and per-tier entries naming them)


class Tier(BaseModel):
    """One escalation tier as the API takes it: a name, and the policy's tier fields."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: Name


class SaveEscalation(Body):
    # {"tier1_bps": 1000000, "tier2_pps": "50k"} or {"tier1": {"bps": ..., "pps": ...}}
    thresholds: (
        Annotated[
            dict[Name, RateValue | dict[str, RateValue | None] | None],
            Field(max_length=2 * TIERS),
        ]
        | None
    ) = None
    ttl: int | Annotated[dict[Name, int], Field(max_length=TIERS)] | None = None
    adapters: Adapters | Annotated[dict[Name, Adapters], Field(max_length=TIERS)] | None = None
    baseline_mode: Literal["static", "dynamic"] | None = None
    geo_lockdown: Geo | None = None  # null removes it
    # the policy files' carpet_bombing section as a whole (null removes it); validated
    # with the whole policy: errors name the field (carpet_bombing.tier, ...)
    carpet_bombing: Annotated[dict[str, Any], Field(max_length=32)] | None = None
    dry_run: bool | None = None
    tiers: Annotated[list[Tier], Field(max_length=TIERS)] | None = None  # the whole ladder
    escalation: Timing | None = None


class SaveThreshold(Body):
    target_ip: Address
    label: Label = ""
    thresholds: Annotated[
        dict[Annotated[str, Field(max_length=64)], RateValue], Field(max_length=64)
    ]


class AddAllow(Body):
    ip_address: Address
    label: Label = ""
    scope: Literal["workspace", "node"] = "workspace"
    node: Name | None = None


def _norm(text: str, field: str) -> str:
    try:
        return str(parse_prefix(text))
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", field=field) from None


def _unknown_tier(name: str, names: list[str], field: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: no tier is named {name!r} (tiers: {', '.join(names) or 'none'})",
        code="unknown_tier",
        field=field,
    )


def _split_key(key: str, field: str) -> tuple[str, Literal["bps", "pps"]]:
    tier, _, metric = key.rpartition("_")
    if not tier or metric not in ("bps", "pps"):
        raise ValidationFailed(
            f"{field}: expected <tier>_bps or <tier>_pps (e.g. tier1_bps), got {key!r}",
            field=field,
        )
    return tier, "bps" if metric == "bps" else "pps"


def _tier_thresholds(
    raw: dict[str, RateValue | dict[str, RateValue | None] | None], names: list[str]
) -> dict[str, dict[str, RateValue | None]]:
    """Flat ``tierN_bps`` keys or nested ``{tierN: {bps, pps}}``, by tier."""
    out: dict[str, dict[str, RateValue | None]] = {}
    for key, value in raw.items():
        field = f"thresholds.{key}"
        if isinstance(value, dict):
            if key not in names:
                raise _unknown_tier(key, names, field)
            for metric, rate in value.items():
                if metric not in ("bps", "pps"):
                    raise ValidationFailed(
                        f"{field}.{metric}: unknown parameter (bps or pps)",
                        code="unknown_parameter",
                        field=f"{field}.{metric}",
                    )
                out.setdefault(key, {})[metric] = rate
            out.setdefault(key, {})
        else:
            tier, metric = _split_key(key, field)
            if tier not in names:
                raise _unknown_tier(tier, names, field)
            out.setdefault(tier, {})[metric] = value
    return out


def _per_tier(value: Any, names: list[str], field: str) -> dict[str, Any]:
    """One value for every tier, or a mapping by tier name."""
    if not isinstance(value, dict):
        return dict.fromkeys(names, value)
    for name in value:
        if name not in names:
            raise _unknown_tier(name, names, f"{field}.{name}")
    return dict(value)


@router.get("/mitigation/escalation-policy")
async def get_escalation(doc: Doc, _: Reader) -> dict[str, Any]:
    return ok(policy=doc.escalation_view())


@router.put("/mitigation/escalation-policy")
async def save_escalation(body: SaveEscalation, doc: Doc, who: Writer) -> dict[str, Any]:
    sent = body.model_fields_set
    for name in ("tiers", "thresholds", "ttl", "adapters"):
        if name in sent:
            doc.require_api("escalation", "tiers", field=name)
    if body.escalation is not None:
        for key in body.escalation.model_fields_set:
            doc.require_api("escalation", key, field=f"escalation.{key}")
    if body.baseline_mode is not None:
        doc.require_api("baseline", "mode", field="baseline_mode")
    if body.dry_run is not None:
        doc.require_api("settings", "dry_run", field="dry_run")
    if "geo_lockdown" in sent:
        doc.require_api("geo_lockdown", field="geo_lockdown")
    if "carpet_bombing" in sent:
        doc.require_api("carpet_bombing", field="carpet_bombing")

    tiers: list[dict[str, Any]] = (
        [t.model_dump() for t in body.tiers]
        if body.tiers is not None
        else doc.service.policy.escalation.model_dump(mode="json", exclude_defaults=True)["tiers"]
    )
    names = [str(t.get("name")) for t in tiers]
    by_name = {str(t.get("name")): t for t in tiers}
    if body.thresholds is not None:
        for name, values in _tier_thresholds(body.thresholds, names).items():
            by_name[name].update(values)
    if body.ttl is not None:
        for name, ttl in _per_tier(body.ttl, names, "ttl").items():
            by_name[name]["ttl"] = ttl
    if body.adapters is not None:
        for name, adapters in _per_tier(body.adapters, names, "adapters").items():
            by_name[name]["adapters"] = adapters
    geo: dict[str, Any] | None = None
    if body.geo_lockdown is not None:
        g = body.geo_lockdown
        database = doc.service.settings.geoip_database
        if database is None:
            raise ValidationFailed(
                "geo_lockdown: the service has no country database (MMDB): set "
                "SLUICE_GEOIP_DATABASE (the geoip_database setting) and restart it",
                code="geo_database_not_configured",
                field="geo_lockdown",
            )
        if g.from_tier is not None and g.from_tier not in names:
            raise _unknown_tier(g.from_tier, names, "geo_lockdown.from_tier")
        geo = {
            "enabled": g.enabled,
            "mode": g.action or g.mode or "block",
            "countries": g.countries,
            "database": str(database),
            "from_tier": g.from_tier or (names[0] if names else ""),
            **g.model_dump(
                include={"rule_budget", "only_seen_countries", "adapters", "ttl"},
                exclude_none=True,
            ),
        }

    def mutate(layer: dict[str, Any]) -> None:
        esc = layer.setdefault("escalation", {})
        if sent & {"tiers", "thresholds", "ttl", "adapters"}:
            esc["tiers"] = tiers
        if body.escalation is not None:
            esc.update(body.escalation.model_dump(exclude_unset=True))
        if body.baseline_mode is not None:
            layer.setdefault("baseline", {})["mode"] = body.baseline_mode
        if body.dry_run is not None:
            layer.setdefault("settings", {})["dry_run"] = body.dry_run
        if "geo_lockdown" in sent:
            layer["geo_lockdown"] = geo
        if "carpet_bombing" in sent:
            layer["carpet_bombing"] = body.carpet_bombing

    doc.change(mutate, actor=who.name, what="escalation")
    return ok(policy=doc.escalation_view())


@router.get("/mitigation/thresholds")
async def list_thresholds(doc: Doc, _: Reader) -> dict[str, Any]:
    return ok(thresholds=doc.thresholds_view())


@router.post("/mitigation/thresholds")
async def save_threshold(body: SaveThreshold, doc: Doc, who: Writer) -> dict[str, Any]:
    target = _norm(body.target_ip, "target_ip")
    names = [t.name for t in doc.service.policy.escalation.tiers]
    if not body.thresholds:
        raise ValidationFailed(
            'thresholds: give at least one, e.g. {"tier1_bps": 1000000}',
            code="missing_parameter",
            field="thresholds",
        )
    for key in body.thresholds:
        tier, _metric = _split_key(key, f"thresholds.{key}")
        if tier not in names:
            raise _unknown_tier(tier, names, f"thresholds.{key}")
    key_of = threshold_key({"target_ip": target})
    if any(
        e["managed_by"] == "policy" and threshold_key(e) == key_of for e in doc.thresholds_view()
    ):
        raise ReadOnly(
            f"target_ip: thresholds for {target} are declared in {doc.where()}; change them there",
            field="target_ip",
        )

    def mutate(layer: dict[str, Any]) -> None:
        entries = [e for e in layer.get("thresholds", []) if threshold_key(e) != key_of]
        entry: dict[str, Any] = {"target_ip": target, "thresholds": dict(body.thresholds)}
        if body.label:
            entry["label"] = body.label
        layer["thresholds"] = [*entries, entry]

    try:
        doc.change(mutate, actor=who.name, what="thresholds")
    except PolicyInvalid as exc:  # e.g. no longer increasing with the tier
        raise PolicyInvalid(exc.message, field="thresholds") from None
    entry = next(e for e in doc.thresholds_view() if threshold_key(e) == key_of)
    return ok(threshold=entry)


@router.delete("/mitigation/thresholds/{threshold_id}")
async def delete_threshold(threshold_id: str, doc: Doc, who: Writer) -> dict[str, Any]:
    found = next((e for e in doc.thresholds_view() if e["id"] == threshold_id), None)
    if found is None:
        raise NotFound(f"threshold {threshold_id} does not exist", code="threshold_not_found")
    if found["managed_by"] == "policy":
        raise ReadOnly(
            f"thresholds for {found['target_ip']} are declared in {doc.where()}; remove them there"
        )

    def mutate(layer: dict[str, Any]) -> None:
        layer["thresholds"] = [
            e for e in layer.get("thresholds", []) if entry_id(threshold_key(e)) != threshold_id
        ]

    doc.change(mutate, actor=who.name, what="thresholds")
    return ok(deleted=threshold_id)


@router.get("/allowlist")
async def list_allowlist(doc: Doc, _: Reader, node: str | None = None) -> dict[str, Any]:
    """Every entry; with ``node``, the workspace-wide entries and that node's."""
    return ok(entries=doc.allowlist_view(node))


@router.post("/allowlist", status_code=201)
async def add_allowlist(body: AddAllow, doc: Doc, who: Writer) -> dict[str, Any]:
    if body.scope == "node" and not body.node:
        raise ValidationFailed(
            "node is required when scope is node", field="node", code="missing_parameter"
        )
    if body.scope == "workspace" and body.node:
        raise ValidationFailed("node is only for scope node", field="node")
    address = _norm(body.ip_address, "ip_address")
    item: dict[str, Any] = {"ip_address": address, "scope": body.scope}
    if body.label:
        item["label"] = body.label
    if body.node:
        item["node"] = body.node
    new_id = entry_id(*allow_key(item))
    existing = next((e for e in doc.allowlist_view() if e["id"] == new_id), None)
    if existing is not None:
        where = f" (declared in {doc.where()})" if existing["managed_by"] == "policy" else ""
        raise Conflict(
            f"{address} is already on the allowlist{where}",
            code="duplicate_entry",
            field="ip_address",
        )

    def mutate(layer: dict[str, Any]) -> None:
        layer["allowlist"] = [*layer.get("allowlist", []), item]

    doc.change(mutate, actor=who.name, what="allowlist")
    return ok(entry=next(e for e in doc.allowlist_view() if e["id"] == new_id))


@router.delete("/allowlist/{entry_id_}")
async def remove_allowlist(entry_id_: str, doc: Doc, who: Writer) -> dict[str, Any]:
    found = next((e for e in doc.allowlist_view() if e["id"] == entry_id_), None)
    if found is None:
        raise NotFound(f"allowlist entry {entry_id_} does not exist", code="entry_not_found")
    if found["managed_by"] == "policy":
        raise ReadOnly(
            f"allowlist entry {found['ip_address']} is declared in {doc.where()}; remove it there"
        )

    def mutate(layer: dict[str, Any]) -> None:
        layer["allowlist"] = [
            e for e in layer.get("allowlist", []) if entry_id(*allow_key(e)) != entry_id_
        ]

    doc.change(mutate, actor=who.name, what="allowlist")
    return ok(deleted=entry_id_)


@router.get("/policy/export")
async def export_policy(doc: Doc, _: Reader) -> dict[str, Any]:
    """The objects created through the API, as a policy document (YAML) to commit."""
    document = doc.export()
    return ok(document=document, yaml=to_yaml(document))


# ---------------------------------------------------------------- plan a change

PLAN_SIGNALS = 1000  # at most this many signals replayed by one plan


class PlanChange(Body):
    """A proposed policy document (the shape ``GET /policy/export`` gives) to compare."""

    document: Annotated[str, Field(max_length=200_000)] | dict[str, Any]
    # recorded signals (each may carry ``at``, seconds); default: recent incidents' last
    signals: Annotated[list[dict[str, Any]], Field(max_length=PLAN_SIGNALS)] | None = None


def _parse_document(value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        data = yaml_rs.loads(value) if value.strip() else {}
    except yaml_rs.YAMLDecodeError as exc:
        raise ValidationFailed(
            f"document: not valid YAML/JSON: {exc}", code="invalid_document", field="document"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationFailed(
            "document must be a mapping of policy sections (as /policy/export gives)",
            code="invalid_document",
            field="document",
        )
    return data


def _timed(raw: list[dict[str, Any]]) -> list[Timed]:
    out: list[Timed] = []
    for i, item in enumerate(raw):
        fields = dict(item)
        at = fields.pop("at", i)
        try:
            out.append((float(at), Signal.model_validate(fields)))
        except (PydanticError, TypeError, ValueError) as exc:
            raise ValidationFailed(
                f"signals.{i}: {exc}".splitlines()[0],
                code="invalid_signal",
                field=f"signals.{i}",
            ) from None
    return out


def _decision_view(d: Decision) -> dict[str, Any]:
    return {
        "status": d.status,
        "tier": d.tier,
        "rules": sorted(f"{canonical(r.intent)} via {r.adapter} ttl {r.ttl}" for r in d.rules),
        "withdraw": sorted(d.withdraw),
        "explanation": list(d.explanation),
    }


@router.post("/policy/plan")
async def plan_policy(body: PlanChange, doc: Doc, _: Reader) -> dict[str, Any]:
    """What a proposed policy document would decide differently from the policy in force.

    Nothing is saved. The document is composed over the files as a change through the API
    would be (what the files declare stays theirs: listed in ``ignored``); the signals
    (a recording, replayed in order as ``sluice policy plan`` does with files) or else the
    last signal of each of the most recent incidents (each as an attack that lasted past
    the hold-down) go through both policies.
    """
    layer = _parse_document(body.document)
    proposed = doc.compose(layer)  # PolicyInvalid (422, naming the field) when it is bad
    current = doc.service.policy
    if body.signals is not None:
        recorded = _timed(body.signals)
        changes, source, n = plan(current, proposed, recorded), "given", len(recorded)
    else:
        recent = doc.recent_signals(PLAN_SIGNALS)
        changes, source, n = plan_each(current, proposed, recent), "recent incidents", len(recent)
    return ok(
        signals=n,
        source=source,
        ignored=doc.ignored(layer),
        changed=len(changes),
        summary=f"{len(changes)} of {n} signal(s) decided differently",
        changes=[
            {
                "index": c.index,
                "at": c.at,
                "target": c.target,
                "before": _decision_view(c.before),
                "after": _decision_view(c.after),
                "text": c.describe(),
            }
            for c in changes
        ],
    )
