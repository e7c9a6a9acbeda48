"""How rules look outside the process (API, CLI): one function, used everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from policies.intents import AnyIntent, intent_to_dict, parse_canonical


def _iso(v: Any) -> str | None:
    return v.isoformat() if isinstance(v, datetime) else None


def rule_view(
    row: dict[str, Any], adapter_name: str, intent: AnyIntent | None = None
) -> dict[str, Any]:
    if intent is None:
        intent = parse_canonical(row["intent"])
    fields = intent_to_dict(intent)
    fields.pop("kind", None)
    return {
        "id": row["id"],
        "key": row["key"],
        "intent_type": row["kind"],
        "target_ip": row["target"],
        "intent": row["intent"],
        "match": fields,
        "adapter_id": row["adapter_id"],
        "adapter_name": adapter_name,
        "state": str(row["state"]),
        "end_state": row.get("end_state"),
        "dry_run": bool(row["dry_run"]),
        "origin": row["origin"],
        "reason": row["reason"],
        "explanation": row.get("explanation"),
        "incident_id": row.get("incident_id"),
        "created_by": row.get("created_by"),
        "ttl": row["ttl"],
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(row.get("expires_at")),
        "activated_at": _iso(row.get("activated_at")),
        "ended_at": _iso(row.get("ended_at")),
        "error": row.get("error"),
        "attempts": row.get("attempts", 0),
        "next_attempt_at": _iso(row.get("next_attempt_at")),
    }
