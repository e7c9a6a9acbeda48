"""``linode``: swap the Linodes of a prefix from their normal Cloud Firewall to a lockdown one.

What it does: Linode (Akamai) has no on-demand diversion API; its Cloud Firewalls filter
traffic before it reaches a Linode and can be enabled or disabled as a whole, so the
closest honest action is a lockdown firewall the operator prepared, attached to the
Linodes of a prefix and kept **disabled** in peacetime. A Linode can have only one
*enabled* firewall at a time (Linode API, "Create a firewall": "A service can have one
assigned firewall enabled at a time"), so the lockdown firewall can be enabled only once
the Linodes' normal firewall is disabled. Targets name both
(``targets: [{prefix, firewall_id, normal_firewall_id}]``; ``normal_firewall_id`` may be
left out only when the Linodes have no other firewall).

Announce: ``PUT /v4/networking/firewalls/{normal}`` ``{"status": "disabled"}``, then the
same on the lockdown firewall with ``{"status": "enabled"}``; if that is refused, the
normal firewall is enabled again before the error is reported. Withdraw: lockdown
``disabled``, then normal ``enabled``; the normal firewall is the peacetime state, so
withdraw always ends with it enabled. Between the two calls the Linodes briefly have no
enabled firewall. Both are whole-firewall switches: every Linode attached to the normal
firewall loses it, not only those of the prefix, so attach the normal firewall only to
Linodes the lockdown firewall also covers.

``active()``/``status()`` read ``GET /v4/networking/firewalls/{id}`` of both: the target
is "diverting" while the lockdown firewall is ``enabled`` and the normal one is not
(labels, statuses and inbound policy are shown). Nothing is scrubbed: what the lockdown
firewall's rules do not accept is dropped, the rest still reaches the Linodes.

Auth: personal access token (``Authorization: Bearer``); ``check()`` reads
``GET /v4/profile``. Linode's errors (``{"errors": [{"reason"}]}``) are kept verbatim.
"""

from __future__ import annotations

import contextlib
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
from policies.errors import AdapterError
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://api.linode.com"


class FirewallTarget(Target):
    firewall_id: int  # the lockdown firewall, disabled in peacetime
    normal_firewall_id: int | None = None  # enabled in peacetime, disabled while locked down


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

    def _normal(self, unit: Unit) -> int | None:
        t = next(t for t in self.settings.targets if str(t.firewall_id) == unit.uid)
        return t.normal_firewall_id

    async def _set(self, fid: int | str, status: str) -> Mapping[str, Any]:
        path = f"/v4/networking/firewalls/{fid}"
        body = await call_json(self.http, "PUT", path, json={"status": status})
        now = field_of(self.http, body, f"PUT {path}", "status")
        if now != status:
            raise self.http.bad_response(f"PUT {path}", f"the firewall is {now!r}, not {status!r}")
        return {"status": now}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        normal = self._normal(unit)
        if normal is not None:
            await self._set(normal, "disabled")  # only one enabled firewall per Linode
        try:
            done = await self._set(unit.uid, "enabled")
        except AdapterError:
            if normal is not None:
                with contextlib.suppress(AdapterError):  # the first error is the one to report
                    await self._set(normal, "enabled")
            raise
        return {**done, "normal_firewall_id": normal, "normal_status": "disabled"}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        normal = self._normal(unit)
        done = await self._set(unit.uid, "disabled")
        if normal is not None:
            await self._set(normal, "enabled")
        return {**done, "normal_firewall_id": normal, "normal_status": "enabled"}

    async def _get(self, fid: int) -> dict[str, Any]:
        path = f"/v4/networking/firewalls/{fid}"
        body = await call_json(self.http, "GET", path)
        field_of(self.http, body, f"GET {path}", "status")
        return dict(body)

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.targets:
            unit = Unit(str(t.firewall_id), t.prefix, "firewall")
            lock = await self._get(t.firewall_id)
            normal = await self._get(t.normal_firewall_id) if t.normal_firewall_id else None
            rules: dict[str, Any] = lock["rules"] if isinstance(lock.get("rules"), dict) else {}
            detail = {
                "status": lock["status"],
                "label": lock.get("label"),
                "inbound_policy": rules.get("inbound_policy"),
                "normal_firewall_id": t.normal_firewall_id,
                "normal_status": normal["status"] if normal else None,
            }
            on = lock["status"] == "enabled" and (normal is None or normal["status"] != "enabled")
            out.append(UnitState(unit, on, detail))
        return out

    async def probe(self) -> str:
        body = await call_json(self.http, "GET", "/v4/profile")
        user = field_of(self.http, body, "GET /v4/profile", "username")
        return f"authenticated as {user}"

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "firewalls": {str(t.prefix): t.firewall_id for t in self.settings.targets},
            "normal_firewalls": {
                str(t.prefix): t.normal_firewall_id for t in self.settings.targets
            },
        }
