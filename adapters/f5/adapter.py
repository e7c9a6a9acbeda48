"""The F5 BIG-IP adapter: iControl REST with token authentication.

Authentication: ``POST /mgmt/shared/authn/login`` returns a token sent as
``X-F5-Auth-Token``; when ``token_timeout`` differs from the device default the adapter
sets it with ``PATCH /mgmt/shared/authz/tokens/<token>``. The token is renewed (a new
login) shortly before it expires and at once when the device answers 401 (then the
request is sent again, once). ``close()`` revokes it.

Blackholes are ``net route`` objects, FlowSpec source blocks are entries of an AFM
address list (see :mod:`adapters.f5.render` for the mapping and its limits). Read-back
lists the routes named ``sluice-<key>`` and the keys recorded in the address list.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from adapters.base import (
    AdapterConfig,
    Capability,
    Health,
    Outcome,
    RuleRef,
    require_capability,
    resolve_capabilities,
    validate_settings,
)
from adapters.f5 import render
from adapters.http import HttpClient, HttpSettings, failed
from policies.errors import AdapterConfigInvalid, AdapterError, AdapterRefused
from policies.intents import BlackholeIntent, FlowSpecIntent

LOGIN = "/mgmt/shared/authn/login"
TOKENS = "/mgmt/shared/authz/tokens"
ROUTES = "/mgmt/tm/net/route"
ADDRESS_LISTS = "/mgmt/tm/security/firewall/address-list"
VERSION = "/mgmt/tm/sys/version"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


class F5Settings(HttpSettings):
    username: Annotated[str, Field(min_length=1)]
    auth_token: SecretStr  # the user's password
    login_provider: str = "tmos"
    token_timeout: Annotated[int, Field(ge=60, le=36000)] = 1200
    partition: str = "Common"
    afm_address_list: str | None = None

    @field_validator("partition", "afm_address_list")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME.match(v):
            raise ValueError(f"{v!r} is not a BIG-IP object name")
        return v


class F5Adapter:
    adapter_type: ClassVar[str] = "f5"
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.BLACKHOLE, Capability.FLOWSPEC}
    )

    def __init__(
        self,
        name: str,
        settings: F5Settings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities
        self.http = HttpClient(settings, label=f"f5 adapter {name!r}", transport=transport)
        self.http.add_secret(settings.auth_token.get_secret_value())
        self._token: str | None = None
        self._renew_at = 0.0
        self._login_lock = asyncio.Lock()
        self._afm_lock = asyncio.Lock()
        self.logins = 0

    def __repr__(self) -> str:
        return f"F5Adapter({self.name!r}, {self.settings.endpoint})"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> F5Adapter:
        settings = validate_settings(F5Settings, config)
        caps = resolve_capabilities(cls, config)
        if settings.afm_address_list is None and Capability.FLOWSPEC in caps:
            if config.capabilities is not None:
                raise AdapterConfigInvalid(
                    f"f5 adapter {config.name!r}: config.afm_address_list: FlowSpec source "
                    "blocking needs the name of the AFM address list to fill",
                    field="config.afm_address_list",
                )
            caps = caps - {Capability.FLOWSPEC}
        return cls(config.name, settings, caps)

    # ------------------------------------------------------------ session

    async def _login(self) -> str:
        s = self.settings
        resp = await self.http.send(
            "POST",
            LOGIN,
            json={
                "username": s.username,
                "password": s.auth_token.get_secret_value(),
                "loginProviderName": s.login_provider,
            },
        )
        body = self.http.json(resp, f"POST {LOGIN}")
        token_obj = body.get("token") if isinstance(body, dict) else None
        token = token_obj.get("token") if isinstance(token_obj, dict) else None
        if not isinstance(token, str) or not token:
            raise self.http.bad_response(f"POST {LOGIN}", "the answer has no token.token")
        self.http.add_secret(token)
        timeout = token_obj.get("timeout", 1200) if isinstance(token_obj, dict) else 1200
        if not isinstance(timeout, int | float) or timeout <= 0:
            timeout = 1200
        if int(timeout) != s.token_timeout:
            resp = await self.http.send(
                "PATCH",
                f"{TOKENS}/{token}",
                json={"timeout": s.token_timeout},
                headers={"X-F5-Auth-Token": token},
            )
            self.http.check(resp, f"PATCH {TOKENS}/<token>")
            timeout = s.token_timeout
        self.logins += 1
        self._token = token
        self._renew_at = time.monotonic() + timeout - min(60.0, timeout / 10)
        return token

    async def _session(self, stale: str | None = None) -> str:
        async with self._login_lock:
            token = self._token
            if token is None or token == stale or time.monotonic() >= self._renew_at:
                token = await self._login()
            return token

    async def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """One authenticated request; a 401 means a new login and one more try."""
        token = await self._session()
        resp = await self.http.send(method, path, json=json, headers={"X-F5-Auth-Token": token})
        if resp.status_code == 401:
            token = await self._session(stale=token)
            resp = await self.http.send(method, path, json=json, headers={"X-F5-Auth-Token": token})
        return resp

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return await self._apply(rules, add=True)

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return await self._apply(rules, add=False)

    async def _apply(self, rules: Sequence[RuleRef], *, add: bool) -> list[Outcome]:
        out: dict[int, Outcome] = {}
        blocks: list[tuple[int, RuleRef, str]] = []
        for i, ref in enumerate(rules):
            try:
                require_capability(self, ref.intent)
                if isinstance(ref.intent, BlackholeIntent):
                    out[i] = await self._route(ref, ref.intent, add=add)
                elif isinstance(ref.intent, FlowSpecIntent):
                    blocks.append((i, ref, render.afm_source(ref.intent)))
            except AdapterError as err:
                out[i] = failed(ref, err)
        if blocks:
            try:
                await self._afm(blocks, add=add)
                for i, ref, source in blocks:
                    out[i] = Outcome.success(ref, address_list=self._afm_path(), source=source)
            except AdapterError as err:
                for i, ref, _ in blocks:
                    out[i] = failed(ref, err)
        return [out[i] for i in range(len(rules))]

    async def _route(self, ref: RuleRef, intent: BlackholeIntent, *, add: bool) -> Outcome:
        p = self.settings.partition
        if add:
            body = render.render_route(intent, ref.key, p)
            resp = await self._call("POST", ROUTES, body)
            if resp.status_code == 409:  # same name = same intent key: already there
                return Outcome.success(ref, route=f"/{p}/{body['name']}", existed=True)
            self.http.check(resp)
            return Outcome.success(ref, route=f"/{p}/{body['name']}")
        name = render.route_name(ref.key)
        resp = await self._call("DELETE", f"{ROUTES}/{render.object_path(p, name)}")
        if resp.status_code == 404:
            return Outcome.success(ref, route=f"/{p}/{name}", existed=False)
        self.http.check(resp)
        return Outcome.success(ref, route=f"/{p}/{name}")

    def _afm_path(self) -> str:
        return f"/{self.settings.partition}/{self.settings.afm_address_list}"

    def _afm_url(self) -> str:
        name = self.settings.afm_address_list or ""  # set whenever FLOWSPEC is on
        return f"{ADDRESS_LISTS}/{render.object_path(self.settings.partition, name)}"

    async def _afm_entries(self) -> list[dict[str, Any]]:
        return (await self._afm_list())[0]

    async def _afm_list(self) -> tuple[list[dict[str, Any]], bool]:
        """The list's address entries, and whether it has members of other kinds."""
        resp = await self._call("GET", self._afm_url())
        if resp.status_code == 404:
            raise AdapterRefused(
                f"f5 adapter {self.name!r}: AFM address list {self._afm_path()} does not exist; "
                "create it and use it as the source of an AFM drop rule",
                code="adapter_refused",
            )
        body = self.http.json(resp)
        addresses = body.get("addresses", []) if isinstance(body, dict) else None
        if not isinstance(addresses, list):
            raise self.http.bad_response(f"GET {self._afm_path()}", "addresses is not a list")
        entries = [a for a in addresses if isinstance(a, dict) and isinstance(a.get("name"), str)]
        return entries, render.has_other_members(body)

    async def _afm(self, blocks: list[tuple[int, RuleRef, str]], *, add: bool) -> None:
        async with self._afm_lock:  # read-modify-write of one list
            current, others = await self._afm_list()
            if add:
                wanted = render.add_entries(current, [(src, ref.key) for _, ref, src in blocks])
            else:
                keys = [ref.key for _, ref, _ in blocks]
                wanted = render.remove_entries(current, keys, other_members=others)
            if wanted == current:
                return
            resp = await self._call("PATCH", self._afm_url(), {"addresses": wanted})
            self.http.check(resp)

    async def active(self) -> frozenset[str]:
        resp = await self._call("GET", ROUTES)
        body = self.http.json(resp)
        items = body.get("items", []) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise self.http.bad_response(f"GET {ROUTES}", "items is not a list")
        keys: set[str] = set()
        for item in items:
            if not isinstance(item, dict) or item.get("partition") != self.settings.partition:
                continue
            key = render.key_of_route(str(item.get("name", "")))
            if key is not None and item.get("blackhole") is True:
                keys.add(key)
        if Capability.FLOWSPEC in self.capabilities:
            keys |= render.keys_in(await self._afm_entries())
        return frozenset(keys)

    async def check(self) -> Health:
        started = time.monotonic()
        try:
            resp = await self._call("GET", VERSION)
            try:
                version = render.version_of(self.http.json(resp))
            except ValueError as exc:
                raise self.http.bad_response(f"GET {VERSION}", str(exc)) from None
            detail = version
            if Capability.FLOWSPEC in self.capabilities:
                entries = [e for e in await self._afm_entries() if not render.is_placeholder(e)]
                detail += f"; AFM list {self._afm_path()} holds {len(entries)} entries"
        except AdapterError as err:
            return Health(False, None, str(err))
        return Health(True, (time.monotonic() - started) * 1000, detail)

    async def close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(AdapterError):  # it expires on its own anyway
                await self.http.send(
                    "DELETE", f"{TOKENS}/{token}", headers={"X-F5-Auth-Token": token}, retry=False
                )
        await self.http.close()
