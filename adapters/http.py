"""A small httpx helper shared by the HTTP adapters (appliances, clouds, webhooks).

* :class:`HttpSettings`: the fields every HTTP adapter's settings model shares
  (``endpoint``, ``timeout``, ``retries``, ``backoff``, ``verify_tls``, ``ca_file``);
  subclass it and add the vendor's own fields. The endpoint must be an ``http`` or
  ``https`` URL with a host and without credentials, query or fragment; a literal address
  (or ``localhost``) the service's egress policy refuses is refused at creation, and
  ``ca_file`` must lie in a directory the service allows.
* :class:`HttpClient`: one ``httpx.AsyncClient`` per adapter, connecting through the
  service's egress policy (:mod:`adapters.egress`: every resolved address checked at
  connection time, no redirects followed, no proxy from the environment); a refused
  address fails the request with code ``egress_refused`` (not retried, not retryable).
  :meth:`HttpClient.send`
  retries, with exponential backoff (``backoff * 2**n`` seconds), on 5xx answers,
  timeouts and connection errors, ``retries`` times; it never retries a 4xx. It returns
  any answer below 500 so the adapter can react to a 401 (log in again) before calling
  :meth:`HttpClient.check` (4xx -> :class:`~policies.errors.AdapterRefused`, not
  retryable; 429 -> :class:`~policies.errors.AdapterUnavailable`, retryable later) and
  :meth:`HttpClient.json` (a body that is not JSON -> ``AdapterUnavailable`` with code
  ``adapter_bad_response``). Exhausted retries raise ``AdapterUnavailable``.
* httpx's own request log lines get the same redaction (a filter on the ``httpx``
  logger, added when the first client is made).
* Errors keep the vendor's own message (``message``, ``errors[].message``, ``detail``, ...)
  and name the method and path, never the query string or headers. Every string
  registered with :meth:`HttpClient.add_secret` (passwords, API keys, session tokens) is
  replaced by ``***`` in error texts and debug logs.
* :func:`failed` turns an :class:`~policies.errors.AdapterError` into the rule's failed
  :class:`~adapters.base.Outcome` (retryable as the error says).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json as jsonlib
import logging
import re
import ssl
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, ValidationInfo, field_validator

from adapters.access import LocalFile, access_of
from adapters.base import AdapterSettings, Outcome, RuleRef
from adapters.egress import Check, EgressRefused, EgressTransport
from policies.errors import AdapterConfigInvalid, AdapterError, AdapterRefused, AdapterUnavailable

log = logging.getLogger("sluice.adapters.http")
# What inet_aton reads as a number: decimal, octal (leading 0) or hexadecimal (0x) labels.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)

MAX_BACKOFF = 10.0
MESSAGE_LIMIT = 300


def check_endpoint(value: str) -> str:
    """An ``http(s)://host[:port][/base]`` URL without credentials, query or fragment."""
    text = value.strip()
    if not text:
        raise ValueError("an http:// or https:// URL is required")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the endpoint URL; use the settings")
    if parts.query or parts.fragment:
        raise ValueError("the endpoint URL must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} has an invalid port") from exc
    host = parts.hostname
    if all(_NUMERIC_LABEL.fullmatch(label) for label in host.rstrip(".").split(".")):
        # 0177.0.0.1, 0x7f.1, 2130706433: resolvers read them as (loopback) addresses,
        # httpx refuses them; only dotted decimal is taken
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"host {host!r} is not a dotted-decimal IPv4 address (octal, hexadecimal and "
                "shortened forms are refused)"
            ) from None
    try:
        httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{text!r} is not a valid URL: {exc}") from None
    return text.rstrip("/")


class HttpSettings(AdapterSettings):
    """Connection settings every HTTP adapter shares; vendors subclass and add fields."""

    endpoint: str
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff: Annotated[float, Field(ge=0, le=60)] = 0.5
    verify_tls: bool = True
    ca_file: LocalFile | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        text = check_endpoint(v)
        why = access_of(info).egress.check_host(urlsplit(text).hostname or "")
        if why is not None:
            raise ValueError(why)
        return text

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"CA file {v} does not exist")
        return v


def vendor_message(resp: httpx.Response) -> str:
    """The vendor's own error text from a response body, shortened."""
    try:
        data: Any = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:MESSAGE_LIMIT] if text else resp.reason_phrase or "no message"
    found = _find_message(data)
    if found:
        return found[:MESSAGE_LIMIT]
    return jsonlib.dumps(data)[:MESSAGE_LIMIT]


def _find_message(data: Any) -> str | None:
    if isinstance(data, str):
        return data or None
    if isinstance(data, list):
        parts = [m for m in (_find_message(x) for x in data[:5]) if m]
        return "; ".join(parts) or None
    if isinstance(data, dict):
        for key in ("message", "errorMessage", "error_message", "detail", "description"):
            if key in data and (m := _find_message(data[key])):
                return m
        for key in ("error", "errors", "result"):
            if key in data and (m := _find_message(data[key])):
                return m
    return None


class _RedactHttpxLog(logging.Filter):
    """Takes the secrets of live clients out of httpx's own log lines.

    httpx logs every request URL at INFO; some URLs hold a secret (an F5 token path, a
    webhook path), so the line is rewritten with those secrets replaced by ``***``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[HttpClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        clients = list(self.clients)
        if clients:
            text = record.getMessage()
            for client in clients:
                text = client.redact(text)
            record.msg, record.args = text, None
        return True


_HTTPX_FILTER = _RedactHttpxLog()


def _watch_httpx_log(client: HttpClient) -> None:
    logger = logging.getLogger("httpx")
    if _HTTPX_FILTER not in logger.filters:
        logger.addFilter(_HTTPX_FILTER)
    _HTTPX_FILTER.clients.add(client)


def failed(ref: RuleRef, err: AdapterError) -> Outcome:
    """The failed outcome for ``ref`` that ``err`` stands for."""
    return Outcome.failure(ref, str(err), retryable=err.retryable)


class HttpClient:
    """One adapter's HTTP client: retries, error translation, secret redaction."""

    def __init__(
        self,
        settings: HttpSettings,
        *,
        label: str,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        extra_check: Check | None = None,
    ) -> None:
        """``transport`` replaces the network (a test's mock); ``extra_check`` narrows the
        egress policy further (a webhook's own target allowlist)."""
        self.settings = settings
        self.label = label  # "f5 adapter 'edge'"; starts every error message
        self._secrets: set[str] = set()
        verify: bool | ssl.SSLContext = settings.verify_tls
        if settings.verify_tls and settings.ca_file is not None:
            cafile = settings.local(settings.ca_file, "file")
            try:
                verify = ssl.create_default_context(cafile=str(cafile))
            except (ssl.SSLError, OSError) as exc:
                raise AdapterConfigInvalid(
                    f"{label}: config.ca_file: {cafile} holds no usable CA certificate ({exc})",
                    field="config.ca_file",
                ) from None
        self._client = httpx.AsyncClient(
            base_url=settings.endpoint,
            timeout=httpx.Timeout(settings.timeout),
            headers=dict(headers or {}),
            transport=transport
            or EgressTransport(settings.access.egress, verify=verify, extra=extra_check),
            follow_redirects=False,
            trust_env=False,
        )
        _watch_httpx_log(self)

    def __repr__(self) -> str:
        return f"HttpClient({self.label}, {self.settings.endpoint})"

    def add_secret(self, *values: str | None) -> None:
        """Strings to keep out of every error and log line (empty ones are ignored)."""
        self._secrets.update(v for v in values if v and len(v) >= 4)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _error(self, cls: type[AdapterError], what: str, detail: str, **kw: Any) -> AdapterError:
        return cls(self.redact(f"{self.label}: {what}: {detail}"), **kw)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        extensions: Mapping[str, Any] | None = None,
        what: str | None = None,
    ) -> httpx.Response:
        """Send with retries; return the first answer below 500, else raise.

        Raises :class:`AdapterUnavailable` when the last attempt timed out, could not
        connect, or answered 5xx. ``what`` replaces ``"METHOD path"`` in errors and logs
        (for URLs whose path is itself a secret); ``extensions`` go to httpx (e.g.
        ``sni_hostname`` when connecting to a pinned address).
        """
        what = what or f"{method} {path}"
        attempts = 1 + (self.settings.retries if retry else 0)
        last: AdapterError = AdapterUnavailable(f"{self.label}: {what}: not sent")
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(self.settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF))
            started = time.monotonic()
            try:
                resp = await self._client.request(
                    method,
                    path,
                    json=json,
                    content=content,
                    params=params,
                    headers=headers,
                    extensions=dict(extensions) if extensions else None,
                )
            except EgressRefused as exc:
                raise self._error(AdapterRefused, what, str(exc), code="egress_refused") from None
            except httpx.TimeoutException:
                last = self._error(
                    AdapterUnavailable,
                    what,
                    f"timed out after {self.settings.timeout:g}s",
                    code="adapter_timeout",
                )
            except httpx.TransportError as exc:
                last = self._error(AdapterUnavailable, what, _transport_text(exc))
            else:
                log.debug(
                    "%s %s -> %d in %.1f ms",
                    self.label,
                    self.redact(what),
                    resp.status_code,
                    (time.monotonic() - started) * 1000,
                )
                if resp.status_code < 500:
                    return resp
                last = self._error(
                    AdapterUnavailable, what, f"HTTP {resp.status_code}: {vendor_message(resp)}"
                )
            log.debug("%s attempt %d/%d failed: %s", self.label, attempt + 1, attempts, last)
            # (``last`` is already redacted: every error passes through ``_error``)
        if attempts > 1:
            last = type(last)(f"{last} (after {attempts} attempts)", code=last.code)
        raise last

    def check(self, resp: httpx.Response, what: str | None = None) -> httpx.Response:
        """Raise for a 4xx answer (vendor message kept); return ``resp`` otherwise."""
        if resp.status_code < 400:
            return resp
        what = what or f"{resp.request.method} {resp.request.url.path}"
        detail = f"HTTP {resp.status_code}: {vendor_message(resp)}"
        if resp.status_code == 429:
            raise self._error(AdapterUnavailable, what, detail, code="adapter_rate_limited")
        if resp.status_code in (401, 403):
            raise self._error(AdapterRefused, what, detail, code="adapter_auth_failed")
        raise self._error(AdapterRefused, what, detail)

    def json(self, resp: httpx.Response, what: str | None = None) -> Any:
        """The JSON body of a successful answer; a malformed body is retryable."""
        self.check(resp, what)
        try:
            return resp.json()
        except ValueError:
            what = what or f"{resp.request.method} {resp.request.url.path}"
            raise self._error(
                AdapterUnavailable,
                what,
                f"HTTP {resp.status_code} with a body that is not JSON: {resp.text[:80]!r}",
                code="adapter_bad_response",
            ) from None

    def bad_response(self, what: str, detail: str) -> AdapterError:
        """An answer that parsed but lacks what the vendor documents (retryable)."""
        return self._error(AdapterUnavailable, what, detail, code="adapter_bad_response")

    async def close(self) -> None:
        await self._client.aclose()


def _transport_text(exc: httpx.TransportError) -> str:
    kind = type(exc).__name__
    text = str(exc).strip()
    return f"{kind}: {text}" if text else kind


def secrets_of(values: Iterable[Any]) -> list[str]:
    """Plain strings of SecretStr-like values (for :meth:`HttpClient.add_secret`)."""
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        get = getattr(v, "get_secret_value", None)
        out.append(str(get() if callable(get) else v))
    return out
