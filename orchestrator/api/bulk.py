"""Bulk signal intake: many signals in one request (detectors and agents under a storm).

``POST /incidents/bulk`` takes ``{"signals": [<signal>, ...]}``; each signal is what
``POST /incidents`` takes (the signal fields plus ``action``, ``incident_id``, ``source``,
``event_id``, ``raw_details``). The request counts once against the token's rate limit.

* **The request as a whole** is refused, and nothing changes, when its body is not a JSON
  object with exactly one key ``signals`` holding a non-empty list (422 ``invalid_json``,
  422 ``invalid_parameter``/``missing_parameter``/``unknown_parameter``/``empty_batch``),
  or when the list is longer than ``bulk_max_signals`` (413 ``batch_too_large``). The
  body size limit (``max_body_bytes``) holds as for any request.
* **Each signal** is checked on its own: a bad one gets its error in its place of the
  answer (``ok: false`` with the code ``POST /incidents`` would give) and changes
  nothing; the good ones are handled all the same.
* The good signals are evaluated in their order and stored in ONE transaction (each
  ``unban`` among them in its own, in its place), and the rules they make go to the
  adapters as one batch. Two signals for one target update one incident, and a rule
  asked for twice is made once.

The answer (200 whenever the list was read) has one result per signal, in order::

    {"ok": true, "accepted": 2, "failed": 1, "results": [
      {"index": 0, "ok": true, "incident_id": "...", "incident_status": "mitigating",
       "decision": "announce", "tier": "tier2", "rule_ids": [17], "refused": [],
       "withdrawn": [], "held_until": null},
      {"index": 1, "ok": false, "error": {"code": "invalid_parameter", "message": "...",
       "field": "target_ip"}}, ...]}

An item that failed for a reason of the moment (``store_busy``, ``internal_error``) can be
sent again; the decision's explanation is stored with the incident
(``GET /incidents/{id}``), not repeated here.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from orchestrator.api.envelope import error_body
from orchestrator.api.signals import (
    Agent,
    AgentIncident,
    Runtime,
    Writer,
    _signal,
    agent_signal,
    answer,
    detector_fields,
)
from orchestrator.intake import Item, Outcome, Result
from policies.errors import SluiceError, ValidationFailed

log = logging.getLogger("sluice.api")
router = APIRouter(tags=["signals"])


class BatchTooLarge(SluiceError):
    code = "batch_too_large"
    status = 413


def _item(raw: Any, actor: str) -> Item:
    """One signal of the list, checked (ValidationFailed names what is wrong)."""
    if not isinstance(raw, dict):
        raise ValidationFailed("each signal must be a JSON object", code="invalid_signal")
    body = dict(raw)
    f = detector_fields(body)
    if f.action == "unban":
        if body:  # the signal fields are optional on an unban; checked when given
            _signal(body)
        return Item(
            "unban",
            actor,
            incident_id=f.incident_id,
            source=f.source,
            event_id=f.event_id,
            raw_details=f.raw_details,
        )
    return Item(
        "ban",
        actor,
        signal=_signal(body),
        incident_id=f.incident_id,
        source=f.source,
        event_id=f.event_id,
        raw_details=f.raw_details,
    )


def signals_of(body: Any, limit: int, key: str = "signals") -> list[Any]:
    """The list under ``key`` of a bulk body; anything else refuses the whole request."""
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    extra = sorted(set(body) - {key})
    if extra:
        raise ValidationFailed(
            f"unknown parameter {extra[0]}", code="unknown_parameter", field=extra[0]
        )
    if key not in body:
        raise ValidationFailed(f"{key} is required", code="missing_parameter", field=key)
    signals = body[key]
    if not isinstance(signals, list):
        raise ValidationFailed(f"{key} must be a list", field=key)
    if not signals:
        raise ValidationFailed(f"{key} is empty: send at least one", code="empty_batch", field=key)
    if len(signals) > limit:
        raise BatchTooLarge(
            f"{len(signals)} {key} in one request; at most {limit} "
            "(settings: bulk_max_signals); split the batch",
            field=key,
        )
    return signals


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise ValidationFailed("the request body must be JSON", code="invalid_json") from None


async def _answer(
    rt: Runtime, results: list[dict[str, Any] | None], items: list[Item], where: list[int]
) -> Response:
    """Submit the good items as one batch; the answer with a result per input, in order."""
    for i, res in zip(where, await rt.intake.submit_many(items), strict=True):
        results[i] = _brief(res)
    out = [{"index": i, **r} for i, r in enumerate(results) if r is not None]
    failed = sum(1 for r in out if not r["ok"])
    return answer({"ok": True, "accepted": len(out) - failed, "failed": failed, "results": out})


def _brief(result: Result | Exception) -> dict[str, Any]:
    if isinstance(result, Outcome):
        return {"ok": True, **result.brief()}
    if isinstance(result, SluiceError):
        return error_body(result.code, result.message, result.field)
    if isinstance(result, Exception):  # logged where it happened
        return error_body("internal_error", "internal error; see the service log")
    inc = result["incident"]  # an unban's answer
    return {
        "ok": True,
        "incident_id": inc["id"],
        "incident_status": inc["status"],
        "decision": "resolved",
        "tier": inc["tier"],
        "rule_ids": [],
        "refused": [],
        "withdrawn": result["withdrawn"],
        "held_until": None,
    }


_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["signals"],
                "additionalProperties": False,
                "properties": {
                    "signals": {
                        "type": "array",
                        "minItems": 1,
                        "description": "signals as POST /incidents takes them, at most "
                        "bulk_max_signals (default 1000)",
                        "items": {"type": "object"},
                    }
                },
            },
            "example": {
                "signals": [
                    {"target_ip": "203.0.113.7", "bps": "3G", "pps": 400000,
                     "attack_family": "udp_flood", "severity": "high",
                     "source": "fastnetmon", "event_id": "a1"},
                    {"action": "unban", "source": "fastnetmon", "event_id": "a0"},
                ]
            },
        }
    },
}  # fmt: skip


@router.post("/incidents/bulk", openapi_extra={"requestBody": _BODY})
async def report_incidents(request: Request, rt: Runtime, who: Writer) -> Response:
    """Many signals in one request (counted once by the rate limit); a result per signal."""
    signals = signals_of(await _body(request), rt.service.settings.bulk_max_signals)
    results: list[dict[str, Any] | None] = [None] * len(signals)
    items: list[Item] = []
    where: list[int] = []
    for i, raw in enumerate(signals):
        try:
            items.append(_item(raw, who.name))
            where.append(i)
        except SluiceError as exc:
            results[i] = error_body(exc.code, exc.message, exc.field)
    return await _answer(rt, results, items, where)


def _agent_item(raw: Any, node: dict[str, Any]) -> Item:
    try:
        incident = AgentIncident.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = str(err["msg"]).removeprefix("Value error, ")
        code = {"missing": "missing_parameter", "extra_forbidden": "unknown_parameter"}.get(
            err["type"], "invalid_parameter"
        )
        text = f"{field}: {msg}" if field else msg
        raise ValidationFailed(text, code=code, field=field) from None
    return Item("ban", f"node:{node['name']}", signal=agent_signal(incident, node))


@router.post(
    "/agent/incidents/bulk",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["incidents"],
                        "additionalProperties": False,
                        "properties": {
                            "incidents": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"$ref": "#/components/schemas/AgentIncident"},
                            }
                        },
                    }
                }
            },
        }
    },
)
async def agent_incidents(request: Request, node: Agent, rt: Runtime) -> Response:
    """A node's incidents in one request (``{"incidents": [...]}``, each what
    ``POST /agent/incidents`` takes), as ``POST /incidents/bulk`` handles signals."""
    reports = signals_of(await _body(request), rt.service.settings.bulk_max_signals, "incidents")
    request.app.state.nodes.seen(node["id"])
    results: list[dict[str, Any] | None] = [None] * len(reports)
    items: list[Item] = []
    where: list[int] = []
    for i, raw in enumerate(reports):
        try:
            items.append(_agent_item(raw, node))
            where.append(i)
        except SluiceError as exc:
            results[i] = error_body(exc.code, exc.message, exc.field)
    return await _answer(rt, results, items, where)
