"""``hetzner_mitigation``: switch Hetzner Robot firewalls to an attack template.

What it does: Hetzner filters DDoS attacks on its own and offers no on-demand
diversion API, so the closest honest action is the stateless **Robot firewall** in
front of each dedicated server (it drops traffic at Hetzner's switch, before the
server's uplink). Targets map prefixes to server numbers (``targets: [{prefix,
server_numbers: [...]}]``); the operator prepares two Robot firewall templates. Announce
applies ``attack_template_id`` to each server (``POST /firewall/{server-number}``
form-encoded ``template_id=<id>``); withdraw applies ``normal_template_id`` the same way.
``active()``/``status()`` compare each server's firewall (``GET /firewall/{number}``:
status ``active`` or ``in process`` and the same input rules) with the attack template
(``GET /firewall/template/{id}``). Nothing is scrubbed: traffic the attack template
does not accept is discarded, everything else still reaches the server.

Auth: HTTP basic auth with the Robot webservice user (``username``) and its password
(``auth_token``); ``check()`` lists ``GET /firewall/template``. Hetzner's 409
``FIREWALL_IN_PROCESS`` (a previous change is still being applied) and 403
``RATE_LIMIT_EXCEEDED`` are retryable.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import urlencode

import httpx
from pydantic import Field, SecretStr

from adapters.base import AdapterConfig, Capability, resolve_capabilities, validate_settings
from adapters.http import HttpClient, HttpSettings
from adapters.scrubbing.common import (
    ScrubbingAdapter,
    Target,
    Targets,
    Unit,
    UnitState,
    covering,
    default_endpoint,
    field_of,
)
from policies.errors import AdapterUnavailable
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://robot-ws.your-server.de"
RETRYABLE_CODES = ("FIREWALL_IN_PROCESS", "RATE_LIMIT_EXCEEDED")
RULE_FIELDS = (
    "ip_version", "name", "dst_ip", "src_ip", "dst_port", "src_port",
    "protocol", "tcp_flags", "packet_length", "action",
)  # fmt: skip


def normalize_rules(rules: Any) -> list[dict[str, Any]]:
    """Input rules reduced to their meaning (unset fields dropped), for comparison."""
    out = []
    for r in rules if isinstance(rules, list) else []:
        if isinstance(r, dict):
            out.append({k: r[k] for k in RULE_FIELDS if r.get(k) not in (None, "")})
    return out


def template_form(template_id: str) -> bytes:
    return urlencode({"template_id": template_id}).encode()


class ServerTarget(Target):
    server_numbers: Annotated[tuple[int, ...], Field(min_length=1)]


class HetznerSettings(HttpSettings):
    endpoint: str = DEFAULT_ENDPOINT
    username: Annotated[str, Field(min_length=1)]
    auth_token: SecretStr  # the webservice user's password
    targets: Targets[ServerTarget]
    attack_template_id: Annotated[str, Field(min_length=1, pattern=r"^[0-9A-Za-z_-]+$")]
    normal_template_id: Annotated[str, Field(min_length=1, pattern=r"^[0-9A-Za-z_-]+$")]


class HetznerAdapter(ScrubbingAdapter[HetznerSettings]):
    adapter_type: ClassVar[str] = "hetzner_mitigation"
    mechanism: ClassVar[str] = "Hetzner Robot firewall: attack template applied to the servers"

    def __init__(
        self,
        name: str,
        settings: HetznerSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        secret = settings.auth_token.get_secret_value()
        basic = base64.b64encode(f"{settings.username}:{secret}".encode()).decode()
        http = HttpClient(
            settings,
            label=f"hetzner_mitigation integration {name!r}",
            transport=transport,
            headers={"Authorization": f"Basic {basic}"},
        )
        super().__init__(name, settings, capabilities, http)
        http.add_secret(secret, basic)

    @classmethod
    def from_config(cls, config: AdapterConfig) -> HetznerAdapter:
        settings = validate_settings(
            HetznerSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    async def _call(self, method: str, path: str, form: bytes | None = None) -> Any:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else None
        resp = await self.http.send(method, path, content=form, headers=headers)
        what = f"{method} {path}"
        if resp.status_code in (403, 409):
            try:
                code = resp.json().get("error", {}).get("code")
            except (ValueError, AttributeError):
                code = None
            if code in RETRYABLE_CODES:
                msg = resp.json().get("error", {}).get("message", "")
                raise AdapterUnavailable(
                    self.http.redact(
                        f"{self.label}: {what}: HTTP {resp.status_code} {code}: {msg}"
                    ),
                    code="adapter_busy",
                )
        return self.http.json(resp, what)

    def _units(self, t: ServerTarget) -> list[Unit]:
        return [Unit(str(n), t.prefix, "server") for n in t.server_numbers]

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        return self._units(covering(self.settings.targets, intent.prefix, what=self.label))

    async def _template_rules(self, template_id: str) -> list[dict[str, Any]]:
        path = f"/firewall/template/{template_id}"
        body = await self._call("GET", path)
        rules = field_of(self.http, body, f"GET {path}", "firewall_template", "rules", "input")
        return normalize_rules(rules)

    async def _firewall(self, unit: Unit) -> dict[str, Any]:
        path = f"/firewall/{unit.uid}"
        fw = field_of(self.http, await self._call("GET", path), f"GET {path}", "firewall")
        if not isinstance(fw, dict):
            raise self.http.bad_response(f"GET {path}", "firewall is not an object")
        return fw

    @staticmethod
    def _holds(fw: dict[str, Any], rules: list[dict[str, Any]]) -> bool:
        current = fw.get("rules")
        inputs = current.get("input") if isinstance(current, dict) else None
        return fw.get("status") in ("active", "in process") and normalize_rules(inputs) == rules

    async def _apply(self, unit: Unit, template_id: str) -> Mapping[str, Any]:
        """Apply the template unless the firewall already holds its rules (idempotent)."""
        if self._holds(await self._firewall(unit), await self._template_rules(template_id)):
            return {"template_id": template_id, "changed": False}
        path = f"/firewall/{unit.uid}"
        body = await self._call("POST", path, template_form(template_id))
        status = field_of(self.http, body, f"POST {path}", "firewall", "status")
        return {"template_id": template_id, "firewall_status": status, "changed": True}

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._apply(unit, self.settings.attack_template_id)

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        return await self._apply(unit, self.settings.normal_template_id)

    async def read(self) -> list[UnitState]:
        wanted = await self._template_rules(self.settings.attack_template_id)
        out = []
        for t in self.settings.targets:
            for unit in self._units(t):
                fw = await self._firewall(unit)
                detail = {"firewall_status": fw.get("status"), "server_ip": fw.get("server_ip")}
                out.append(UnitState(unit, self._holds(fw, wanted), detail))
        return out

    async def probe(self) -> str:
        templates = await self._call("GET", "/firewall/template")
        n = len(templates) if isinstance(templates, list) else 0
        return f"authenticated as {self.settings.username}; {n} firewall templates"

    def provider_details(self) -> dict[str, Any]:
        return {
            "endpoint": self.settings.endpoint,
            "username": self.settings.username,
            "attack_template_id": self.settings.attack_template_id,
            "normal_template_id": self.settings.normal_template_id,
            "servers": {str(t.prefix): list(t.server_numbers) for t in self.settings.targets},
        }
