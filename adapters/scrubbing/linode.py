"""``linode``: enable a lockdown Cloud Firewall attached to the Linodes.

What it does: Linode (Akamai) has no on-demand diversion API; its Cloud Firewalls filter
traffic before it reaches a Linode and can be enabled or disabled as a whole, so the
closest honest action is a lockdown firewall the operator prepared, attached to the
Linodes of a prefix and kept **disabled** in peacetime. Targets map prefixes to that
firewall (``targets: [{prefix, firewall_id}]``). Announce:
``PUT /v4/networking/firewalls/{id}`` ``{"status": "enabled"}``; withdraw: ``{"status":
"disabled"}``. ``active()``/``status()`` read ``GET /v4/networking/firewalls/{id}``: the
target is "diverting" while the firewall's ``status`` is ``enabled`` (its label and
inbound policy are shown). Nothing is scrubbed: what the firewall's rules do not accept
is dropped, the rest still reaches the Linodes.

Auth: personal access token (``Authorization: Bearer``); ``check()`` reads
``GET /v4/profile``. Linode's errors (``{"errors": [{"reason"}]}``) are kept verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

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

DEFAULT_ENDPOINT = "https://api.linode.com"


class FirewallTarget(Target):
    firewall_id: int


class LinodeSettings(BearerSettings):
    endpoint: str = DEFAULT_ENDPOINT
    targets: Targets[FirewallTarget]


class LinodeAdapter(BearerScrubbingAdapter[LinodeSettings]):
    adapter_type: ClassVar[str] = "linode"
    mechanism: ClassVar[str] = "Linode Cloud Firewall: the lockdown firewall is enabled"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> LinodeAdapter:
        settings = validate_settings(
            LinodeSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        t = covering(self.settings.targets, intent.prefix, what=self.label)
        return [Unit(str(t.firewall_id), t.prefix, "firewall")]

    async def _set(self, unit: Unit, status: str) -> Mapping[str, Any]:
        path = f"/v4/networking/firewalls/{unit.uid}"
        body = await call_json(self.http, "PUT", path, json={"status": status})
        now = field_of(self.http, body, f"PUT {path}", "status")
        if now != status:
            raise self.http.bad_response(f"PUT {path}", f"the firewall is {now!r}, not {status!r}")
        return {"status": now}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, "enabled")

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, "disabled")

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.targets:
            unit = Unit(str(t.firewall_id), t.prefix, "firewall")
            path = f"/v4/networking/firewalls/{unit.uid}"
            body = await call_json(self.http, "GET", path)
            status = field_of(self.http, body, f"GET {path}", "status")
            rules = body.get("rules") if isinstance(body.get("rules"), dict) else {}
            detail = {
                "status": status,
                "label": body.get("label"),
                "inbound_policy": rules.get("inbound_policy"),
            }
            out.append(UnitState(unit, status == "enabled", detail))
        return out

    async def probe(self) -> str:
        body = await call_json(self.http, "GET", "/v4/profile")
        user = field_of(self.http, body, "GET /v4/profile", "username")
        return f"authenticated as {user}"

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "firewalls": {str(t.prefix): t.firewall_id for t in self.settings.targets},
        }
