"""``ovh_mitigation``: OVHcloud permanent anti-DDoS mitigation, per IPv4 address.

What it does: OVHcloud's VAC mitigation is switched per IPv4 address of an IP block the
account owns. Targets are those blocks (``targets: [{prefix: "203.0.113.0/28"}]``). A
scrubbing intent inside a block (IPv4, at most ``max_addresses`` addresses) puts every
address of its prefix on **permanent mitigation**:
``POST /ip/{block}/mitigation`` ``{"ipOnMitigation": "<address>"}`` (or ``PUT
/ip/{block}/mitigation/{address}`` ``{"permanent": true}`` when OVH's automatic
mitigation already holds it). OVH then routes all traffic to the address through its
scrubbing centres, not only while an attack is detected. Withdraw ``DELETE``\\ s the
permanent entries (automatic ones are OVH's and are left alone). ``active()`` and
``status()`` list ``GET /ip/{block}/mitigation`` and read each entry: an address whose
state is ``ok`` or ``creationPending`` is diverting (``permanent``/``auto`` shown).

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
from policies.errors import AdapterRefused, AdapterUnavailable
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://eu.api.ovh.com/1.0"
DIVERTING_STATES = ("ok", "creationPending")


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
    mechanism: ClassVar[str] = "OVHcloud permanent mitigation (VAC) of each IPv4 address"

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
        net = intent.prefix
        if net.num_addresses > self.settings.max_addresses:
            raise AdapterRefused(
                f"{self.label}: {net} has {net.num_addresses} addresses; OVH mitigation is "
                f"per address and this integration allows at most {self.settings.max_addresses}"
                " (config.max_addresses)",
                field="target_ip",
            )
        block = str(target.prefix)
        return [Unit(str(a), ipaddress.ip_network(f"{a}/32"), block) for a in net]

    async def _entry(self, unit: Unit) -> dict[str, Any] | None:
        got = await self._call("GET", f"{block_path(unit.label)}/{unit.uid}")
        return got if isinstance(got, dict) else None

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        entry = await self._entry(unit)
        base = block_path(unit.label)
        if entry is None:
            entry = await self._call("POST", base, mitigation_body(unit.uid))
        elif not entry.get("permanent"):
            entry = await self._call("PUT", f"{base}/{unit.uid}", '{"permanent": true}')
            entry = await self._entry(unit) or {}
        return {"state": (entry or {}).get("state"), "permanent": True}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        entry = await self._entry(unit)
        if entry is None or not entry.get("permanent"):
            return {"state": None if entry is None else entry.get("state"), "removed": False}
        gone = await self._call("DELETE", f"{block_path(unit.label)}/{unit.uid}")
        state = gone.get("state") if isinstance(gone, dict) else None
        return {"state": state, "removed": True}

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
                detail = {
                    "state": state,
                    "permanent": entry.get("permanent"),
                    "auto": entry.get("auto"),
                }
                out.append(UnitState(unit, state in DIVERTING_STATES, detail))
        return out

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
