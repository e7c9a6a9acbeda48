"""How one message reaches one alert channel.

Each channel type is described by :data:`TYPES`: its settings (``config``, returned by the
API), its secrets (write-only, sealed at rest) and a sender. The senders follow the
providers' published APIs (Slack and Discord incoming webhooks, a Teams connector
MessageCard, Telegram ``sendMessage``, PagerDuty Events API v2, OpsGenie Alert API v2,
SMTP with STARTTLS, an SMS provider's JSON API with a bearer key, and a Standard Webhooks
HMAC-SHA256-signed POST). Every outbound connection goes through the service-wide egress
policy (:mod:`adapters.egress`, ``SLUICE_EGRESS_ALLOW``), checked where the connection is
made: HTTP through :class:`Egress`, SMTP through :class:`_CheckedSMTP` (the host resolved
and every address checked in the event loop, the socket then opened to a checked address,
the certificate still verified against the configured name). A host the policy refuses
by its name alone (an internal literal, ``localhost``) is refused when the channel is
saved (:func:`check_egress`, code ``egress_refused``).

A provider's ``api_base`` may be set (an EU PagerDuty/OpsGenie region, a proxy, a test
receiver); it goes through the same egress check.

**Why not Apprise.** Apprise (checked: 2.3.0) covers these providers, but none of its
transports can be used here without losing a requirement (docs/alert-channels.md):

* its HTTP plugins call ``requests.post``/``requests.request`` at module level with their
  own DNS resolution and connection: there is no hook to route them through the egress
  policy's connect-time check, and a check made before the call could be bypassed by DNS
  rebinding (and by redirects, which its plugins follow unless told not to);
* Slack, Discord, Telegram, PagerDuty and OpsGenie have fixed hosts in Apprise (PagerDuty
  and OpsGenie: a US or EU choice), so neither a proxy/``api_base`` nor the loopback
  receivers the tests check request shapes on can be configured;
* its generic ``json://`` has its own body and no HMAC signature (our webhook channel is
  Standard Webhooks-signed like the webhook adapter);
* its email plugin (``mailtos://``, host and port configurable, STARTTLS) verifies the
  server against the system CAs only (no ``ca_file``), resolves the host itself (outside
  the egress policy; passing a checked address instead breaks the certificate's name
  check), and reports a refused recipient or a failed login as a bare ``False``, so a
  permanent failure cannot be told from one worth retrying.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.egress import Address, EgressPolicy, EgressRefused, EgressTransport, egress_client
from adapters.webhook.signing import headers_for, secret_key
from policies.errors import ValidationFailed


class DeliveryFailed(Exception):
    """A channel did not take the message; ``retry`` says whether trying again may help.

    ``code``: ``egress_refused`` when the egress policy refused the connection."""

    def __init__(self, message: str, *, retry: bool = True, code: str = "delivery_failed") -> None:
        super().__init__(message)
        self.retry = retry
        self.code = code


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

    def __init__(self, policy: EgressPolicy, timeout: float = 10.0, connections: int = 20) -> None:
        self.policy = policy
        self.timeout = timeout
        self.connections = connections  # kept alive for the next messages
        # one client for all sends: building one loads the CA bundle (tens of ms of CPU)
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            limits = httpx.Limits(
                max_connections=max(100, self.connections),
                max_keepalive_connections=self.connections,
            )
            self._client = egress_client(
                self.policy,
                timeout=self.timeout,
                transport=EgressTransport(self.policy, limits=limits),
            )
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
            raise DeliveryFailed(
                f"egress refused: {exc}", retry=False, code="egress_refused"
            ) from None
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, EgressRefused):
                raise DeliveryFailed(
                    f"egress refused: {cause}", retry=False, code="egress_refused"
                ) from None
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


class _CheckedSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` whose socket goes to addresses the egress policy already checked.

    ``self._host`` stays the configured name, so STARTTLS verifies the certificate
    against it; only the TCP connection is made to a checked address."""

    def __init__(self, addrs: list[Address], *args: Any, **kw: Any) -> None:
        self._addrs = addrs
        super().__init__(*args, **kw)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        last: OSError | None = None
        for addr in self._addrs:
            try:
                return socket.create_connection((str(addr), port), timeout)
            except OSError as exc:
                last = exc
        raise last or OSError(f"no address for {host}")


def _smtp_send(
    cfg: Mapping[str, Any],
    sec: Mapping[str, Any],
    m: Message,
    timeout: float,
    addrs: list[Address],
) -> None:
    msg = EmailMessage()
    msg["Subject"] = m.title
    msg["From"] = cfg["sender"]
    msg["To"] = ", ".join(cfg["to"])
    msg.set_content(m.text)
    ctx = ssl.create_default_context()
    if cfg.get("ca_file"):
        ctx.load_verify_locations(cfg["ca_file"])
    with _CheckedSMTP(addrs, cfg["host"], _smtp_port(cfg), timeout=timeout) as smtp:
        if cfg.get("starttls", True):
            smtp.starttls(context=ctx)
        if sec.get("username"):
            smtp.login(sec["username"], sec.get("password", ""))
        smtp.send_message(msg)


def _smtp_port(cfg: Mapping[str, Any]) -> int:
    return int(cfg.get("port", 587))


async def _email(
    e: Egress, cfg: Mapping[str, Any], sec: Mapping[str, Any], m: Message
) -> dict[str, Any]:
    try:
        # resolved and checked here, the connection made to these addresses only
        addrs = await e.policy.resolve(cfg["host"], _smtp_port(cfg), limit_s=e.timeout)
    except EgressRefused as exc:
        raise DeliveryFailed(
            f"egress refused: SMTP {cfg['host']}:{_smtp_port(cfg)}: {exc}",
            retry=False,
            code="egress_refused",
        ) from None
    try:
        await asyncio.to_thread(_smtp_send, cfg, sec, m, e.timeout, addrs)
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
        if k == "port" and not (isinstance(v, int) and 1 <= v <= 65535):
            raise ValidationFailed(
                "port must be 1-65535", code="invalid_channel", field="config.port"
            )
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


def check_egress(
    policy: EgressPolicy, kind: str, config: Mapping[str, Any], secrets: Mapping[str, Any]
) -> None:
    """Refuse, when a channel is saved, a destination the egress policy refuses by name
    alone (an internal address literal, ``localhost``); names are checked again, resolved,
    at every connection."""
    targets: list[tuple[str, str]] = []
    if kind == "email" and "host" in config:
        targets.append(("config.host", str(config["host"])))
    for k in URL_CONFIG:
        if k in config:
            targets.append((f"config.{k}", urlsplit(str(config[k])).hostname or ""))
    for k in URL_SECRETS:
        if k in secrets:
            targets.append((f"secrets.{k}", urlsplit(str(secrets[k])).hostname or ""))
    for fld, host in targets:
        why = policy.check_host(host)
        if why is not None:
            port = f":{_smtp_port(config)}" if fld == "config.host" else ""
            raise ValidationFailed(f"{fld}: {host}{port}: {why}", code="egress_refused", field=fld)


def _check_url(v: Any, fld: str) -> None:
    parts = urlsplit(v) if isinstance(v, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"{fld} must be an http(s) URL", code="invalid_channel", field=fld)
