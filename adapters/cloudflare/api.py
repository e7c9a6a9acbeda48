"""Cloudflare API v4 calls: bearer token auth and the ``{success, errors, result}`` envelope.

Every Cloudflare answer is an envelope ``{"success": bool, "errors": [{"code", "message"}],
"messages": [...], "result": ...}``. :meth:`CloudflareApi.call` returns ``result`` when
``success`` is true and otherwise raises with Cloudflare's own ``code: message`` pairs:
4xx and ``success: false`` -> :class:`~policies.errors.AdapterRefused` (401/403 with code
``adapter_auth_failed``), 429, 5xx, timeouts and bodies that are not an envelope ->
:class:`~policies.errors.AdapterUnavailable` (retryable). The API token never appears in
an error (the HTTP helper redacts it).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

import httpx
from pydantic import SecretStr, model_validator

from adapters.http import HttpClient, HttpSettings
from policies.errors import AdapterRefused, AdapterUnavailable

DEFAULT_ENDPOINT = "https://api.cloudflare.com/client/v4"
CF_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: str) -> str:
    """Cloudflare ids are 32 hex digits; accept the conservative superset of URL-safe text."""
    if not CF_ID.match(value):
        raise ValueError(f"{value!r} is not a Cloudflare identifier")
    return value


class CloudflareBase(HttpSettings):
    """Settings every Cloudflare-backed adapter shares.

    ``token_owner`` says which kind of API token ``auth_token`` is, because Cloudflare
    verifies them at different places: an account-owned token (the default, and what
    Cloudflare recommends for services) at ``/accounts/{account_id}/tokens/verify``, a
    user token at ``/user/tokens/verify``.
    """

    endpoint: str = DEFAULT_ENDPOINT
    auth_token: SecretStr  # an API token (Authorization: Bearer)
    token_owner: Literal["account", "user"] = "account"  # noqa: S105  (a kind, not a secret)
    account_id: str | None = None

    @property
    def verify_account(self) -> str | None:
        """The account whose endpoint verifies the token; None for a user token."""
        return self.account_id if self.token_owner == "account" else None  # noqa: S105

    @model_validator(mode="after")
    def _owner(self) -> Self:
        if self.account_id is not None:
            check_id(self.account_id)
        elif self.token_owner == "account":  # noqa: S105  (a kind of token, not a secret)
            raise ValueError(
                "account_id is required to verify an account-owned API token "
                "(or set token_owner: user for a user API token)"
            )
        return self


def errors_text(body: Any) -> str:
    """``code: message`` of each envelope error, joined; '' when there is none."""
    if not isinstance(body, dict):
        return ""
    parts = []
    for err in body.get("errors") or []:
        if isinstance(err, dict):
            code, msg = err.get("code"), err.get("message")
            parts.append(f"{code}: {msg}" if code is not None else str(msg))
        else:
            parts.append(str(err))
    return "; ".join(parts)[:300]


class CloudflareApi:
    """Envelope-aware calls on top of one adapter's :class:`HttpClient`."""

    def __init__(self, http: HttpClient, token: SecretStr) -> None:
        self.http = http
        self._token = token
        http.add_secret(token.get_secret_value())

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    async def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        """Send one request and return the envelope's ``result`` (see module docstring)."""
        resp = await self.http.send(method, path, json=json, params=params, headers=self._headers())
        result, _ = self._envelope(resp, f"{method} {path}")
        return result

    def _envelope(self, resp: httpx.Response, what: str) -> tuple[Any, dict[str, Any]]:
        """``(result, whole body)`` of a successful envelope; raise for anything else."""
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            detail = errors_text(body) or None
            if detail is None:
                self.http.check(resp, what)  # raises with the raw body text
            text = self.http.redact(f"{self.http.label}: {what}: HTTP {resp.status_code}: {detail}")
            if resp.status_code == 429:
                raise AdapterUnavailable(text, code="adapter_rate_limited")
            if resp.status_code in (401, 403):
                raise AdapterRefused(text, code="adapter_auth_failed")
            raise AdapterRefused(text)
        if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
            raise self.http.bad_response(
                what, f"HTTP {resp.status_code} without a Cloudflare envelope: {resp.text[:80]!r}"
            )
        if not body["success"]:
            text = errors_text(body) or "success is false and no error is given"
            raise AdapterRefused(self.http.redact(f"{self.http.label}: {what}: {text}"))
        return body.get("result"), body

    async def call_paged(self, path: str, *, per_page: int = 500) -> list[Any]:
        """Every item of a cursor-paginated list (``result_info.cursors.after``)."""
        out: list[Any] = []
        params: dict[str, str] = {"per_page": str(per_page)}
        what = f"GET {path}"
        for _ in range(1000):
            resp = await self.http.send("GET", path, params=params, headers=self._headers())
            result, body = self._envelope(resp, what)
            if not isinstance(result, list):
                raise self.http.bad_response(what, "the answer has no result list")
            out.extend(result)
            info = body.get("result_info")
            cursors = info.get("cursors") if isinstance(info, dict) else None
            after = cursors.get("after") if isinstance(cursors, dict) else None
            if not after:
                return out
            params = {"per_page": str(per_page), "cursor": str(after)}
        raise self.http.bad_response(what, "more than 1000 pages")

    async def verify_token(self, account_id: str | None) -> str:
        """The token's id and status ("active"): ``GET /accounts/{account_id}/tokens/verify``
        for an account-owned token, ``GET /user/tokens/verify`` (``account_id`` None) for a
        user token."""
        path = f"/accounts/{account_id}/tokens/verify" if account_id else "/user/tokens/verify"
        result = await self.call("GET", path)
        status = result.get("status") if isinstance(result, dict) else None
        if status != "active":
            raise AdapterRefused(
                f"{self.http.label}: the API token is {status or 'not valid'}",
                code="adapter_auth_failed",
            )
        return f"token {result.get('id', '?')} is active"
