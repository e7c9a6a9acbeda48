"""The Radware DefenseFlow adapter: REST through Cyber Controller / APSolute Vision.

Session: ``POST /mgmt/system/user/login`` returns a ``jsessionid``; every later request
carries it as the ``JSESSIONID`` cookie (and header, as Radware's examples do). Sessions
time out on the controller, so a 401 means one new login and the request once more; a
401 after that is an authentication failure. ``close()`` logs out.

``announce`` starts an attack on the intent's prefix (DefenseFlow then diverts it through
scrubbing), ``withdraw`` stops it; see :mod:`adapters.radware.render`. DefenseFlow's API
offers no read-back of attacks by external id, so ``active()`` is ``None``; ``check()``
logs in and lists the protected objects by name. It does not say which are under attack:
no public source documents a field for that, so none is read.
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
from adapters.http import HttpClient, HttpSettings, failed
from adapters.radware import render
from policies.errors import AdapterError
from policies.intents import ScrubbingIntent

LOGIN = "/mgmt/system/user/login"
LOGOUT = "/mgmt/system/user/logout"
START = "/mgmt/device/df/config/action/attackstart"
STOP = "/mgmt/device/df/config/action/attackstop"
PROTECTED_OBJECTS = "/mgmt/device/df/config/ProtectedObjects"


class RadwareSettings(HttpSettings):
    username: Annotated[str, Field(min_length=1)]
    auth_token: SecretStr  # the user's password
    attack_id_prefix: str = "sluice"

    @field_validator("attack_id_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v):
            raise ValueError("use 1-32 letters, digits, '-' or '_'")
        return v


class RadwareAdapter:
    adapter_type: ClassVar[str] = "radware"
    supported: ClassVar[frozenset[Capability]] = frozenset({Capability.SCRUBBING})

    def __init__(
        self,
        name: str,
        settings: RadwareSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = capabilities
        self.http = HttpClient(settings, label=f"radware adapter {name!r}", transport=transport)
        self.http.add_secret(settings.auth_token.get_secret_value())
        self._session_id: str | None = None
        self._login_lock = asyncio.Lock()
        self.logins = 0

    def __repr__(self) -> str:
        return f"RadwareAdapter({self.name!r}, {self.settings.endpoint})"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> RadwareAdapter:
        settings = validate_settings(RadwareSettings, config)
        return cls(config.name, settings, resolve_capabilities(cls, config))

    # ------------------------------------------------------------ session

    async def _login(self) -> str:
        s = self.settings
        resp = await self.http.send(
            "POST",
            LOGIN,
            json={"username": s.username, "password": s.auth_token.get_secret_value()},
        )
        body = self.http.json(resp, f"POST {LOGIN}")
        session = body.get("jsessionid") if isinstance(body, dict) else None
        if not isinstance(session, str) or not session:
            raise self.http.bad_response(f"POST {LOGIN}", "the answer has no jsessionid")
        self.http.add_secret(session)
        self.logins += 1
        self._session_id = session
        return session

    async def _session(self, stale: str | None = None) -> str:
        async with self._login_lock:
            session = self._session_id
            if session is None or session == stale:
                session = await self._login()
            return session

    @staticmethod
    def _headers(session: str) -> dict[str, str]:
        return {"Cookie": f"JSESSIONID={session}", "JSESSIONID": session}

    async def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """One request in the session; a 401 means a new login and one more try."""
        session = await self._session()
        resp = await self.http.send(method, path, json=json, headers=self._headers(session))
        if resp.status_code == 401:
            session = await self._session(stale=session)
            resp = await self.http.send(method, path, json=json, headers=self._headers(session))
        return resp

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return [await self._one(ref, start=True) for ref in rules]

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return [await self._one(ref, start=False) for ref in rules]

    async def _one(self, ref: RuleRef, *, start: bool) -> Outcome:
        prefix = self.settings.attack_id_prefix
        try:
            require_capability(self, ref.intent)  # scrubbing only
            intent = ref.intent
            if start and isinstance(intent, ScrubbingIntent):
                body = render.render_start(intent, ref.key, ref.rule_id, prefix, ref.context)
                self.http.check(await self._call("POST", START, body))
            else:
                body = render.render_stop(ref.key, prefix)
                self.http.check(await self._call("POST", STOP, body))
        except AdapterError as err:
            return failed(ref, err)
        return Outcome.success(ref, external_attack_id=body["externalAttackId"])

    async def active(self) -> frozenset[str] | None:
        return None

    async def check(self) -> Health:
        started = time.monotonic()
        try:
            body = self.http.json(await self._call("GET", PROTECTED_OBJECTS))
            try:
                names = render.protected_objects_summary(body)
            except ValueError as exc:
                raise self.http.bad_response(f"GET {PROTECTED_OBJECTS}", str(exc)) from None
        except AdapterError as err:
            return Health(False, None, str(err))
        detail = f"DefenseFlow: {len(names)} protected objects ({', '.join(names) or 'none'})"
        return Health(True, (time.monotonic() - started) * 1000, detail)

    async def close(self) -> None:
        session, self._session_id = self._session_id, None
        if session is not None:
            with contextlib.suppress(AdapterError):  # the session times out anyway
                await self.http.send("POST", LOGOUT, headers=self._headers(session), retry=False)
        await self.http.close()
