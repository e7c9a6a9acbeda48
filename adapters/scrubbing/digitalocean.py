"""``digitalocean``: move droplets behind a lockdown Cloud Firewall.

What it does: DigitalOcean has no scrubbing or diversion API; its Cloud Firewalls filter
traffic before it reaches a droplet, so the closest honest action is to put the
droplets of a prefix behind a restrictive firewall the operator prepared. DigitalOcean
firewalls only *allow* traffic and a droplet in several firewalls gets the union of
their rules, so the lockdown works only if the droplet leaves its normal firewall:
targets map prefixes to droplets (``targets: [{prefix, droplet_ids: [...]}]``) and the
settings name ``lockdown_firewall_id`` and, usually, ``normal_firewall_id``.

Announce: ``POST /v2/firewalls/{lockdown}/droplets`` ``{"droplet_ids": [id]}``, then
``DELETE /v2/firewalls/{normal}/droplets`` with the same body. Withdraw does the reverse
in the safe order (back into the normal firewall first, then out of the lockdown one).
``active()``/``status()`` read both firewalls (``GET /v2/firewalls/{id}``,
``droplet_ids``): a droplet is "diverting" while it is in the lockdown firewall and not
in the normal one. Nothing is scrubbed: what the lockdown firewall does not allow is
dropped, the rest still reaches the droplet.

Auth: personal access token (``Authorization: Bearer``); ``check()`` reads
``GET /v2/account``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

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
FW_ID = r"^[0-9a-fA-F-]{1,64}$"


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

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        s = self.settings
        await self._move(s.lockdown_firewall_id, "POST", unit)
        if s.normal_firewall_id:
            await self._move(s.normal_firewall_id, "DELETE", unit)
        return {"firewall_id": s.lockdown_firewall_id}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        s = self.settings
        if s.normal_firewall_id:
            await self._move(s.normal_firewall_id, "POST", unit)
        await self._move(s.lockdown_firewall_id, "DELETE", unit)
        return {"firewall_id": s.normal_firewall_id}

    async def _droplets(self, firewall: str) -> set[int]:
        path = f"/v2/firewalls/{firewall}"
        body = await call_json(self.http, "GET", path)
        ids = field_of(self.http, body, f"GET {path}", "firewall", "droplet_ids")
        if not isinstance(ids, list):
            raise self.http.bad_response(f"GET {path}", "droplet_ids is not a list")
        return {int(i) for i in ids}

    async def read(self) -> list[UnitState]:
        s = self.settings
        locked = await self._droplets(s.lockdown_firewall_id)
        normal = await self._droplets(s.normal_firewall_id) if s.normal_firewall_id else set()
        out = []
        for t in s.targets:
            for unit in self._units(t):
                d = int(unit.uid)
                detail = {"in_lockdown": d in locked, "in_normal": d in normal}
                out.append(UnitState(unit, d in locked and d not in normal, detail))
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
