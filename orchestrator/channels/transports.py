"""How one message reaches one alert channel.

Each channel type is described by :data:`TYPES`: its settings (``config``, returned by the
API), its secrets (write-only) and a sender. The senders follow the providers' published
APIs (Slack and Discord incoming webhooks, a Teams connector MessageCard, Telegram
``sendMessage``, PagerDuty Events API v2, OpsGenie Alert API v2, SMTP with STARTTLS, an
SMS provider's JSON API with a bearer key, and a Standard Webhooks HMAC-SHA256-signed
POST). Every outbound HTTP request goes through the service-wide egress policy
(:class:`Egress`, :mod:`adapters.egress`): internal addresses are refused unless the
operator allowed them (``SLUICE_EGRESS_ALLOW``). SMTP is a plain socket to the configured
host and is not under that policy.

A provider's ``api_base`` may be set (an EU PagerDuty/OpsGenie region, a proxy, a test
receiver); it goes through the same egress check.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.egress import EgressPolicy, EgressRefused, egress_client
from adapters.webhook.signing import headers_for, secret_key
from policies.errors import ValidationFailed


class DeliveryFailed(Exception):
    """A channel did not take the message; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class Message:
    """What is announced: the incident event, a one-line title and a text."""

    event: str  # incident.opened | incident.escalated | incident.resolved | test
    dedup_key: str  # the incident id (of the correlated group's first incident)
    title: str
    text: str
    severity: str
    context: Mapping[str, Any]


class Egress:
    """Outbound HTTP under the service-wide egress policy (``SLUICE_EGRESS_ALLOW``).

    The check is made where the connection is made (:mod:`adapters.egress`): every
    address the host resolves to, internal ranges refused unless allowed, no redirects.
    """

    def __init__(self, policy: EgressPolicy, timeout: float = 10.0) -> None:
        self.policy = policy
        self.timeout = timeout
        # one client for all sends: building one loads the CA bundle (tens of ms of CPU)
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = egress_client(self.policy, timeout=self.timeout)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(
        self,
        url: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> httpx.Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeliveryFailed(f"not an http(s) URL: {parts.scheme}://…", retry=False)
        try:
            r = await self.client().request(
                method, url, json=json_body, content=content, headers=dict(headers or {})
            )
        except EgressRefused as exc:
            raise DeliveryFailed(f"egress refused: {exc}", retry=False) from None
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, EgressRefused):
                raise DeliveryFailed(f"egress refused: {cause}", retry=False) from None
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if r.status_code >= 300:
            raise DeliveryFailed(
                f"HTTP {r.status_code}: {r.text[:200]}",
                retry=r.status_code >= 500 or r.status_code == 429,
            )
        return r


Sender = Callable[
    [Egress, Mapping[str, Any], Mapping[str, Any], Message], Awaitable[dict[str, Any]]
]


@dataclass(frozen=True, slots=True)
class ChannelType:
    config: Mapping[str, tuple[type | tuple[type, ...], bool]]  # name -> (type, required)
    secrets: tuple[str, ...]
    send: Sender


def _base(cfg: Mapping[str, Any], default: str) -> str:
    return str(cfg.get("api_base") or default).rstrip("/")


async def _slack(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    await e.post(sec["webhook_url"], json_body={"text": f"*{m.title}*\n{m.text}"})
    return {}


async def _discord(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    content = f"**{m.title}**\n{m.text}"[:2000]
    await e.post(sec["webhook_url"], json_body={"content": content})
    return {}


async def _teams(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    card = {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": m.title,
        "title": m.title,
        "text": m.text,
        "themeColor": "2EB886" if m.event == "incident.resolved" else "D00000",
    }
    await e.post(sec["webhook_url"], json_body=card)
    return {}


async def _telegram(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    url = f"{_base(cfg, 'https://api.telegram.org')}/bot{sec['bot_token']}/sendMessage"
    r = await e.post(url, json_body={"chat_id": cfg["chat_id"], "text": f"{m.title}\n{m.text}"})
    body = r.json() if r.content else {}
    if not body.get("ok"):
        raise DeliveryFailed(f"telegram answered {str(body)[:200]}")
    return {"message_id": (body.get("result") or {}).get("message_id")}


_PD_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}


async def _pagerduty(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    url = f"{_base(cfg, 'https://events.pagerduty.com')}/v2/enqueue"
    body: dict[str, Any] = {
        "routing_key": sec["routing_key"],
        "event_action": "resolve" if m.event == "incident.resolved" else "trigger",
        "dedup_key": m.dedup_key,
    }
    if body["event_action"] == "trigger":
        body["payload"] = {
            "summary": m.title[:1024],
            "source": str(m.context.get("node") or m.context.get("target_ip") or "sluice"),
            "severity": _PD_SEVERITY.get(m.severity, "warning"),
            "component": str(m.context.get("target_ip") or ""),
            "class": str(m.context.get("attack_family") or ""),
            "custom_details": {"text": m.text, "pps": m.context.get("pps")},
        }
    r = await e.post(url, json_body=body)
    answer = r.json() if r.content else {}
    return {"dedup_key": answer.get("dedup_key", m.dedup_key)}


_OG_PRIORITY = {"critical": "P1", "high": "P2", "medium": "P3", "low": "P4"}


async def _opsgenie(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    base = _base(cfg, "https://api.opsgenie.com")
    headers = {"Authorization": f"GenieKey {sec['api_key']}"}
    if m.event == "incident.resolved":
        url = f"{base}/v2/alerts/{m.dedup_key}/close?identifierType=alias"
        await e.post(url, json_body={"source": "sluice", "note": m.text}, headers=headers)
        return {}
    body = {
        "message": m.title[:130],
        "alias": m.dedup_key,
        "description": m.text[:15000],
        "priority": _OG_PRIORITY.get(m.severity, "P3"),
        "source": "sluice",
        "tags": ["sluice", str(m.context.get("attack_family") or "")],
    }
    r = await e.post(f"{base}/v2/alerts", json_body=body, headers=headers)
    return {"request_id": (r.json() if r.content else {}).get("requestId")}


async def _sms(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    body = {"from": cfg["sender"], "to": list(cfg["to"]), "text": f"{m.title}: {m.text}"[:480]}
    await e.post(
        cfg["api_url"], json_body=body, headers={"Authorization": f"Bearer {sec['api_key']}"}
    )
    return {}


async def _webhook(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    content = json.dumps(
        {
            "type": m.event,
            "dedup_key": m.dedup_key,
            "title": m.title,
            "text": m.text,
            "severity": m.severity,
            "incident": dict(m.context),
        },
        sort_keys=True,
        default=str,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        **headers_for(sec["secret"], msg_id, int(time.time()), content),
    }
    await e.post(cfg["url"], content=content, headers=headers)
    return {"webhook_id": msg_id}


def _smtp_send(cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message, timeout: float) -> None:
    msg = EmailMessage()
    msg["Subject"] = m.title
    msg["From"] = cfg["sender"]
    msg["To"] = ", ".join(cfg["to"])
    msg.set_content(m.text)
    ctx = ssl.create_default_context()
    if cfg.get("ca_file"):
        ctx.load_verify_locations(cfg["ca_file"])
    with smtplib.SMTP(cfg["host"], int(cfg.get("port", 587)), timeout=timeout) as smtp:
        if cfg.get("starttls", True):
            smtp.starttls(context=ctx)
        if sec.get("username"):
            smtp.login(sec["username"], sec.get("password", ""))
        smtp.send_message(msg)


async def _email(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    try:
        await asyncio.to_thread(_smtp_send, cfg, sec, m, e.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        permanent = isinstance(exc, smtplib.SMTPRecipientsRefused | smtplib.SMTPAuthenticationError)
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}", retry=not permanent) from None
    return {}


TYPES: dict[str, ChannelType] = {
    "slack": ChannelType({}, ("webhook_url",), _slack),
    "discord": ChannelType({}, ("webhook_url",), _discord),
    "teams": ChannelType({}, ("webhook_url",), _teams),
    "telegram": ChannelType(
        {"chat_id": ((str, int), True), "api_base": (str, False)}, ("bot_token",), _telegram
    ),
    "pagerduty": ChannelType({"api_base": (str, False)}, ("routing_key",), _pagerduty),
    "opsgenie": ChannelType({"api_base": (str, False)}, ("api_key",), _opsgenie),
    "email": ChannelType(
        {
            "host": (str, True),
            "port": (int, False),
            "starttls": (bool, False),
            "sender": (str, True),
            "to": (list, True),
            "ca_file": (str, False),
        },
        ("username", "password"),
        _email,
    ),
    "sms": ChannelType(
        {"api_url": (str, True), "sender": (str, True), "to": (list, True)}, ("api_key",), _sms
    ),
    "webhook": ChannelType({"url": (str, True)}, ("secret",), _webhook),
}
OPTIONAL_SECRETS = {"email": {"username", "password"}}
URL_SECRETS = {"webhook_url"}
URL_CONFIG = {"api_base", "api_url", "url"}


def check_config(
    kind: str, config: Any, secrets: Any, *, existing: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a channel's settings; secrets missing on update keep the stored ones."""
    if kind not in TYPES:
        raise ValidationFailed(
            f"unknown channel type {kind!r}; known: {', '.join(TYPES)}",
            code="unknown_channel_type",
            field="channel_type",
        )
    spec = TYPES[kind]
    if not isinstance(config, Mapping):
        raise ValidationFailed("config must be an object", code="invalid_channel", field="config")
    if not isinstance(secrets, Mapping):
        raise ValidationFailed("secrets must be an object", code="invalid_channel", field="secrets")
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k not in spec.config:
            raise ValidationFailed(
                f"unknown setting {k!r} for a {kind} channel",
                code="invalid_channel",
                field=f"config.{k}",
            )
        typ = spec.config[k][0]
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise ValidationFailed(
                f"config.{k} has the wrong type", code="invalid_channel", field=f"config.{k}"
            )
        if k in URL_CONFIG:
            _check_url(v, f"config.{k}")
        if k == "to" and (
            not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v)
        ):
            raise ValidationFailed(
                "to must be a non-empty list of strings", code="invalid_channel", field="config.to"
            )
        out[k] = v
    for k, (_, required) in spec.config.items():
        if required and k not in out:
            raise ValidationFailed(
                f"config.{k} is required for a {kind} channel",
                code="invalid_channel",
                field=f"config.{k}",
            )
    sec: dict[str, Any] = dict(existing or {})
    for k, v in secrets.items():
        if k not in spec.secrets:
            raise ValidationFailed(
                f"unknown secret {k!r} for a {kind} channel",
                code="invalid_channel",
                field=f"secrets.{k}",
            )
        if not isinstance(v, str) or not v:
            raise ValidationFailed(
                f"secrets.{k} must be a non-empty string",
                code="invalid_channel",
                field=f"secrets.{k}",
            )
        if k in URL_SECRETS:
            _check_url(v, f"secrets.{k}")
        if kind == "webhook" and k == "secret":
            try:
                secret_key(v)
            except ValueError as exc:
                raise ValidationFailed(
                    f"secrets.secret: {exc}", code="invalid_channel", field="secrets.secret"
                ) from None
        sec[k] = v
    for k in spec.secrets:
        if k not in sec and k not in OPTIONAL_SECRETS.get(kind, set()):
            raise ValidationFailed(
                f"secrets.{k} is required for a {kind} channel",
                code="invalid_channel",
                field=f"secrets.{k}",
            )
    return out, sec


def _check_url(v: Any, fld: str) -> None:
    parts = urlsplit(v) if isinstance(v, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"{fld} must be an http(s) URL", code="invalid_channel", field=fld)
