"""A fake AWS Shield Advanced endpoint: AWS JSON 1.1 over SigV4-signed requests.

Shapes follow AWS's published protocol: ``POST /`` with ``Content-Type:
application/x-amz-json-1.1`` and ``X-Amz-Target: AWSShield_20160616.<Operation>``;
errors are HTTP 400/403 with ``{"__type": "<Type>", "message": "..."}``.

Every request's Signature Version 4 is verified with this module's own implementation
(written from AWS's description, independent of the adapter's signer): the credential
scope must name a known access key, the request date, region ``us-east-1`` and the
``shield`` service (Shield has one global endpoint whose credential scope is
``us-east-1``: botocore ``data/endpoints.json``, service ``shield``, ``aws-global``);
``X-Amz-Date`` must be within 5 minutes; ``host``, ``x-amz-date``
and ``x-amz-target`` must be signed; the signature is recomputed from the headers listed
in ``SignedHeaders`` and the raw body. Failures answer like AWS:
``MissingAuthenticationTokenException`` (400), ``UnrecognizedClientException`` (403,
unknown key), ``InvalidSignatureException`` (403, wrong secret or stale date).

Operations: ``GetSubscriptionState``, ``CreateProtection`` ``{"Name", "ResourceArn"}``
(``ResourceAlreadyExistsException`` when the resource is protected), ``DescribeProtection``
``{"ResourceArn"}``/``{"ProtectionId"}``, ``DeleteProtection`` ``{"ProtectionId"}``
(``ResourceNotFoundException``), ``ListProtections`` (``MaxResults``/``NextToken``,
``InclusionFilters.ResourceArns``).

Run ``python -m labs.vendors.aws --port 8086`` for manual trials (key
``AKIAIOSFODNN7EXAMPLE`` / ``wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from typing import Any
from urllib.parse import quote

from labs.vendors.server import FakeVendorServer, HttpError, Request, Response, route, serve_main

TARGET = "AWSShield_20160616."
AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)
MUST_SIGN = ("host", "x-amz-date", "x-amz-target")
JSON11 = {"Content-Type": "application/x-amz-json-1.1"}


def aws_error(status: int, kind: str, message: str) -> HttpError:
    return HttpError(status, {"__type": kind, "message": message}, JSON11)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def expected_signature(
    req: Request, *, secret: str, date: str, region: str, service: str, signed: str
) -> str:
    """SigV4 recomputed from what arrived (POST / with no query string)."""
    lines = []
    for name in signed.split(";"):
        value = req.headers.get(name, "")
        lines.append(name + ":" + re.sub(r"\s+", " ", value.strip()) + "\n")
    canonical = "\n".join(
        [
            req.method,
            quote(req.path or "/", safe="/-_.~"),
            "",
            "".join(lines),
            signed,
            hashlib.sha256(req.raw).hexdigest(),
        ]
    )
    amz_date = req.headers.get("x-amz-date", "")
    scope = "/".join([date, region, service, "aws4_request"])
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(("AWS4" + secret).encode("utf-8"), date), region), service),
        "aws4_request",
    )
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class ShieldServer(FakeVendorServer):
    vendor = "aws-shield"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keys: dict[str, str] | None = None,
        subscribed: bool = True,
        page_size: int = 2,
    ) -> None:
        super().__init__(host, port)
        self.keys = keys or {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
        self.region = "us-east-1"  # the only scope Shield accepts (botocore endpoints.json)
        self.subscribed = subscribed
        self.page_size = page_size
        self.protections: dict[str, dict[str, Any]] = {}  # id -> protection

    # -- auth

    def _verify(self, req: Request) -> None:
        header = req.header("authorization")
        if not header:
            raise aws_error(
                400, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        m = AUTH.match(header)
        if m is None:
            raise aws_error(
                400, "IncompleteSignatureException", "Authorization header is malformed"
            )
        if m["key"] not in self.keys:
            raise aws_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        signed = m["signed"].split(";")
        if signed != sorted(signed) or any(h not in signed for h in MUST_SIGN):
            raise aws_error(
                403,
                "InvalidSignatureException",
                f"SignedHeaders must include {', '.join(MUST_SIGN)}",
            )
        amz_date = req.header("x-amz-date") or ""
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise aws_error(
                400, "IncompleteSignatureException", "X-Amz-Date is malformed"
            ) from None
        if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 300 or amz_date[:8] != m["date"]:
            raise aws_error(
                403, "InvalidSignatureException", "Signature expired or the scope date is wrong"
            )
        if m["region"] != self.region or m["service"] != "shield":
            raise aws_error(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to {self.region}/shield",
            )
        want = expected_signature(
            req,
            secret=self.keys[m["key"]],
            date=m["date"],
            region=m["region"],
            service=m["service"],
            signed=m["signed"],
        )
        if not hmac.compare_digest(want, m["sig"]):
            raise aws_error(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    # -- dispatch

    @route("POST", r"/")
    def dispatch(self, req: Request, params: dict[str, str]) -> Response:
        self._verify(req)
        if (req.header("content-type") or "") != "application/x-amz-json-1.1":
            raise aws_error(
                400, "SerializationException", "Content-Type must be application/x-amz-json-1.1"
            )
        target = req.header("x-amz-target") or ""
        op = target.removeprefix(TARGET) if target.startswith(TARGET) else ""
        handler = getattr(self, f"op_{op}", None)
        if not op or handler is None:
            raise aws_error(400, "UnknownOperationException", f"unknown operation {target!r}")
        if not isinstance(req.body, dict):
            raise aws_error(400, "SerializationException", "body must be a JSON object")
        result: dict[str, Any] = handler(req.body)
        return Response(200, result, dict(JSON11))

    # -- operations

    def op_GetSubscriptionState(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"SubscriptionState": "ACTIVE" if self.subscribed else "INACTIVE"}

    def _by_arn(self, arn: str) -> dict[str, Any] | None:
        return next((p for p in self.protections.values() if p["ResourceArn"] == arn), None)

    # botocore data/shield/2016-06-02/service-2.json: CreateProtection's Name pattern
    # [ a-zA-Z0-9_\.\-]*, length 1-128, and its errors (InvalidResourceException,
    # ResourceAlreadyExistsException, ResourceNotFoundException, ...); Describe/Delete
    # Protection raise ResourceNotFoundException. Which of CreateProtection's errors AWS
    # gives without a subscription is not published: the fake uses ResourceNotFound.

    def op_CreateProtection(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        name, arn = body.get("Name"), body.get("ResourceArn")
        if not isinstance(name, str) or not re.fullmatch(r"[ a-zA-Z0-9_.\-]{1,128}", name):
            raise aws_error(400, "InvalidParameterException", "Name is invalid")
        if not isinstance(arn, str) or not arn.startswith("arn:aws"):
            raise aws_error(400, "InvalidResourceException", "ResourceArn is invalid")
        if not self.subscribed:
            raise aws_error(400, "ResourceNotFoundException", "No Shield Advanced subscription")
        if self._by_arn(arn) is not None:
            raise aws_error(400, "ResourceAlreadyExistsException", f"{arn} is already protected")
        pid = str(uuid.uuid4())
        self.protections[pid] = {"Id": pid, "Name": name, "ResourceArn": arn}
        return {"ProtectionId": pid}

    def op_DescribeProtection(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        p = self.protections.get(str(body.get("ProtectionId"))) or self._by_arn(
            str(body.get("ResourceArn"))
        )
        if p is None:
            raise aws_error(
                400, "ResourceNotFoundException", "The referenced protection does not exist."
            )
        return {"Protection": dict(p)}

    def op_DeleteProtection(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if self.protections.pop(str(body.get("ProtectionId")), None) is None:
            raise aws_error(
                400, "ResourceNotFoundException", "The referenced protection does not exist."
            )
        return {}

    def op_ListProtections(self, body: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        items = sorted(self.protections.values(), key=lambda p: p["Id"])
        arns = (body.get("InclusionFilters") or {}).get("ResourceArns")
        if arns:
            items = [p for p in items if p["ResourceArn"] in arns]
        size = min(int(body.get("MaxResults") or 20), self.page_size)
        start = int(body.get("NextToken") or 0)
        page = items[start : start + size]
        out: dict[str, Any] = {"Protections": [dict(p) for p in page]}
        if start + size < len(items):
            out["NextToken"] = str(start + size)
        return out

    def protected(self, arn: str) -> bool:
        return self._by_arn(arn) is not None


def main() -> None:
    serve_main(ShieldServer)


if __name__ == "__main__":
    main()
