"""Under Attack Mode on a Cloudflare zone (the ``cloudflare_uam`` runbook step).

Cloudflare's "I'm Under Attack" mode is the zone setting ``security_level`` with the value
``under_attack``: visitors get a JavaScript challenge before reaching the origin. Turning
it off means setting the level the zone normally runs at (``medium`` unless the operator
configured another). Both are one ``PATCH /zones/{zone}/settings/security_level``.
"""

from __future__ import annotations

from typing import Any

from adapters.cloudflare import render
from adapters.cloudflare.api import CloudflareApi

UNDER_ATTACK = "under_attack"


async def security_level(api: CloudflareApi, zone_id: str) -> str:
    """The zone's current security level, as Cloudflare reports it."""
    path = render.security_level_path(zone_id)
    result = await api.call("GET", path)
    value = result.get("value") if isinstance(result, dict) else None
    if not isinstance(value, str):
        raise api.http.bad_response(f"GET {path}", "the setting has no string value")
    return value


async def set_security_level(api: CloudflareApi, zone_id: str, level: str) -> dict[str, Any]:
    """Set the zone's security level; returns the setting Cloudflare answered with."""
    path = render.security_level_path(zone_id)
    result = await api.call("PATCH", path, json=render.security_level_body(level))
    if not isinstance(result, dict) or result.get("value") != level:
        raise api.http.bad_response(f"PATCH {path}", f"the zone did not report level {level!r}")
    return {"zone_id": zone_id, "security_level": level, "modified_on": result.get("modified_on")}


async def under_attack(
    api: CloudflareApi, zone_id: str, *, enabled: bool, normal_level: str = "medium"
) -> dict[str, Any]:
    """Turn Under Attack Mode on, or back to ``normal_level``."""
    return await set_security_level(api, zone_id, UNDER_ATTACK if enabled else normal_level)
