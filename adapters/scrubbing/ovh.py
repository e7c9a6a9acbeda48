"""``ovh_mitigation``: OVHcloud anti-DDoS status only; announcing is refused.

What OVH offers today: OVHcloud's VAC scrubbing is automatic. Traffic to an address goes
through the scrubbing centres while OVH detects an attack on it. The only thing Sluice
could switch, **permanent mitigation** (``POST /ip/{block}/mitigation``, ``permanent``),
reached end of life on 8 September 2025: the control-panel option is gone and the API
attribute has no effect (ovh/infrastructure-roadmap#282; ovh/docs#8205 "Permanent
Mitigation removal"; terraform-provider-ovh#1132 deprecates ``permanent`` because it
"has no effect already"). OVH publishes no replacement that diverts an address on
demand, so this integration cannot divert anything.

What it does: a scrubbing intent inside a configured block is **refused** with
``ovh_permanent_mitigation_withdrawn`` before any call to OVH. Withdraw makes no call
and succeeds (there is nothing OVH still holds for Sluice). ``status()`` lists
``GET /ip/{block}/mitigation`` and reads each entry: an address under OVH's automatic
mitigation (``auto: true``) is shown as diverting, because OVH is scrubbing it; it is
OVH's doing, not a rule of Sluice's, so ``active()`` is always empty. Targets are the
IPv4 blocks (``targets: [{prefix: "203.0.113.0/28"}]``).

Auth: OVH's signed requests. Each request carries ``X-Ovh-Application`` (application
key), ``X-Ovh-Consumer`` (consumer key), ``X-Ovh-Timestamp`` (OVH's clock, from
``GET /auth/time`` once) and ``X-Ovh-Signature`` = ``"$1$" + sha1_hex(application secret
+ "+" + consumer key + "+" + METHOD + "+" + full URL + "+" + body + "+" + timestamp)``.
The application secret (``auth_token``) and the consumer key are secrets; ``check()``
calls ``GET /auth/currentCredential``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator

from adapters.base import AdapterConfig, Capability, resolve_capabilities, validate_settings
from adapters.http import HttpClient, HttpSettings
from adapters.scrubbing.common import (
    ScrubbingAdapter,
    Target,
    Unit,
    UnitState,
    covering,
    default_endpoint,
    disjoint,
)
from policies.errors import AdapterRefused, AdapterUnavailable, CapabilityMissing
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://eu.api.ovh.com/1.0"
WITHDRAWN = "ovh_permanent_mitigation_withdrawn"


def signature(secret: str, consumer: str, *, method: str, url: str, body: str, ts: int) -> str:
    """OVH's request signature (pure)."""
    raw = "+".join([secret, consumer, method.upper(), url, body, str(ts)])
    return "$1$" + hashlib.sha1(raw.encode()).hexdigest()  # noqa: S324  (OVH's scheme)


def block_path(block: str) -> str:
    return f"/ip/{quote(block, safe='')}/mitigation"


def mitigation_body(address: str) -> str:
    return '{"ipOnMitigation": "%s"}' % address  # noqa: UP031  (exact bytes are signed)


class OvhSettings(HttpSettings):
    endpoint: str = DEFAULT_ENDPOINT
    application_key: Annotated[str, Field(min_length=1)]
    auth_token: SecretStr  # the application secret
    consumer_key: SecretStr
    targets: tuple[Target, ...]
    # unused since announcing is refused; still accepted so stored configurations load
    max_addresses: Annotated[int, Field(ge=1, le=256)] = 16

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: tuple[Target, ...]) -> tuple[Target, ...]:
        for t in v:
            if t.prefix.version != 4:
                raise ValueError(f"{t.prefix}: OVH mitigation applies to IPv4 blocks only")
        return tuple(disjoint(v))


class OvhMitigationAdapter(ScrubbingAdapter[OvhSettings]):
    adapter_type: ClassVar[str] = "ovh_mitigation"
    mechanism: ClassVar[str] = (
        "none: OVHcloud ended permanent mitigation (2025-09-08); status shows OVH's automatic "
        "mitigation"
    )

    def __init__(
        self,
        name: str,
        settings: OvhSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        http = HttpClient(
            settings, label=f"ovh_mitigation integration {name!r}", transport=transport
        )
        super().__init__(name, settings, capabilities, http)
        http.add_secret(
            settings.auth_token.get_secret_value(), settings.consumer_key.get_secret_value()
        )
        self._delta: int | None = None  # OVH clock minus ours, in seconds

    @classmethod
    def from_config(cls, config: AdapterConfig) -> OvhMitigationAdapter:
        settings = validate_settings(
            OvhSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    # ------------------------------------------------------------ signed requests

    async def _time_delta(self) -> int:
        if self._delta is None:
            resp = await self.http.send("GET", "/auth/time")
            value = self.http.json(resp, "GET /auth/time")
            if not isinstance(value, int):
                raise self.http.bad_response("GET /auth/time", "the answer is not a timestamp")
            self._delta = value - int(time.time())
        return self._delta

    async def _call(self, method: str, path: str, body: str = "") -> Any:
        ts = int(time.time()) + await self._time_delta()
        s = self.settings
        consumer = s.consumer_key.get_secret_value()
        sig = signature(
            s.auth_token.get_secret_value(),
            consumer,
            method=method,
            url=s.endpoint + path,
            body=body,
            ts=ts,
        )
        headers = {
            "X-Ovh-Application": s.application_key,
            "X-Ovh-Consumer": consumer,
            "X-Ovh-Timestamp": str(ts),
            "X-Ovh-Signature": sig,
        }
        if body:
            headers["Content-Type"] = "application/json"
        resp = await self.http.send(
            method, path, content=body.encode() if body else None, headers=headers
        )
        what = f"{method} {path}"
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            self._refuse(resp, what)
        if not resp.content:
            return {}
        return self.http.json(resp, what)

    def _refuse(self, resp: httpx.Response, what: str) -> None:
        try:
            body: Any = resp.json()
        except ValueError:
            self.http.check(resp, what)
            return
        code = body.get("errorCode", "") if isinstance(body, dict) else ""
        msg = body.get("message", "") if isinstance(body, dict) else ""
        text = self.http.redact(f"{self.label}: {what}: HTTP {resp.status_code} {code}: {msg}")
        if resp.status_code == 429:
            raise AdapterUnavailable(text, code="adapter_rate_limited")
        if resp.status_code in (401, 403) or str(code).startswith("INVALID_"):
            if code == "INVALID_SIGNATURE":
                self._delta = None  # a clock jump: resynchronise next time
            raise AdapterRefused(text, code="adapter_auth_failed")
        raise AdapterRefused(text)

    # ------------------------------------------------------------ hooks

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        target = covering(self.settings.targets, intent.prefix, what=self.label)
        return [Unit(str(intent.prefix), intent.prefix, str(target.prefix))]

    async def _entry(self, unit: Unit) -> dict[str, Any] | None:
        got = await self._call("GET", f"{block_path(unit.label)}/{unit.uid}")
        return got if isinstance(got, dict) else None

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        raise CapabilityMissing(
            f"{self.label}: cannot divert {unit.prefix}: OVHcloud ended permanent mitigation on "
            "2025-09-08 and offers no on-demand diversion; its automatic mitigation starts "
            "by itself when OVH detects an attack (see docs/scrubbing.md)",
            code=WITHDRAWN,
            field="intent_type",
        )

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return {"removed": False, "note": "nothing to withdraw: OVH holds no diversion for Sluice"}

    async def read(self) -> list[UnitState]:
        out = []
        for t in self.settings.targets:
            block = str(t.prefix)
            listed = await self._call("GET", block_path(block))
            if not isinstance(listed, list):
                listed = []
            for address in listed:
                unit = Unit(str(address), ipaddress.ip_network(f"{address}/32"), block)
                entry = await self._entry(unit)
                if entry is None:
                    continue
                state = entry.get("state")
                detail = {"state": state, "auto": entry.get("auto")}
                out.append(UnitState(unit, entry.get("auto") is True, detail))
        return out

    async def active(self) -> frozenset[str] | None:
        """Nothing: OVH's automatic mitigation is not a rule Sluice announced."""
        return frozenset()

    async def probe(self) -> str:
        cred = await self._call("GET", "/auth/currentCredential")
        status = cred.get("status") if isinstance(cred, dict) else None
        if status != "validated":
            raise AdapterRefused(
                f"{self.label}: the consumer key is {status or 'unknown'}",
                code="adapter_auth_failed",
            )
        return f"credential {cred.get('credentialId', '?')} is validated"

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "application_key": self.settings.application_key,
            "blocks": [str(t.prefix) for t in self.settings.targets],
        }
