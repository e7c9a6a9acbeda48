"""Pure rendering of one rule change into a webhook message (payload and its bytes).

The body follows the Standard Webhooks payload shape ``{"type", "timestamp", "data"}``:

* ``type``: ``rule.announce``, ``rule.withdraw``, ``rule.expire`` or ``rule.extend``
  (``sluice.test`` for the adapter's connectivity check);
* ``timestamp``: when the message was made (ISO 8601, UTC);
* ``data``: ``event``, ``adapter`` (the adapter's name), ``rule`` (``id``, ``key``, the
  canonical ``intent`` text, ``intent_detail`` as a JSON object, ``reason``, ``origin``,
  ``ttl``, ``expires_at``), ``explanation`` (the decision's reasons, a list of strings)
  and ``incident`` (the incident that caused it, or null).

Bodies are compact JSON with sorted keys, so equal messages are equal bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from adapters.base import RuleRef
from policies.intents import canonical, intent_to_dict

ANNOUNCE_EVENTS = ("announce", "extend")
WITHDRAW_EVENTS = ("withdraw", "expire")


def event_of(ref: RuleRef, *, announcing: bool) -> str:
    """The rule's event from its context, kept only when it fits the call."""
    event = ref.context.get("event")
    allowed = ANNOUNCE_EVENTS if announcing else WITHDRAW_EVENTS
    return event if isinstance(event, str) and event in allowed else allowed[0]


def _jsonable(value: Any) -> Any:
    """Context values as JSON (datetimes as ISO text, unknown objects as their str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def payload(ref: RuleRef, adapter: str, event: str, now: datetime | None = None) -> dict[str, Any]:
    ctx = ref.context
    explanation = ctx.get("explanation") or []
    return {
        "type": f"rule.{event}",
        "timestamp": (now or datetime.now(UTC)).isoformat(),
        "data": {
            "event": event,
            "adapter": adapter,
            "rule": {
                "id": ref.rule_id,
                "key": ref.key,
                "intent": canonical(ref.intent),
                "intent_detail": intent_to_dict(ref.intent),
                "reason": _jsonable(ctx.get("reason")),
                "origin": _jsonable(ctx.get("origin")),
                "ttl": _jsonable(ctx.get("ttl")),
                "expires_at": _jsonable(ctx.get("expires_at")),
            },
            "explanation": [str(x) for x in explanation]
            if isinstance(explanation, list | tuple)
            else [str(explanation)],
            "incident": _jsonable(ctx.get("incident")),
        },
    }


def ping_payload(adapter: str, now: datetime | None = None) -> dict[str, Any]:
    return {
        "type": "sluice.test",
        "timestamp": (now or datetime.now(UTC)).isoformat(),
        "data": {"adapter": adapter},
    }


def body_bytes(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
