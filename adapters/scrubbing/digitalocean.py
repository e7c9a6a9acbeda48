"""``digitalocean``: move droplets behind a lockdown Cloud Firewall.

What it does: DigitalOcean has no scrubbing or diversion API; its Cloud Firewalls filter
traffic before it reaches a droplet, so the closest honest action is to put the
droplets of a prefix behind a restrictive firewall the operator prepared. DigitalOcean
firewalls only *allow* traffic and a droplet in several firewalls gets the union of
their rules, so the lockdown works only if the droplet leaves its normal firewall:
targets map prefixes to droplets (``targets: [{prefix, droplet_ids: [...]}]``) and the
settings name ``lockdown_firewall_id`` and, usually, ``normal_firewall_id``.

A firewall reaches a droplet in two ways: by id (the firewall's ``droplet_ids``) or
through a tag (the firewall's ``tags``, matched against the droplet's ``tags``); a
droplet reached through a tag is *not* listed in ``droplet_ids`` (DigitalOcean API,
"Retrieve an Existing Firewall"), so taking it out by id alone does nothing.

Announce, per droplet: read the droplet (``GET /v2/droplets/{id}``) and the normal
firewall; ``POST /v2/firewalls/{lockdown}/droplets`` ``{"droplet_ids": [id]}``; record
every way the normal firewall reaches the droplet as a marker tag on the droplet
(``sluice-normal-id``, ``sluice-normal-tag:<tag>``: ``POST /v2/tags`` then
``POST /v2/tags/{marker}/resources``), and only then remove those ways
(``DELETE /v2/firewalls/{normal}/droplets``, ``DELETE /v2/tags/{tag}/resources``).
Withdraw restores exactly what the markers say (back by id and/or re-tagged), removes the
markers, then takes the droplet out of the lockdown firewall. The markers live at
DigitalOcean, so a restarted Sluice restores the same state. Caveat: while locked down, a
droplet that was reached through a tag no longer carries that tag, so anything else
selecting droplets by that tag (a load balancer, another firewall, monitoring) does not
see it either; attach the normal firewall by id to avoid that.

``active()``/``status()`` read both firewalls (``GET /v2/firewalls/{id}``, ``droplet_ids``
and ``tags``) and the droplets' tags: a droplet is "diverting" while the lockdown
firewall reaches it and the normal one does not. Nothing is scrubbed: what the lockdown
firewall does not allow is dropped, the rest still reaches the droplet.

Auth: personal access token (``Authorization: Bearer``); ``check()`` reads
``GET /v2/account``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

from pydantic import Field

from adapters.base import AdapterConfig, resolve_capabilities, validate_settings
from adapters.scrubbing.common import (
    BearerScrubbingAdapter,
    BearerSettings,
    Target,
    Targets,
    Unit,
    UnitState,
    call_json,
    covering,
    default_endpoint,
    field_of,
)
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://api.digitalocean.com"
BY_ID = "sluice-normal-id"  # marker: the normal firewall listed the droplet by id
VIA_TAG = "sluice-normal-tag:"  # marker prefix: ... reached it through this tag
FW_ID = r"^[0-9a-fA-F-]{1,64}$"


@dataclass(frozen=True, slots=True)
class Reach:
    """Whom a firewall reaches: droplets by id and droplets carrying one of its tags."""

    droplets: set[int] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)

    def reaches(self, unit: Unit, droplet_tags: set[str]) -> bool:
        return int(unit.uid) in self.droplets or bool(self.tags & droplet_tags)


class DropletTarget(Target):
    droplet_ids: Annotated[tuple[int, ...], Field(min_length=1)]


class DigitalOceanSettings(BearerSettings):
    endpoint: str = DEFAULT_ENDPOINT
    targets: Targets[DropletTarget]
    lockdown_firewall_id: Annotated[str, Field(pattern=FW_ID)]
    normal_firewall_id: Annotated[str | None, Field(pattern=FW_ID)] = None


class DigitalOceanAdapter(BearerScrubbingAdapter[DigitalOceanSettings]):
    adapter_type: ClassVar[str] = "digitalocean"
    mechanism: ClassVar[str] = (
        "DigitalOcean Cloud Firewall: droplets moved to the lockdown firewall"
    )

    @classmethod
    def from_config(cls, config: AdapterConfig) -> DigitalOceanAdapter:
        settings = validate_settings(
            DigitalOceanSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def _units(self, t: DropletTarget) -> list[Unit]:
        return [Unit(str(d), t.prefix, "droplet") for d in t.droplet_ids]

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        return self._units(covering(self.settings.targets, intent.prefix, what=self.label))

    async def _move(self, firewall: str, method: str, unit: Unit) -> None:
        body = {"droplet_ids": [int(unit.uid)]}
        await call_json(self.http, method, f"/v2/firewalls/{firewall}/droplets", json=body)

    async def _tag(self, tag: str, method: str, unit: Unit) -> None:
        body = {"resources": [{"resource_id": unit.uid, "resource_type": "droplet"}]}
        await call_json(self.http, method, f"/v2/tags/{quote(tag, safe='')}/resources", json=body)

    async def _ensure_tag(self, name: str) -> None:
        """``POST /v2/tags``; a tag that exists already is fine. DigitalOcean does not
        document its answer for an existing name, so 409 and 422 are accepted too; tagging
        with it right after fails loudly if the tag really is missing."""
        resp = await self.http.send("POST", "/v2/tags", json={"name": name})
        if resp.status_code not in (409, 422):
            self.http.check(resp, "POST /v2/tags")

    async def _droplet_tags(self, droplet: str) -> set[str]:
        path = f"/v2/droplets/{droplet}"
        body = await call_json(self.http, "GET", path)
        tags = field_of(self.http, body, f"GET {path}", "droplet", "tags")
        if not isinstance(tags, list):
            raise self.http.bad_response(f"GET {path}", "tags is not a list")
        return {str(t) for t in tags}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        s = self.settings
        await self._move(s.lockdown_firewall_id, "POST", unit)
        if not s.normal_firewall_id:
            return {"firewall_id": s.lockdown_firewall_id}
        tags = await self._droplet_tags(unit.uid)
        normal = await self._firewall(s.normal_firewall_id)
        by_id = int(unit.uid) in normal.droplets
        via = sorted(tags & normal.tags)
        markers = ([BY_ID] if by_id else []) + [VIA_TAG + t for t in via]
        for marker in markers:  # first record how the normal firewall reached it
            await self._ensure_tag(marker)
            await self._tag(marker, "POST", unit)
        if by_id:
            await self._move(s.normal_firewall_id, "DELETE", unit)
        for tag in via:
            await self._tag(tag, "DELETE", unit)
        return {"firewall_id": s.lockdown_firewall_id, "left_normal_by": markers}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        s = self.settings
        restored: list[str] = []
        if s.normal_firewall_id:
            markers = sorted(
                t for t in await self._droplet_tags(unit.uid) if t == BY_ID or t.startswith(VIA_TAG)
            )
            for marker in markers:  # back into the normal firewall the way it was
                if marker == BY_ID:
                    await self._move(s.normal_firewall_id, "POST", unit)
                else:
                    await self._tag(marker.removeprefix(VIA_TAG), "POST", unit)
                restored.append(marker)
            for marker in markers:
                await self._tag(marker, "DELETE", unit)
        await self._move(s.lockdown_firewall_id, "DELETE", unit)
        return {"firewall_id": s.normal_firewall_id, "restored": restored}

    async def _firewall(self, firewall: str) -> Reach:
        path = f"/v2/firewalls/{firewall}"
        body = await call_json(self.http, "GET", path)
        ids = field_of(self.http, body, f"GET {path}", "firewall", "droplet_ids")
        tags = body["firewall"].get("tags") or []
        if not isinstance(ids, list) or not isinstance(tags, list):
            raise self.http.bad_response(f"GET {path}", "droplet_ids or tags is not a list")
        return Reach({int(i) for i in ids}, {str(t) for t in tags})

    async def read(self) -> list[UnitState]:
        s = self.settings
        locked = await self._firewall(s.lockdown_firewall_id)
        normal = await self._firewall(s.normal_firewall_id) if s.normal_firewall_id else Reach()
        out = []
        for t in s.targets:
            for unit in self._units(t):
                tags = await self._droplet_tags(unit.uid) if locked.tags or normal.tags else set()
                in_lock, in_normal = locked.reaches(unit, tags), normal.reaches(unit, tags)
                detail = {"in_lockdown": in_lock, "in_normal": in_normal}
                out.append(UnitState(unit, in_lock and not in_normal, detail))
        return out

    async def probe(self) -> str:
        body = await call_json(self.http, "GET", "/v2/account")
        status = field_of(self.http, body, "GET /v2/account", "account", "status")
        return f"account status {status}"

    def provider_details(self) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint": s.endpoint,
            "lockdown_firewall_id": s.lockdown_firewall_id,
            "normal_firewall_id": s.normal_firewall_id,
            "droplets": {str(t.prefix): list(t.droplet_ids) for t in s.targets},
        }
