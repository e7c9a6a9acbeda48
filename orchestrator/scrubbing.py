"""Scrubbing integrations: the service functions behind ``/api/v1/scrubbing``.

A scrubbing integration is an adapter whose ``adapter_type`` is one of the integration
types below: it lives in the same adapters table, is built by the same registry and
carries rules through the same dispatcher. These functions add what the integration view
needs on top of :class:`~orchestrator.service.Service`:

* which adapters are integrations (any other id is ``scrubbing_not_found``);
* the configuration without secrets (``auth_token`` and every other secret setting are
  write-only; an update that leaves them out keeps the stored ones);
* "diverting or not" from two sources: the live scrubbing rules the store holds for the
  integration, and what the provider reports when it can be read;
* announce / withdraw as ordinary ``scrubbing`` rules (origin ``manual``), so TTL expiry,
  retries, reconciliation and the audit log apply to them like to any other rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr
from sqlalchemy import and_, select

from adapters.base import Adapter, AdapterConfig, Diverting, Health
from orchestrator.hub import AdapterRecord, secret_keys
from orchestrator.lifecycle import HELD
from orchestrator.service import RuleRequest, RuleResult, Service
from orchestrator.store.models import rules
from orchestrator.views import rule_view
from policies.errors import (
    AdapterError,
    AdapterUnavailable,
    Conflict,
    IntentInvalid,
    NotFound,
    SluiceError,
    ValidationFailed,
)
from policies.intents import ScrubbingIntent, build_intent, intent_key

log = logging.getLogger("sluice.scrubbing")

# The Flowtriq integration types (adapters/scrubbing, one module each).
INTEGRATION_TYPES = (
    "cloudflare_magic_transit",
    "ovh_mitigation",
    "hetzner_mitigation",
    "cloudflare_waf",
    "digitalocean",
    "vultr",
    "aws_shield",
    "linode",
)
PROVIDER_TIMEOUT = 15.0  # seconds for one provider read (status, list)


def is_integration(rec: AdapterRecord) -> bool:
    return rec.adapter_type in INTEGRATION_TYPES


def integration(svc: Service, integration_id: int) -> AdapterRecord:
    """The integration with this id; any other adapter id is not found here either."""
    try:
        rec = svc.hub.get(integration_id)
    except NotFound:
        raise NotFound(
            f"scrubbing integration {integration_id} does not exist",
            code="scrubbing_not_found",
            field="id",
        ) from None
    if not is_integration(rec):
        raise NotFound(
            f"adapter {integration_id} ({rec.name!r}, type {rec.adapter_type}) is not a scrubbing "
            "integration; manage it under /mitigation/adapters",
            code="scrubbing_not_found",
            field="id",
        )
    return rec


# ------------------------------------------------------------------ secrets


def public_config(rec: AdapterRecord, adapter: Adapter | None) -> dict[str, Any]:
    hidden = secret_keys(adapter, rec.config)
    return {k: v for k, v in rec.config.items() if k not in hidden}


def _secrets_set(rec: AdapterRecord, adapter: Adapter | None) -> list[str]:
    names = {k for k in secret_keys(adapter, rec.config) if k in rec.config}
    if rec.has_auth_token:
        names.add("auth_token")
    return sorted(names)


def redact(value: Any, adapter: Adapter | None, secret_values: frozenset[str]) -> Any:
    """``value`` without secrets: secret-named keys dropped, secret values masked, nested.

    Provider details come from the adapter (an AWS access key id, a token in a URL); the
    status endpoint shows them only after this.
    """
    if isinstance(value, Mapping):
        hidden = secret_keys(adapter, value)
        return {k: redact(v, adapter, secret_values) for k, v in value.items() if k not in hidden}
    if isinstance(value, list | tuple):
        return [redact(v, adapter, secret_values) for v in value]
    if isinstance(value, str):
        for secret in secret_values:
            value = value.replace(secret, "***")
    return value


def _secret_values(rec: AdapterRecord, adapter: Adapter | None) -> frozenset[str]:
    values: set[str] = set()
    for k in secret_keys(adapter, rec.config):
        v = rec.config.get(k)
        if isinstance(v, str) and len(v) >= 4:
            values.add(v)
    settings = getattr(adapter, "settings", None)
    if isinstance(settings, BaseModel):  # SecretStr settings, e.g. the auth token
        for name in type(settings).model_fields:
            for v in _secret_strs(getattr(settings, name, None)):
                if len(v) >= 4:
                    values.add(v)
    return frozenset(values)


def _secret_strs(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _secret_strs(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secret_strs(v)]
    return []


def configured_prefixes(adapter: Adapter | None) -> list[str] | None:
    """The target prefixes an integration is configured with; None when it has no such notion."""
    settings = getattr(adapter, "settings", None)
    for attr in ("targets", "prefixes"):
        items = getattr(settings, attr, None)
        if items:
            return [str(t.prefix) for t in items]
    return None


# ------------------------------------------------------------------ views


def _held_rules(svc: Service, adapter_id: int) -> list[dict[str, Any]]:
    """The scrubbing rules Sluice holds for this integration (should be on, or may be)."""
    with svc.engine.connect() as conn:
        rows = conn.execute(
            select(rules)
            .where(
                and_(
                    rules.c.adapter_id == adapter_id,
                    rules.c.kind == "scrubbing",
                    rules.c.state.in_([s.value for s in HELD]),
                )
            )
            .order_by(rules.c.id)
        ).all()
    name = svc.hub.name_of(adapter_id)
    return [rule_view(r._asdict(), name) for r in rows]


def _store_diverting(held: Sequence[Mapping[str, Any]]) -> bool:
    return any(not r["dry_run"] for r in held)


def describe(svc: Service, rec: AdapterRecord) -> dict[str, Any]:
    """An integration as the API shows it: settings without secrets, last health."""
    adapter = svc.hub.live(rec.id)
    api = rec.to_api()
    return {
        "id": rec.id,
        "name": rec.name,
        "type": rec.adapter_type,
        "endpoint": rec.endpoint,
        "config": public_config(rec, adapter),
        "secrets_set": _secrets_set(rec, adapter),
        "prefixes": configured_prefixes(adapter),
        "mechanism": adapter.mechanism if isinstance(adapter, Diverting) else None,
        "connection": api["status"],
        "health": rec.health,
        "last_checked_at": api["last_checked_at"],
        "error": rec.error,
        "managed_by": api["managed_by"],
        "created_at": api["created_at"],
        "updated_at": api["updated_at"],
    }


async def _provider_diverting(adapter: Adapter | None) -> tuple[bool | None, str | None]:
    """(diverting, error) as the provider reports it; None when it cannot be read."""
    if adapter is None:
        return None, None
    try:
        async with asyncio.timeout(PROVIDER_TIMEOUT):
            if isinstance(adapter, Diverting):
                return await adapter.diverting(), None
            keys = await adapter.active()
    except TimeoutError:
        return None, f"the provider did not answer within {PROVIDER_TIMEOUT:g} s"
    except AdapterError as err:
        return None, err.message
    return (None if keys is None else bool(keys)), None


def _diversion(
    held: Sequence[Mapping[str, Any]], provider: bool | None, error: str | None
) -> dict[str, Any]:
    store = _store_diverting(held)
    note = None
    if provider is not None and provider != store:
        note = (
            "the provider reports diversion that Sluice holds no rule for"
            if provider
            else "Sluice holds scrubbing rules but the provider reports no diversion"
        )
    return {
        "diverting": store or bool(provider),
        "store": store,
        "provider": provider,
        "provider_error": error,
        "rule_ids": [r["id"] for r in held],
        "mismatch": note,
    }


async def list_integrations(svc: Service) -> list[dict[str, Any]]:
    """Every integration with its diversion summary; providers are read concurrently."""
    recs = [r for r in svc.hub.records() if is_integration(r)]
    reads = await asyncio.gather(*(_provider_diverting(svc.hub.live(r.id)) for r in recs))
    out = []
    for rec, (provider, error) in zip(recs, reads, strict=True):
        held = _held_rules(svc, rec.id)
        out.append({**describe(svc, rec), "status": _diversion(held, provider, error)})
    return out


async def _provider_status(adapter: Adapter) -> tuple[bool | None, Health, dict[str, Any]]:
    """status() when the adapter has it, else active() + check()."""
    if isinstance(adapter, Diverting):
        st = await adapter.status()
        d = st.to_dict()
        details = {k: d[k] for k in ("mechanism", "provider", "targets", "error")}
        return st.diverting, st.health, details
    health = await adapter.check()
    error = None
    try:
        keys = await adapter.active()
    except AdapterError as err:
        keys, error = None, err.message
    return (None if keys is None else bool(keys)), health, {"error": error}


async def status(svc: Service, integration_id: int) -> dict[str, Any]:
    """Real-time status: the provider's answer, connection health and the rules Sluice holds."""
    rec = integration(svc, integration_id)
    adapter = svc.hub.live(rec.id)
    provider: bool | None = None
    details: dict[str, Any] = {}
    if adapter is None:
        health = Health(False, None, rec.error or "the integration could not be built")
        details = {"error": health.detail}
    else:
        try:
            async with asyncio.timeout(PROVIDER_TIMEOUT):
                provider, health, details = await _provider_status(adapter)
        except TimeoutError:
            health = Health(False, None, f"no answer within {PROVIDER_TIMEOUT:g} s")
            details = {"error": health.detail}
    rec = svc.hub.record_health(rec.id, health)
    held = _held_rules(svc, rec.id)
    details = redact(details, adapter, _secret_values(rec, adapter))
    diversion = _diversion(held, provider, details.get("error"))
    return {
        "integration": describe(svc, rec),
        "diverting": diversion["diverting"],
        "diversion": diversion,
        "connection": health.to_dict(),
        "provider": details,
        "rules": held,
    }


# ------------------------------------------------------------------ changes


async def upsert(
    svc: Service, config: AdapterConfig, *, integration_id: int | None, actor: str
) -> tuple[dict[str, Any], bool]:
    """Create or update an integration through Service.upsert_adapter."""
    if config.adapter_type not in INTEGRATION_TYPES:
        raise ValidationFailed(
            f"type {config.adapter_type!r} is not a scrubbing integration type "
            f"({', '.join(INTEGRATION_TYPES)}); other adapters are managed under "
            "/mitigation/adapters",
            code="not_a_scrubbing_type",
            field="type",
        )
    existing: AdapterRecord | None = None
    if integration_id is not None:
        existing = integration(svc, integration_id)
    else:
        existing = next((r for r in svc.hub.records() if r.name == config.name), None)
        if existing is not None and not is_integration(existing):
            raise Conflict(
                f"an adapter of type {existing.adapter_type} is already named {config.name!r}",
                code="duplicate_name",
                field="name",
            )
    if existing is not None:
        config = _keep_secrets(svc, existing, config)
    try:
        rec, created = await svc.upsert_adapter(config, adapter_id=integration_id, actor=actor)
    except SluiceError as exc:
        if exc.field == "adapter_type":
            exc.field = "type"
        raise
    return describe(svc, svc.hub.get(rec["id"])), created


def _keep_secrets(svc: Service, existing: AdapterRecord, config: AdapterConfig) -> AdapterConfig:
    """Secret settings are write-only: the ones an update leaves out keep their stored value."""
    if existing.adapter_type != config.adapter_type:
        return config
    old = svc.hub.live(existing.id)
    missing = {
        k: v
        for k, v in existing.config.items()
        if k in secret_keys(old, existing.config) and k not in config.config
    }
    if not missing:
        return config
    return config.model_copy(update={"config": {**config.config, **missing}})


async def delete(svc: Service, integration_id: int, actor: str) -> dict[str, Any]:
    """Withdraw the integration's rules, then delete it (Service.delete_adapter)."""
    integration(svc, integration_id)
    return await svc.delete_adapter(integration_id, actor)


async def check_connection(svc: Service, integration_id: int) -> dict[str, Any]:
    integration(svc, integration_id)
    return await svc.test_adapter(integration_id)


def scrubbing_intent(target_ip: str) -> ScrubbingIntent:
    try:
        intent = build_intent({"kind": "scrubbing", "prefix": target_ip})
    except IntentInvalid as exc:
        message = exc.message.removeprefix("prefix: ")
        raise IntentInvalid(f"target_ip: {message}", field="target_ip") from None
    assert isinstance(intent, ScrubbingIntent)  # noqa: S101  # kind scrubbing builds one
    return intent


async def announce(
    svc: Service,
    integration_id: int,
    *,
    target_ip: str | None,
    ttl: int | None,
    reason: str,
    actor: str,
) -> dict[str, Any]:
    """Create scrubbing rules for ``target_ip`` or for every configured prefix.

    Waits for the provider's answer like ``POST /mitigation/rules``. A refusal of the only
    prefix is raised; with several prefixes, refused ones are listed under ``errors``
    (and raised when all are refused).
    """
    rec = integration(svc, integration_id)
    if target_ip is not None:
        targets = [target_ip]
    else:
        adapter = svc.hub.live(rec.id)
        if adapter is None:
            raise AdapterUnavailable(
                f"integration {rec.name!r} cannot be used: {rec.error or 'not built'}"
            )
        configured = configured_prefixes(adapter)
        if not configured:
            raise ValidationFailed(
                f"integration {rec.name!r} has no configured prefixes: give target_ip",
                code="missing_parameter",
                field="target_ip",
            )
        targets = configured
    reqs = [
        RuleRequest(
            intent=scrubbing_intent(t),
            adapter=rec.id,
            ttl=0 if ttl is None else ttl,  # enabled until withdrawn unless a TTL is given
            reason=reason,
            origin="manual",
            actor=actor,
        )
        for t in targets
    ]
    results = await svc.create_rules(reqs)
    errors = [(t, r) for t, r in zip(targets, results, strict=True) if isinstance(r, SluiceError)]
    done = [r for r in results if isinstance(r, RuleResult)]
    if not done:
        raise errors[0][1]
    fresh = [r.rule["id"] for r in done if not r.deduplicated and r.rule["state"] == "pending"]
    await _wait_answered(svc, fresh)
    return {
        "rules": [svc.get_rule(r.rule["id"], events=False) for r in done],
        "created": sum(not r.deduplicated for r in done),
        "errors": [
            {"target_ip": t, "code": e.code, "message": e.message, "field": e.field}
            for t, e in errors
        ],
    }


async def _wait_answered(svc: Service, rule_ids: Sequence[int]) -> None:
    """Wait (up to api_wait_seconds in all) until the adapter answered for each rule.

    Each rule is read before its wait starts, and the waiter is registered without a
    suspension in between, so an answer that arrived meanwhile is never waited for.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + svc.settings.api_wait_seconds
    for rid in rule_ids:
        left = deadline - loop.time()
        if left <= 0:
            return
        if svc.get_rule(rid, events=False)["state"] == "pending":
            await svc.dispatcher.wait_for(rid, left)


async def withdraw(
    svc: Service, integration_id: int, *, target_ip: str | None, reason: str, actor: str
) -> dict[str, Any]:
    """Withdraw the integration's held scrubbing rules (all, or the one for ``target_ip``)."""
    rec = integration(svc, integration_id)
    held = _held_rules(svc, rec.id)
    if target_ip is not None:
        key = intent_key(scrubbing_intent(target_ip))
        held = [r for r in held if r["key"] == key]
        if not held:
            raise NotFound(
                f"integration {rec.name!r} holds no scrubbing rule for {target_ip}",
                code="diversion_not_found",
                field="target_ip",
            )
    withdrawn = [await svc.withdraw_rule(r["id"], actor, reason) for r in held]
    return {"rules": withdrawn, "withdrawn": len(withdrawn)}
