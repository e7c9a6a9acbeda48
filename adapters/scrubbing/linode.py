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

Announce: if the normal firewall is enabled, ``PUT /v4/networking/firewalls/{normal}``
``{"status": "disabled", "tags": [..., "sluice-disabled"]}`` (the tag records, at Linode,
that Sluice disabled it), then ``{"status": "enabled"}`` on the lockdown firewall; if
that is refused, the normal firewall is enabled again (its tags as they were) before the
error is reported. Withdraw: lockdown ``disabled``, then, only if the normal firewall
carries the ``sluice-disabled`` tag, ``{"status": "enabled"}`` with its former tags. So
the round trip ends exactly where it started, also across a restart, and a normal
firewall that was already disabled is never touched. Between the two calls the Linodes
briefly have no enabled firewall. Both are whole-firewall switches: every Linode attached
to the normal firewall loses it, not only those of the prefix, so attach the normal
firewall only to Linodes the lockdown firewall also covers.

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
MARKER = "sluice-disabled"  # tag on a normal firewall that Sluice disabled (restart-safe)


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

    async def _set(
        self, fid: int | str, status: str, tags: list[str] | None = None
    ) -> Mapping[str, Any]:
        path = f"/v4/networking/firewalls/{fid}"
        body: dict[str, Any] = {"status": status}
        if tags is not None:
            body["tags"] = tags
        got = await call_json(self.http, "PUT", path, json=body)
        now = field_of(self.http, got, f"PUT {path}", "status")
        if now != status:
            raise self.http.bad_response(f"PUT {path}", f"the firewall is {now!r}, not {status!r}")
        return {"status": now}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        normal = self._normal(unit)
        switched: list[str] | None = None  # the normal firewall's tags, when we disable it
        if normal is not None:
            fw = await self._get(normal)
            tags = [str(t) for t in fw.get("tags") or []]
            if fw["status"] == "enabled":  # only one enabled firewall per Linode
                await self._set(normal, "disabled", [*tags, MARKER])
                switched = tags
        try:
            done = await self._set(unit.uid, "enabled")
        except AdapterError:
            if normal is not None and switched is not None:
                with contextlib.suppress(AdapterError):  # the first error is the one to report
                    await self._set(normal, "enabled", switched)
            raise
        return {**done, "normal_firewall_id": normal, "normal_disabled": switched is not None}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        normal = self._normal(unit)
        done = await self._set(unit.uid, "disabled")
        restored = False
        if normal is not None:
            fw = await self._get(normal)
            tags = [str(t) for t in fw.get("tags") or []]
            if MARKER in tags:  # we disabled it: enable it again, exactly as it was
                await self._set(normal, "enabled", [t for t in tags if t != MARKER])
                restored = True
        return {**done, "normal_firewall_id": normal, "normal_enabled_again": restored}

    async def _get(self, fid: int | str) -> dict[str, Any]:
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
