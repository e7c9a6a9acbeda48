"""AWS Signature Version 4 for one request (pure; no I/O).

:func:`sign` returns the headers to add (``X-Amz-Date``, ``Authorization`` and, with
temporary credentials, ``X-Amz-Security-Token``). The steps are AWS's: a canonical
request (method, URI-encoded path, sorted query, lower-cased sorted headers with trimmed
values, the signed header list, the SHA-256 of the payload), a string to sign
(``AWS4-HMAC-SHA256``, timestamp, credential scope ``date/region/service/aws4_request``,
the canonical request's SHA-256), and an HMAC-SHA256 chain from ``"AWS4" + secret``
through date, region, service and ``aws4_request``. The tests check it against AWS's
published examples.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _uri(text: str, safe: str) -> str:
    return quote(text, safe=safe)


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], payload: bytes
) -> tuple[str, str]:
    """``(canonical request, signed headers)`` for a request (``headers`` incl. host)."""
    parts = urlsplit(url)
    path = _uri(parts.path or "/", safe="/-_.~")
    query = "&".join(
        f"{_uri(k, '-_.~')}={_uri(v, '-_.~')}"
        for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True))
    )
    canon = {k.lower().strip(): " ".join(v.strip().split()) for k, v in headers.items()}
    names = sorted(canon)
    signed = ";".join(names)
    head = "".join(f"{n}:{canon[n]}\n" for n in names)
    body_hash = hashlib.sha256(payload).hexdigest()
    return "\n".join([method.upper(), path, query, head, signed, body_hash]), signed


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    amz_date: str,
    session_token: str | None = None,
) -> dict[str, str]:
    """The headers that sign this request; ``headers`` must include ``host``."""
    extra = {"X-Amz-Date": amz_date}
    if session_token:
        extra["X-Amz-Security-Token"] = session_token
    creq, signed = canonical_request(method, url, {**headers, **extra}, payload)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    signature = hmac.new(
        signing_key(secret_key, amz_date[:8], region, service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    extra["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )
    return extra
