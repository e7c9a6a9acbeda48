"""Receivers for detectors that speak their own format (Prometheus Alertmanager).

``POST /detectors/alertmanager`` takes Alertmanager's webhook body (version 4). Each alert
is one attack: its labels (or annotations) give ``target_ip`` and optionally ``bps``,
``pps``, ``attack_family`` and ``severity``; its ``fingerprint`` is the event id under
source ``alertmanager`` (``?source=`` names another). A firing alert is a ban (the same
fingerprint updates the same incident), a resolved one the unban. Point Alertmanager at
it with a bearer token of scope ``write``::

    receivers:
      - name: sluice
        webhook_configs:
          - url: http://sluice:8080/api/v1/detectors/alertmanager
            send_resolved: true
            http_config: {authorization: {credentials: <token>}}

Every alert gets its own result; one bad alert does not refuse the others (Alertmanager
would send the whole group again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.api.signals import RAW_DETAILS_MAX_BYTES, SOURCE, Runtime, apply_signal
from orchestrator.tokens import TokenInfo
from policies.errors import SluiceError, ValidationFailed

router = APIRouter(tags=["detectors"])
Writer = Annotated[TokenInfo, Depends(require("write"))]

_SEVERITY = {
    "low": "low",
    "info": "low",
    "medium": "medium",
    "warning": "medium",
    "high": "high",
    "error": "high",
    "critical": "critical",
    "page": "critical",
}
_FIELDS = ("target_ip", "bps", "pps", "attack_family")


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    fingerprint: str | None = None


class Webhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str | None = None
    status: Literal["firing", "resolved"] | None = None
    alerts: Annotated[list[Alert], Field(max_length=1000)]


def _fingerprint(alert: Alert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    canon = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _body(alert: Alert, source: str) -> dict[str, Any]:
    """The alert as a Sluice signal body."""
    both = {**alert.annotations, **alert.labels}
    body: dict[str, Any] = {k: both[k] for k in _FIELDS if k in both}
    if "target_ip" not in body:
        raise ValidationFailed(
            "the alert has no target_ip label or annotation",
            code="missing_parameter",
            field="labels.target_ip",
        )
    for k in ("bps", "pps"):
        if k in body:
            # a rate with a suffix ("800M") stays text: the signal model reads it
            with contextlib.suppress(ValueError):
                body[k] = float(body[k])
    severity = _SEVERITY.get(both.get("severity", "").lower())
    if severity is not None:
        body["severity"] = severity
    raw = alert.model_dump(mode="json")
    if len(json.dumps(raw).encode()) > RAW_DETAILS_MAX_BYTES:
        raw = {"labels": alert.labels, "status": alert.status, "truncated": True}
    body.update(
        action="ban" if alert.status == "firing" else "unban",
        source=source,
        event_id=_fingerprint(alert),
        raw_details=raw,
    )
    if alert.status == "resolved":  # an unban needs only its event
        body = {k: body[k] for k in ("action", "source", "event_id", "raw_details")}
    return body


@router.post("/detectors/alertmanager")
async def alertmanager(
    hook: Webhook,
    rt: Runtime,
    who: Writer,
    source: Annotated[str, Query(max_length=64)] = "alertmanager",
) -> dict[str, Any]:
    if not SOURCE.fullmatch(source):
        raise ValidationFailed(
            "source must be a detector name of letters, digits, '_', '.', ':' or '-'",
            code="invalid_source",
            field="source",
        )
    results = []
    for alert in hook.alerts:
        entry: dict[str, Any] = {
            "fingerprint": _fingerprint(alert),
            "action": "ban" if alert.status == "firing" else "unban",
        }
        try:
            res = await apply_signal(rt, _body(alert, source), f"{who.name}:{source}")
        except SluiceError as exc:
            entry.update(ok=False, error={"code": exc.code, "message": exc.message})
        else:
            entry.update(ok=True, incident_id=res["incident"]["id"])
            if "decision" in res:
                entry["decision"] = res["decision"]["status"]
        results.append(entry)
    return ok(results=results)
