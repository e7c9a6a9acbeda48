"""``vultr``: switch instances to a lockdown firewall group.

What it does: Vultr has no on-demand diversion API; each instance has one
``firewall_group_id`` (Vultr's stateful firewall in front of the instance), so the
closest honest action is to switch the instances of a prefix to a restrictive group the
operator prepared. Targets map prefixes to instance ids (``targets: [{prefix,
instance_ids: [...]}]``); the settings name ``lockdown_group_id`` and the
``normal_group_id`` the instances normally use (empty: no firewall group).

Announce: ``PATCH /v2/instances/{id}`` ``{"firewall_group_id": "<lockdown>"}``;
withdraw: the same with the normal group. "No group" is sent as ``"0"``, the value the
official CLI documents for unsetting (vultr-cli ``instance update-firewall-group``: "0
Value will unset the firewall-group"); the official Go client (govultr) never sends an
empty string, its fields are ``omitempty``. An instance without a group reads back as
``""``. ``active()``/``status()`` read
``GET /v2/instances/{id}``: an instance is "diverting" while its ``firewall_group_id``
is the lockdown group. Nothing is scrubbed: what the lockdown group does not accept is
dropped, the rest still reaches the instance.

Auth: API key (``Authorization: Bearer``); ``check()`` reads ``GET /v2/account``.
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

DEFAULT_ENDPOINT = "https://api.vultr.com"
VULTR_ID = r"^[0-9a-fA-F-]{1,64}$"
UNSET = "0"  # firewall_group_id that detaches the group (vultr-cli)


class InstanceTarget(Target):
    instance_ids: Annotated[
        tuple[Annotated[str, Field(pattern=VULTR_ID)], ...], Field(min_length=1)
    ]


class VultrSettings(BearerSettings):
    endpoint: str = DEFAULT_ENDPOINT
    targets: Targets[InstanceTarget]
    lockdown_group_id: Annotated[str, Field(pattern=VULTR_ID)]
    normal_group_id: Annotated[str, Field(pattern=r"^([0-9a-fA-F-]{1,64})?$")] = ""


class VultrAdapter(BearerScrubbingAdapter[VultrSettings]):
    adapter_type: ClassVar[str] = "vultr"
    mechanism: ClassVar[str] = "Vultr firewall group: instances switched to the lockdown group"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> VultrAdapter:
        settings = validate_settings(
            VultrSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def _units(self, t: InstanceTarget) -> list[Unit]:
        return [Unit(i, t.prefix, "instance") for i in t.instance_ids]

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        return self._units(covering(self.settings.targets, intent.prefix, what=self.label))

    async def _set(self, unit: Unit, group: str) -> Mapping[str, Any]:
        path = f"/v2/instances/{unit.uid}"
        await call_json(self.http, "PATCH", path, json={"firewall_group_id": group})
        return {"firewall_group_id": group}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, self.settings.lockdown_group_id)

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, self.settings.normal_group_id or UNSET)

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.targets:
            for unit in self._units(t):
                path = f"/v2/instances/{unit.uid}"
                body = await call_json(self.http, "GET", path)
                group = field_of(self.http, body, f"GET {path}", "instance", "firewall_group_id")
                out.append(
                    UnitState(
                        unit, group == self.settings.lockdown_group_id, {"firewall_group_id": group}
                    )
                )
        return out

    async def probe(self) -> str:
        body = await call_json(self.http, "GET", "/v2/account")
        name = field_of(self.http, body, "GET /v2/account", "account", "name")
        return f"account {name}"

    def provider_details(self) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint": s.endpoint,
            "lockdown_group_id": s.lockdown_group_id,
            "normal_group_id": s.normal_group_id,
            "instances": {str(t.prefix): list(t.instance_ids) for t in s.targets},
        }
