"""``aws_shield``: AWS Shield Advanced protection of the resources behind a prefix.

What it does: AWS offers no on-demand diversion of a customer prefix; Shield Advanced
*protections* are the closest honest action. Targets map prefixes to the ARNs of the
AWS resources that carry them (``targets: [{prefix, resource_arn}]``: usually an Elastic
IP allocation ``arn:aws:ec2:<region>:<account>:eip-allocation/eipalloc-...``, or a load
balancer, CloudFront distribution, Global Accelerator). Announce calls
``CreateProtection`` ``{"Name": "sluice-<prefix>", "ResourceArn"}`` (an existing
protection, ``ResourceAlreadyExistsException``, is fine); withdraw finds the protection
with ``DescribeProtection`` ``{"ResourceArn"}`` and calls ``DeleteProtection``
``{"ProtectionId"}`` (none there is fine). ``active()``/``status()`` page through
``ListProtections``: a target is "diverting" while its resource is protected. A
protected resource gets Shield Advanced's tailored detection and mitigation at AWS's
edge and access to the Shield Response Team; traffic is not re-routed.

Protocol: AWS JSON 1.1 (``POST /``, ``Content-Type: application/x-amz-json-1.1``,
``X-Amz-Target: AWSShield_20160616.<Operation>``), signed with Signature Version 4
(:mod:`adapters.scrubbing.sigv4`, service ``shield``). Shield is a global service with one
endpoint, ``shield.us-east-1.amazonaws.com``, whose credential scope is always
``us-east-1`` (botocore ``endpoints.json``: ``shield`` ``aws-global``, ``credentialScope``
``us-east-1``), so the signing region is fixed; a ``region`` setting other than
``us-east-1`` is refused when the integration is created instead of failing every call
with a bad signature.
The secret access key (``auth_token``) and a session token are secrets. Errors keep
AWS's ``__type`` and ``message``; throttling is retryable. ``check()`` calls
``GetSubscriptionState`` and fails when there is no active Shield Advanced subscription.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr

from adapters.base import AdapterConfig, Capability, resolve_capabilities, validate_settings
from adapters.http import HttpClient, HttpSettings
from adapters.scrubbing import sigv4
from adapters.scrubbing.common import (
    ScrubbingAdapter,
    Target,
    Targets,
    Unit,
    UnitState,
    covering,
    default_endpoint,
)
from policies.errors import AdapterRefused, AdapterUnavailable
from policies.intents import ScrubbingIntent

DEFAULT_ENDPOINT = "https://shield.us-east-1.amazonaws.com"
SIGNING_REGION: Literal["us-east-1"] = (
    "us-east-1"  # Shield's only credential scope (botocore endpoints.json)
)
TARGET_PREFIX = "AWSShield_20160616."
CONTENT_TYPE = "application/x-amz-json-1.1"
AUTH_ERRORS = (
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "AccessDeniedException",
    "AccessDenied",
    "MissingAuthenticationTokenException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "IncompleteSignature",
)
RETRYABLE_ERRORS = ("ThrottlingException", "Throttling", "InternalErrorException")


def protection_name(prefix: str) -> str:
    """A Shield protection name (``[ a-zA-Z0-9_.-]``) for a prefix."""
    return "sluice-" + prefix.replace("/", "_").replace(":", ".")


def request_body(operation: str, payload: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """The JSON 1.1 headers (before signing) and body of one Shield operation."""
    headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET_PREFIX + operation}
    return headers, json.dumps(dict(payload), separators=(",", ":")).encode()


def error_type(body: Any) -> tuple[str, str]:
    """``(type, message)`` of an AWS JSON error body (``com.amazonaws...#Type`` shortened)."""
    if not isinstance(body, dict):
        return "", ""
    kind = str(body.get("__type") or body.get("code") or "").rsplit("#", 1)[-1]
    msg = str(body.get("message") or body.get("Message") or "")
    return kind, msg


class ArnTarget(Target):
    resource_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:[a-z0-9-]+:.*$", max_length=2048)]


class ShieldSettings(HttpSettings):
    endpoint: str = DEFAULT_ENDPOINT
    # accepted for old configurations, but it can only be the one region Shield signs for
    region: Literal["us-east-1"] = SIGNING_REGION
    access_key_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{16,128}$")]
    auth_token: SecretStr  # the secret access key
    session_token: SecretStr | None = None
    targets: Targets[ArnTarget]


class AwsShieldAdapter(ScrubbingAdapter[ShieldSettings]):
    adapter_type: ClassVar[str] = "aws_shield"
    mechanism: ClassVar[str] = "AWS Shield Advanced protection of the resource"

    def __init__(
        self,
        name: str,
        settings: ShieldSettings,
        capabilities: frozenset[Capability],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        http = HttpClient(settings, label=f"aws_shield integration {name!r}", transport=transport)
        super().__init__(name, settings, capabilities, http)
        session = settings.session_token.get_secret_value() if settings.session_token else None
        http.add_secret(settings.auth_token.get_secret_value(), session)
        self._host = urlsplit(settings.endpoint).netloc

    @classmethod
    def from_config(cls, config: AdapterConfig) -> AwsShieldAdapter:
        settings = validate_settings(
            ShieldSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))

    async def _call(
        self, operation: str, payload: Mapping[str, Any], *, tolerate: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """One signed JSON 1.1 call; a tolerated AWS error type returns None."""
        s = self.settings
        headers, body = request_body(operation, payload)
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers.update(
            sigv4.sign(
                method="POST",
                url=s.endpoint + "/",
                headers={"Host": self._host, **headers},
                payload=body,
                access_key=s.access_key_id,
                secret_key=s.auth_token.get_secret_value(),
                region=SIGNING_REGION,
                service="shield",
                amz_date=amz_date,
                session_token=s.session_token.get_secret_value() if s.session_token else None,
            )
        )
        resp = await self.http.send("POST", "/", content=body, headers=headers)
        what = f"Shield {operation}"
        if resp.status_code >= 400:
            try:
                kind, msg = error_type(resp.json())
            except ValueError:
                kind, msg = "", ""
            if not kind:
                self.http.check(resp, what)
            if kind in tolerate:
                return None
            text = self.http.redact(f"{self.label}: {what}: HTTP {resp.status_code} {kind}: {msg}")
            if kind in RETRYABLE_ERRORS or resp.status_code == 429:
                raise AdapterUnavailable(text, code="adapter_rate_limited")
            if kind in AUTH_ERRORS or resp.status_code in (401, 403):
                raise AdapterRefused(text, code="adapter_auth_failed")
            raise AdapterRefused(text)
        data = self.http.json(resp, what)
        if not isinstance(data, dict):
            raise self.http.bad_response(what, "the answer is not a JSON object")
        return data

    def units(self, intent: ScrubbingIntent) -> list[Unit]:
        t = covering(self.settings.targets, intent.prefix, what=self.label)
        return [Unit(t.resource_arn, t.prefix, "resource")]

    async def enable(self, unit: Unit) -> Mapping[str, Any]:
        payload = {"Name": protection_name(str(unit.prefix)), "ResourceArn": unit.uid}
        got = await self._call(
            "CreateProtection", payload, tolerate=("ResourceAlreadyExistsException",)
        )
        if got is None:
            return {"protection_id": None, "existed": True}
        pid = got.get("ProtectionId")
        if not isinstance(pid, str):
            raise self.http.bad_response(
                "Shield CreateProtection", "the answer has no ProtectionId"
            )
        return {"protection_id": pid, "existed": False}

    async def disable(self, unit: Unit) -> Mapping[str, Any]:
        got = await self._call(
            "DescribeProtection", {"ResourceArn": unit.uid}, tolerate=("ResourceNotFoundException",)
        )
        prot = got.get("Protection") if got else None
        pid = prot.get("Id") if isinstance(prot, dict) else None
        if not isinstance(pid, str):
            return {"protection_id": None, "removed": False}
        await self._call(
            "DeleteProtection", {"ProtectionId": pid}, tolerate=("ResourceNotFoundException",)
        )
        return {"protection_id": pid, "removed": True}

    async def _protections(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        payload: dict[str, Any] = {"MaxResults": 100}
        for _ in range(1000):
            page = await self._call("ListProtections", payload) or {}
            items = page.get("Protections", [])
            if not isinstance(items, list):
                raise self.http.bad_response("Shield ListProtections", "Protections is not a list")
            for p in items:
                if isinstance(p, dict) and isinstance(p.get("ResourceArn"), str):
                    found[p["ResourceArn"]] = p
            token = page.get("NextToken")
            if not token:
                return found
            payload = {"MaxResults": 100, "NextToken": token}
        raise self.http.bad_response("Shield ListProtections", "more than 1000 pages")

    async def read(self) -> list[UnitState]:
        found = await self._protections()
        out = []
        for t in self.settings.targets:
            p = found.get(t.resource_arn)
            detail = {"protection_id": p.get("Id"), "name": p.get("Name")} if p else {}
            out.append(UnitState(Unit(t.resource_arn, t.prefix, "resource"), p is not None, detail))
        return out

    async def probe(self) -> str:
        got = await self._call("GetSubscriptionState", {}) or {}
        state = got.get("SubscriptionState")
        if state != "ACTIVE":
            raise AdapterRefused(
                f"{self.label}: Shield Advanced subscription is {state or 'unknown'}, not ACTIVE",
                code="adapter_not_subscribed",
            )
        return "Shield Advanced subscription is ACTIVE"

    def provider_details(self) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint": s.endpoint,
            "region": s.region,
            "access_key_id": s.access_key_id,
            "resources": {str(t.prefix): t.resource_arn for t in s.targets},
        }
