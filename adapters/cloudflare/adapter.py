"""The Cloudflare adapter: Magic Transit prefix advertisement, WAF source blocks, UAM.

* **scrubbing**: a scrubbing intent maps to the configured BYOIP prefix covering it
  (``prefixes: [{prefix, prefix_id, bgp_prefix_id?}]``). Announce sets the on-demand
  advertisement of the prefix's BGP prefix for its whole CIDR (``PATCH .../addressing/
  prefixes/{prefix_id}/bgp/prefixes/{bgp_prefix_id}`` ``{"on_demand": {"advertised":
  true}}``; the id is looked up by CIDR in ``GET .../bgp/prefixes`` unless configured):
  Cloudflare then announces the prefix from its edge and traffic to it is scrubbed there
  before reaching the operator over Magic Transit tunnels. Withdraw sets ``advertised``
  false (unless another announced intent still needs the prefix). Read-back lists the
  BGP prefixes. The older ``.../bgp/status`` endpoint is deprecated by Cloudflare and not
  used. A prefix outside every configured BYOIP prefix is refused.
* **flowspec**: only "discard all from a source prefix" (see
  :func:`adapters.cloudflare.render.waf_source`) becomes an item of the account IP list
  ``block_list_id``; the operator's WAF custom rule ``ip.src in $<list>`` with action
  *block* enforces it on the zones it covers. List writes are asynchronous bulk
  operations; the adapter waits for each to complete. Anything else is refused.
* :meth:`CloudflareAdapter.under_attack` toggles Under Attack Mode on a configured zone
  (the ``cloudflare_uam`` runbook step).

Auth is an API token sent as ``Authorization: Bearer``; ``check()`` calls
``GET /accounts/{account_id}/tokens/verify`` (account-owned token, the default) or
``GET /user/tokens/verify`` (``token_owner: user``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.base import (
    AdapterConfig,
    Capability,
    Outcome,
    RuleRef,
    resolve_capabilities,
    validate_settings,
)
from adapters.cloudflare import render, uam
from adapters.cloudflare.api import DEFAULT_ENDPOINT, CloudflareApi, CloudflareBase, check_id
from adapters.http import HttpClient
from adapters.scrubbing.common import (
    ScrubbingAdapter,
    Target,
    Unit,
    UnitState,
    covering,
    default_endpoint,
    disjoint,
)
from policies.errors import AdapterConfigInvalid, AdapterRefused, CapabilityMissing
from policies.intents import FlowSpecIntent, ScrubbingIntent


class PrefixTarget(Target):
    prefix_id: str  # the BYOIP prefix's Cloudflare id
    bgp_prefix_id: str | None = None  # its BGP prefix for the whole CIDR (else looked up)

    @field_validator("prefix_id", "bgp_prefix_id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v)


class ZoneSetting(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    zone_id: str
    normal_level: str = "medium"  # the level Under Attack Mode returns to

    @field_validator("zone_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v)

    @field_validator("normal_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in render.SECURITY_LEVELS or v == uam.UNDER_ATTACK:
            raise ValueError(f"{v!r} is not a normal Cloudflare security level")
        return v


class PrefixSettings(CloudflareBase):
    account_id: str
    prefixes: tuple[PrefixTarget, ...] = ()

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str) -> str:
        return check_id(v)

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: tuple[PrefixTarget, ...]) -> tuple[PrefixTarget, ...]:
        return tuple(disjoint(v)) if v else v


class CloudflareSettings(PrefixSettings):
    block_list_id: str | None = None  # account IP list used by a WAF block rule
    zones: tuple[ZoneSetting, ...] = ()  # zones whose Under Attack Mode may be toggled
    list_poll_interval: Annotated[float, Field(gt=0, le=10)] = 0.25
    list_poll_timeout: Annotated[float, Field(gt=0, le=300)] = 30.0

    @field_validator("block_list_id")
    @classmethod
    def _list(cls, v: str | None) -> str | None:
        return None if v is None else check_id(v)


PS = TypeVar("PS", bound=PrefixSettings)


class PrefixAdvertisement(ScrubbingAdapter[PS]):
    """Scrubbing through on-demand advertisement of Magic Transit BYOIP prefixes."""

    mechanism: ClassVar[str] = (
        "Cloudflare Magic Transit: on-demand BGP advertisement of the BYOIP prefix"
    )

    def __init__(
        self,
        name: str,
        settings: PS,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        http = HttpClient(
            settings, label=f"{self.adapter_type} adapter {name!r}", transport=transport
        )
        super().__init__(name, settings, capabilities, http)
        self.api = CloudflareApi(http, settings.auth_token)
        self._bgp_ids: dict[str, str] = {}  # BYOIP prefix id -> its whole-CIDR BGP prefix

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        if not self.settings.prefixes:
            raise CapabilityMissing(
                f"{self.label} has no BYOIP prefixes configured", field="intent_type"
            )
        t = covering(self.settings.prefixes, intent.prefix, what=self.label)
        return [Unit(t.prefix_id, t.prefix, "BYOIP prefix")]

    def _target(self, unit: Unit) -> PrefixTarget:
        return next(t for t in self.settings.prefixes if t.prefix_id == unit.uid)

    async def _bgp_prefixes(self, t: PrefixTarget) -> list[dict[str, Any]]:
        path = render.bgp_prefixes_path(self.settings.account_id, t.prefix_id)
        result = await self.api.call("GET", path)
        if not isinstance(result, list):
            raise self.http.bad_response(f"GET {path}", "the answer has no list of BGP prefixes")
        return [b for b in result if isinstance(b, dict)]

    def _whole(self, t: PrefixTarget, found: list[dict[str, Any]]) -> dict[str, Any]:
        """The BGP prefix covering ``t``'s whole CIDR (by configured id, else by CIDR)."""
        for b in found:
            if (t.bgp_prefix_id and b.get("id") == t.bgp_prefix_id) or (
                not t.bgp_prefix_id and b.get("cidr") == str(t.prefix)
            ):
                return b
        which = f"id {t.bgp_prefix_id}" if t.bgp_prefix_id else f"CIDR {t.prefix}"
        raise AdapterRefused(
            f"{self.label}: BYOIP prefix {t.prefix_id} has no BGP prefix with {which}",
            field="prefixes",
        )

    async def _bgp_id(self, t: PrefixTarget) -> str:
        if t.bgp_prefix_id:
            return t.bgp_prefix_id
        if t.prefix_id not in self._bgp_ids:
            self._bgp_ids[t.prefix_id] = str(self._whole(t, await self._bgp_prefixes(t))["id"])
        return self._bgp_ids[t.prefix_id]

    async def _set(self, unit: Unit, advertised: bool) -> Mapping[str, Any]:
        t = self._target(unit)
        bgp_id = await self._bgp_id(t)
        path = render.bgp_prefix_path(self.settings.account_id, t.prefix_id, bgp_id)
        result = await self.api.call("PATCH", path, json=render.advertise_body(advertised))
        if render.advertised_of(result) is not advertised:
            raise self.http.bad_response(
                f"PATCH {path}", f"on_demand.advertised is not {advertised}"
            )
        on_demand = result["on_demand"]
        return {
            "advertised": advertised,
            "bgp_prefix_id": bgp_id,
            "advertised_modified_at": on_demand.get("advertised_modified_at"),
        }

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, True)

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._set(unit, False)

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.prefixes:
            unit = Unit(t.prefix_id, t.prefix, "BYOIP prefix")
            bgp = self._whole(t, await self._bgp_prefixes(t))
            adv = render.advertised_of(bgp)
            if adv is None:
                path = render.bgp_prefixes_path(self.settings.account_id, t.prefix_id)
                raise self.http.bad_response(
                    f"GET {path}", "the BGP prefix has no boolean on_demand.advertised"
                )
            detail = {
                "bgp_prefix_id": bgp.get("id"),
                "advertised_modified_at": bgp["on_demand"].get("advertised_modified_at"),
                "on_demand_locked": bgp["on_demand"].get("on_demand_locked"),
            }
            out.append(UnitState(unit, adv, detail))
        return out

    async def probe(self) -> str:
        return await self.api.verify_token(self.settings.verify_account)

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "account_id": self.settings.account_id,
            "prefixes": [
                {"prefix": str(t.prefix), "prefix_id": t.prefix_id} for t in self.settings.prefixes
            ],
        }


class CloudflareAdapter(PrefixAdvertisement[CloudflareSettings]):
    adapter_type: ClassVar[str] = "cloudflare"
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SCRUBBING, Capability.FLOWSPEC}
    )

    def __init__(
        self,
        name: str,
        settings: CloudflareSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name, settings, capabilities, transport=transport)
        self._list_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: AdapterConfig) -> CloudflareAdapter:
        settings = validate_settings(
            CloudflareSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        caps = resolve_capabilities(cls, config)
        needs = {
            Capability.SCRUBBING: (
                "prefixes",
                bool(settings.prefixes),
                "the BYOIP prefixes to advertise",
            ),
            Capability.FLOWSPEC: (
                "block_list_id",
                settings.block_list_id is not None,
                "the IP list a WAF block rule uses",
            ),
        }
        for cap, (fld, present, what) in needs.items():
            if cap in caps and not present:
                if config.capabilities is not None:
                    raise AdapterConfigInvalid(
                        f"cloudflare adapter {config.name!r}: config.{fld}: {cap} needs {what}",
                        field=f"config.{fld}",
                    )
                caps = caps - {cap}
        return cls(config.name, settings, caps)

    # ------------------------------------------------------------ WAF source blocks

    async def apply_other(self, ref: RuleRef, *, add: bool) -> Outcome:
        if not isinstance(ref.intent, FlowSpecIntent):
            return await super().apply_other(ref, add=add)
        list_id = self.settings.block_list_id
        if list_id is None:  # capability check already refused; keeps mypy honest
            raise CapabilityMissing(f"{self.label} has no block_list_id", field="intent_type")
        ip = render.waf_source(ref.intent)
        path = render.list_items_path(self.settings.account_id, list_id)
        async with self._list_lock:
            items = await self.api.call_paged(path)
            if add:
                post = render.plan_add(items, [(ip, ref.key)])
                if post:
                    await self._bulk("POST", path, post)
                return Outcome.success(ref, ip_list=list_id, source=ip, changed=bool(post))
            delete, update = render.plan_remove(items, [(ip, ref.key)])
            if delete:
                await self._bulk("DELETE", path, {"items": delete})
            if update:
                await self._bulk("POST", path, update)
        return Outcome.success(ref, ip_list=list_id, source=ip, changed=bool(delete or update))

    async def _bulk(self, method: str, path: str, body: Any) -> None:
        """Start an asynchronous list operation and wait until Cloudflare completes it."""
        result = await self.api.call(method, path, json=body)
        op = result.get("operation_id") if isinstance(result, dict) else None
        if not isinstance(op, str) or not op:
            raise self.http.bad_response(f"{method} {path}", "the answer has no operation_id")
        op_path = render.bulk_operation_path(self.settings.account_id, op)
        deadline = time.monotonic() + self.settings.list_poll_timeout
        while True:
            state = await self.api.call("GET", op_path)
            status = state.get("status") if isinstance(state, dict) else None
            if status == "completed":
                return
            if status == "failed":
                reason = state.get("error") or "no reason given"
                raise AdapterRefused(f"{self.label}: list operation {op} failed: {reason}")
            if time.monotonic() >= deadline:
                raise self.http.bad_response(
                    f"GET {op_path}",
                    f"the operation is still {status!r} after {self.settings.list_poll_timeout:g}s",
                )
            await asyncio.sleep(self.settings.list_poll_interval)

    async def active(self) -> frozenset[str] | None:
        keys: set[str] = set()
        if self.settings.prefixes:
            keys |= self._keys(await self.read())
        if self.settings.block_list_id is not None:
            path = render.list_items_path(self.settings.account_id, self.settings.block_list_id)
            keys |= render.held_keys(await self.api.call_paged(path))
        return frozenset(keys)

    # ------------------------------------------------------------ Under Attack Mode

    async def under_attack(self, zone_id: str, *, enabled: bool) -> dict[str, Any]:
        """Turn Under Attack Mode on or off on a configured zone (runbook ``cloudflare_uam``)."""
        zone = next((z for z in self.settings.zones if z.zone_id == zone_id), None)
        if zone is None:
            raise AdapterRefused(
                f"{self.label}: zone {zone_id!r} is not configured (config.zones)",
                code="zone_not_configured",
                field="zone_id",
            )
        return await uam.under_attack(
            self.api, zone_id, enabled=enabled, normal_level=zone.normal_level
        )

    async def security_levels(self) -> dict[str, str]:
        """The current security level of every configured zone."""
        return {
            z.zone_id: await uam.security_level(self.api, z.zone_id) for z in self.settings.zones
        }

    def provider_details(self) -> dict[str, Any]:
        return {
            **super().provider_details(),
            "block_list_id": self.settings.block_list_id,
            "zones": [z.zone_id for z in self.settings.zones],
        }
