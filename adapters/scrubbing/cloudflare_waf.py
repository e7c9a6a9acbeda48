"""``cloudflare_waf``: "divert" a proxied zone by switching on Under Attack Mode.

What it does: Cloudflare's WAF protects hostnames proxied through Cloudflare, not raw
prefixes, so the closest honest action is to raise the protection of the zones that
serve a prefix. Targets map prefixes to zones (``targets: [{prefix, zone_ids: [...],
normal_level}]``). Announce sets each zone's ``security_level`` to ``under_attack``
(``PATCH /zones/{zone}/settings/security_level`` ``{"value": "under_attack"}``): every
visitor must pass a JavaScript challenge before reaching the origin. Withdraw sets the
zone back to ``normal_level`` (default ``medium``). ``active()``/``status()`` read each
zone's level with ``GET`` on the same path; a zone is "diverting" while it is at
``under_attack``.

It does not change DNS, proxying or any traffic that does not go through Cloudflare's
proxy (attacks on the origin IP directly are not affected). Auth: API token
(``Authorization: Bearer``), checked with ``GET /accounts/{account_id}/tokens/verify``
for an account-owned token (``account_id`` then required) or ``GET /user/tokens/verify``
with ``token_owner: user``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import Field, field_validator

from adapters.base import (
    AdapterConfig,
    Capability,
    resolve_capabilities,
    validate_settings,
)
from adapters.cloudflare import render, uam
from adapters.cloudflare.api import DEFAULT_ENDPOINT, CloudflareApi, CloudflareBase, check_id
from adapters.http import HttpClient
from adapters.scrubbing.common import (
    ScrubbingAdapter,
    Target,
    Targets,
    Unit,
    UnitState,
    covering,
    default_endpoint,
)
from policies.intents import ScrubbingIntent


class ZoneTarget(Target):
    zone_ids: Annotated[tuple[str, ...], Field(min_length=1)]
    normal_level: str = "medium"

    @field_validator("zone_ids")
    @classmethod
    def _ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_id(z) for z in v)

    @field_validator("normal_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in render.SECURITY_LEVELS or v == uam.UNDER_ATTACK:
            raise ValueError(f"{v!r} is not a normal Cloudflare security level")
        return v


class WafSettings(CloudflareBase):
    targets: Targets[ZoneTarget]


class CloudflareWafAdapter(ScrubbingAdapter[WafSettings]):
    adapter_type: ClassVar[str] = "cloudflare_waf"
    mechanism: ClassVar[str] = "Cloudflare zone security level 'under_attack' (Under Attack Mode)"

    def __init__(
        self,
        name: str,
        settings: WafSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        http = HttpClient(
            settings, label=f"cloudflare_waf integration {name!r}", transport=transport
        )
        super().__init__(name, settings, capabilities, http)
        self.api = CloudflareApi(http, settings.auth_token)
        self._normal = {z: t.normal_level for t in settings.targets for z in t.zone_ids}

    @classmethod
    def from_config(cls, config: AdapterConfig) -> CloudflareWafAdapter:
        settings = validate_settings(
            WafSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def _units(self, t: ZoneTarget) -> list[Unit]:
        return [Unit(z, t.prefix, "zone") for z in t.zone_ids]

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        return self._units(covering(self.settings.targets, intent.prefix, what=self.label))

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        return await uam.under_attack(self.api, unit.uid, enabled=True)

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return await uam.under_attack(
            self.api, unit.uid, enabled=False, normal_level=self._normal[unit.uid]
        )

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.targets:
            for unit in self._units(t):
                level = await uam.security_level(self.api, unit.uid)
                out.append(UnitState(unit, level == uam.UNDER_ATTACK, {"security_level": level}))
        return out

    async def probe(self) -> str:
        return await self.api.verify_token(self.settings.verify_account)

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "zones": {str(t.prefix): list(t.zone_ids) for t in self.settings.targets},
        }
