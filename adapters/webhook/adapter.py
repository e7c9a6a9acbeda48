"""The webhook adapter: one signed JSON POST per rule change.

Each rule in ``announce``/``withdraw`` becomes one message (see
:mod:`adapters.webhook.render`) signed per Standard Webhooks with the adapter's
``whsec_`` secret (its ``auth_token``; see :mod:`adapters.webhook.signing`). Messages of
a batch are sent concurrently, at most ``max_concurrency`` at a time. A message is
retried with exponential backoff on 5xx answers, timeouts and connection errors: every
attempt keeps the ``webhook-id`` (so a receiver can drop duplicates) and gets a fresh
``webhook-timestamp`` and signature, as the Standard Webhooks spec asks, so a retry late
in the backoff is not refused as a replay. A 4xx answer is final, and so is a redirect
(never followed). Only a 2xx answer counts as delivered.

The target must pass the service's egress policy and the adapter's own allowlist
(:mod:`adapters.webhook.targets`, which can only narrow the policy): both are checked
when the adapter is created (for an address literal) and at every connection (the name
is resolved there, every address checked, and the connection made to a checked one).

A webhook cannot be read back: ``active()`` is ``None``. ``check()`` sends a signed
``sluice.test`` message and reports the receiver's answer.
"""

from __future__ import annotations

import asyncio
import secrets as pysecrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

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
from adapters.egress import literal_address
from adapters.http import MAX_BACKOFF, HttpClient, HttpSettings, failed
from adapters.webhook import render, signing
from adapters.webhook.targets import TargetPolicy, parse_entry
from policies.errors import (
    AdapterConfigInvalid,
    AdapterError,
    AdapterRefused,
    AdapterUnavailable,
    CapabilityMissing,
)

USER_AGENT = "sluice-webhook/1"


class WebhookSettings(HttpSettings):
    auth_token: SecretStr  # the whsec_ signing secret
    allowed_targets: tuple[str, ...] = ()
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # e.g. a receiver's own auth

    @field_validator("auth_token")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        signing.secret_key(v.get_secret_value())  # ValueError says what is wrong
        return v

    @field_validator("allowed_targets")
    @classmethod
    def _targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            parse_entry(entry)
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        reserved = {"webhook-id", "webhook-timestamp", "webhook-signature", "host"}
        clash = sorted(k for k in v if k.lower() in reserved or k.lower().startswith("content-"))
        if clash:
            raise ValueError(f"headers may not set {', '.join(clash)}")
        return v


class WebhookAdapter:
    adapter_type: ClassVar[str] = "webhook"
    supported: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def __init__(
        self,
        name: str,
        settings: WebhookSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._clock = clock  # Unix seconds for webhook-timestamp
        self.settings = settings
        self.capabilities = capabilities
        self.policy = TargetPolicy.from_entries(settings.allowed_targets)
        url = urlsplit(settings.endpoint)
        self._url = url
        self._host = url.hostname or ""
        self._endpoint = settings.endpoint  # absolute: httpx sends it as it is
        # errors name the scheme, host and port only: a webhook path is often a secret
        self._what = f"POST {url.scheme}://{url.netloc}"
        extra = {k: v.get_secret_value() for k, v in settings.headers.items()}
        self.http = HttpClient(
            settings,
            label=f"webhook adapter {name!r}",
            headers={"User-Agent": USER_AGENT, **extra},
            transport=transport,
            extra_check=self.policy.refusal,
        )
        self.http.add_secret(settings.auth_token.get_secret_value(), url.path, url.query)
        self.http.add_secret(*extra.values())
        self._limit = asyncio.Semaphore(settings.max_concurrency)

    def __repr__(self) -> str:
        return f"WebhookAdapter({self.name!r}, {self._url.scheme}://{self._url.netloc})"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> WebhookAdapter:
        settings = validate_settings(WebhookSettings, config)
        adapter = cls(config.name, settings, resolve_capabilities(cls, config))
        literal = literal_address(adapter._host)
        if literal is None:
            return adapter  # a name: checked when resolved, at each connection
        why = adapter.policy.refusal(adapter._host, literal)  # (egress: checked by the settings)
        if why is not None:
            raise AdapterConfigInvalid(
                f"webhook adapter {config.name!r}: endpoint: {why}", field="endpoint"
            )
        return adapter

    # ------------------------------------------------------------ delivery

    async def deliver(self, message: Mapping[str, Any], msg_id: str | None = None) -> int:
        """Sign and POST one message; the receiver's 2xx status, or an AdapterError."""
        body = render.body_bytes(message)
        msg_id = msg_id or "msg_" + pysecrets.token_urlsafe(16)
        secret = self.settings.auth_token.get_secret_value()
        attempts = 1 + self.settings.retries
        async with self._limit:
            for attempt in range(attempts):
                if attempt:
                    backoff = self.settings.backoff * 2 ** (attempt - 1)
                    await asyncio.sleep(min(backoff, MAX_BACKOFF))
                headers = {
                    "Content-Type": "application/json",
                    # signed again per attempt: each one carries its own timestamp
                    **signing.headers_for(secret, msg_id, int(self._clock()), body),
                }
                try:
                    resp = await self.http.send(
                        "POST",
                        self._endpoint,
                        content=body,
                        headers=headers,
                        what=self._what,
                        retry=False,
                    )
                except AdapterUnavailable as err:
                    if attempt + 1 < attempts:
                        continue
                    if attempts > 1:
                        raise AdapterUnavailable(
                            f"{err} (after {attempts} attempts)", code=err.code
                        ) from None
                    raise
                break
        self.http.check(resp, self._what)
        if not 200 <= resp.status_code < 300:
            raise AdapterRefused(
                self.http.redact(
                    f"webhook adapter {self.name!r}: {self._what}: HTTP {resp.status_code} "
                    "(redirects are not followed; only 2xx counts as delivered)"
                )
            )
        return resp.status_code

    async def _one(self, ref: RuleRef, *, announcing: bool) -> Outcome:
        try:  # an operator may narrow what this webhook carries
            require_capability(self, ref.intent)
        except CapabilityMissing as exc:
            return Outcome.failure(ref, exc.message, retryable=False)
        event = render.event_of(ref, announcing=announcing)
        msg_id = f"msg_{ref.rule_id}_{event}_{pysecrets.token_hex(6)}"
        try:
            status = await self.deliver(render.payload(ref, self.name, event), msg_id)
        except AdapterError as err:
            return failed(ref, err)
        return Outcome.success(ref, status=status, webhook_id=msg_id, event=event)

    # ------------------------------------------------------------ contract

    async def announce(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._one(r, announcing=True) for r in rules)))

    async def withdraw(self, rules: Sequence[RuleRef]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._one(r, announcing=False) for r in rules)))

    async def active(self) -> frozenset[str] | None:
        return None

    async def check(self) -> Health:
        started = time.monotonic()
        try:
            status = await self.deliver(render.ping_payload(self.name))
        except AdapterError as err:
            return Health(False, None, str(err))
        return Health(
            True,
            (time.monotonic() - started) * 1000,
            f"test message delivered to {self._url.scheme}://{self._url.netloc} (HTTP {status})",
        )

    async def close(self) -> None:
        await self.http.close()
